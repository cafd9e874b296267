"""The Virtual Transport Layer: negotiated protocol grafts run as eBPF KTFs.

Applications ask for services, never for a protocol; VTL picks the grafts that provide
them, negotiates one with the peer, deploys its KTFs on both ends and moves the data:

>>> conn = vtl.connect("client0", "10.0.0.2", reliable=True, ordered=True)
>>> conn.graft                      # what the two ends agreed on, e.g. "sr"
>>> result = conn.send_data(data)   # returns once the graft's promise is kept
>>> conn.close()

>>> with vtl.listen("server0") as listener:
...     msg = listener.accept(timeout=10)
...     data = msg.recv_data()

The paper's API (VTL, ICCCN 2021, Table II) maps onto these calls:

=====================================  ==================================================
paper                                  vtlstack.vtl
=====================================  ==================================================
vtl_init(mode, src_ip, dst_ip)         ``connect(iface, peer, ...)`` (sender) or
                                       ``listen(iface)`` (receiver): KTFs attached, the
                                       canonical graft deployed
vtl_negotiate(sock, services, qos)     the keyword arguments of ``connect``:
                                       ``reliable``, ``ordered``, ``max_loss``,
                                       ``max_latency_ms`` (negotiation runs in connect)
vtl_validate(sock)                     ``Listener.accept(timeout)``: waits for and
                                       returns the negotiated session; ``Connection.graft``
vtl_send_data(sock, buf, len)          ``Connection.send_data(data)``
vtl_recv_data(sock, buf, size)         ``Message.recv_data()``
vtl_close(sock)                        ``Connection.close()`` / leaving ``with``
=====================================  ==================================================

A session carries one message (VTL's default message service). When the peer refuses
every graft or does not answer, the message goes over kernel TCP (``fallback=True``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtlstack.vtl.broker import FALLBACK_PORT, NegotiationError, Receiver, Result, Sender
from vtlstack.vtl.grafts import Services

__all__ = ["connect", "listen", "Connection", "Listener", "Message", "Services", "Result",
           "NegotiationError", "FALLBACK_PORT"]


class Connection:
    """A sending session; ``graft`` is "tcp" when it fell back to kernel TCP."""

    def __init__(self, sender: Sender, fallback_reason: str = "") -> None:
        self._sender = sender
        self.fallback_reason = fallback_reason

    @property
    def graft(self) -> str:
        if self.fallback_reason:
            return "tcp"
        return self._sender.graft.name if self._sender.graft else ""

    def send_data(self, data: bytes) -> Result:
        """Send one message; returns when it is delivered as the graft promises."""
        try:
            if self.fallback_reason:
                return self._sender._tcp_fallback(data, self.fallback_reason)
            return self._sender.send(data)
        finally:
            self.close()

    def close(self) -> None:
        self._sender.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(iface: str, peer: str, *, reliable: bool = False, ordered: bool = False,
            max_loss: float = 1.0, max_latency_ms: float | None = None,
            grafts: list[str] | None = None, fallback: bool = True,
            meta: dict[str, Any] | None = None, **tuning: Any) -> Connection:
    """vtl_init + vtl_negotiate: ask for services, get a session with a deployed graft.

    ``grafts`` restricts (and orders) what is offered, for experiments; applications
    leave it out. ``tuning``: nego_rto, nego_tries, idle_timeout, rules (net monitor),
    udp (the UDP encapsulation); see broker.Sender.
    """
    services = Services(reliable=reliable, ordered=ordered, max_loss=max_loss,
                        max_latency_ms=max_latency_ms)
    sender = Sender(iface, peer, services, grafts=grafts, meta=meta, fallback=fallback,
                    **tuning)
    try:
        sender.negotiate()
    except NegotiationError as e:
        sender.close()
        if not fallback:
            raise
        return Connection(sender, fallback_reason=str(e))
    except BaseException:
        sender.close()
        raise
    return Connection(sender)


@dataclass
class Message:
    """One received message and how it came (graft, timings, kernel counters)."""

    data: bytes
    result: Result
    meta: dict[str, Any] = field(default_factory=dict)

    def recv_data(self) -> bytes:
        return self.data


class Listener:
    """The receiving end on one interface (vtl_init in receiver mode)."""

    def __init__(self, iface: str, *, grafts: list[str] | None = None,
                 tcp_fallback: bool = True, vtl: bool = True,
                 idle_timeout: float = 10.0, pool_dir: Path | None = None,
                 from_source: bool = False) -> None:
        self._rx = Receiver(iface, grafts=grafts, tcp_fallback=tcp_fallback, vtl=vtl,
                            idle_timeout=idle_timeout, pool_dir=pool_dir,
                            from_source=from_source)

    def accept(self, timeout: float | None = None) -> Message:
        """vtl_validate: wait for a sender, negotiate, receive its message."""
        res = self._rx.accept(timeout)
        return Message(self._rx.data, res, dict(getattr(self._rx, "meta", {}) or {}))

    def close(self) -> None:
        self._rx.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def listen(iface: str, **kw: Any) -> Listener:
    """vtl_init (receiver): attach the KTFs and accept sessions with ``accept``."""
    return Listener(iface, **kw)
