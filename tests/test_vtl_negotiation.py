"""The negotiation exchange without a network (no root): lost offers are sent again,
refusals carry their reason, silence ends in NegotiationError, strays are ignored."""

import json
import socket

import pytest

from vtlstack.vtl.broker import NegotiationError, Sender
from vtlstack.vtl.grafts import Services
from vtlstack.vtl.wire import C, Header

PEER = "10.0.0.2"


class LossyRaw:
    """Stands in for the raw socket: the first `lost` offers vanish, later ones are
    answered with `answer` (after a stray answer for another session)."""

    def __init__(self, lost: int, answer: int | None, payload: dict) -> None:
        self.sock, self._other = socket.socketpair()
        self.lost, self.answer, self.payload = lost, answer, payload
        self.sent: list[Header] = []
        self._queue: list[tuple[str, Header]] = []

    def send(self, dst: str, h: Header) -> None:
        assert dst == PEER
        self.sent.append(h)
        if len(self.sent) > self.lost and self.answer is not None:
            body = json.dumps(self.payload).encode()
            self._queue += [(PEER, Header(type=self.answer, session=h.session + 1,
                                          payload=body)),
                            (PEER, Header(type=self.answer, session=h.session,
                                          flags=h.flags, payload=body))]
            self._other.send(b"!!")        # one byte per queued answer

    def recv(self):
        if not self._queue:
            return None
        self.sock.recv(1)
        return self._queue.pop(0)


def sender(raw: LossyRaw) -> Sender:
    s = Sender("lo", PEER, Services(reliable=True), nego_rto=0.02, nego_tries=4)
    s._raw = raw
    return s


def offer(s: Sender) -> Header:
    return Header(type=C.VTL_NEGO, session=s.session, payload=b"{}")


def test_lost_offers_are_sent_again():
    raw = LossyRaw(lost=2, answer=C.VTL_NEGO_ACK, payload={"graft": "sr", "window": 64})
    s = sender(raw)
    assert s._exchange(offer(s)) == {"graft": "sr", "window": 64}
    assert len(raw.sent) == 3 and all(h.session == s.session for h in raw.sent)
    assert 0 < s.rtt < 0.02


def test_silence_ends_in_a_negotiation_error():
    raw = LossyRaw(lost=99, answer=None, payload={})
    s = sender(raw)
    with pytest.raises(NegotiationError, match="did not answer 4 offers") as e:
        s._exchange(offer(s))
    assert not e.value.refused and len(raw.sent) == 4


def test_refusal_carries_the_reason():
    raw = LossyRaw(lost=0, answer=C.VTL_NEGO_NACK, payload={"reason": "sr: not in pool"})
    s = sender(raw)
    with pytest.raises(NegotiationError, match="refused: sr: not in pool") as e:
        s._exchange(offer(s))
    assert e.value.refused and len(raw.sent) == 1


def test_an_answer_naming_a_graft_not_offered_is_refused():
    s = Sender("lo", PEER, Services(reliable=True))
    with pytest.raises(NegotiationError, match="not offered"):
        s._deploy({"graft": "pr"}, 0.0)


def test_offer_follows_services():
    assert [g.name for g in Sender("lo", PEER, Services(max_loss=0.1)).offer] == \
        ["pr", "sr", "gbn"]
    with pytest.raises(Exception, match="unknown graft"):
        Sender("lo", PEER, Services(), grafts=["quic"])
