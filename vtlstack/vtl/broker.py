"""The VTL brokers: negotiation (control broker) and data transfer (data broker).

Send path. DATA leaves through a raw IPv4 socket of protocol 253 (or a UDP socket, for
the UDP encapsulation), not through AF_XDP:
frames an AF_XDP socket transmits skip the tc egress hook, so the egress KTF (which
enforces the send window in the kernel and records what is in flight) would never see
them. A raw socket goes through the IP stack and the qdisc layer, so every DATA packet
passes ``vtl_egress``; the kernel also resolves the peer's MAC address for us.

Receive path. The ingress KTF at XDP validates every VTL packet and takes the DATA and
ACK/NACK packets itself: a receiver KTF puts the accepted payload into the ``vtl_rx``
ring and rewrites the frame into the ACK or NACK it decided on, which it sends back with
XDP_TX, so acknowledgements and loss reports are made in the kernel without a round trip
through user space. A sender KTF turns ACK/NACK into events in the ``vtl_ev`` ring: the
window moved (ACKED), these packets are lost (RETX), go back (GOBACK). This broker keeps
every unacknowledged packet in a UMEM frame (vtlstack.vtl.txstore) and sends it again
from there when those events ask for it; its only timer is
the retransmission timeout for a tail that no later packet can reveal as lost.
Negotiation packets and CLOSE pass XDP (XDP_PASS) to the raw socket.

Negotiation: NEGO carries the grafts the sender can run, best first, and the services
asked for; the receiver deploys the first it has (or answers NEGO_NACK with the reason),
opens the session in its kernel state and answers NEGO_ACK; the sender deploys the graft
and opens its own state before any DATA. Lost NEGO packets are sent again every
``nego_rto`` seconds, ``nego_tries`` times; then (or on NEGO_NACK) the application's data
goes over kernel TCP to FALLBACK_PORT when fallback is allowed.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import select
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtlstack.errors import VtlError
from vtlstack.vtl import wire
from vtlstack.vtl.grafts import Graft, Services, load_pool
from vtlstack.vtl.grafts import select as select_grafts
from vtlstack.vtl.ktf import GraftLoadError, KtfHost
from vtlstack.vtl.monitor import Monitor, Rule
from vtlstack.vtl.txstore import TxStore
from vtlstack.vtl.wire import C, Header, WireError

__all__ = ["NegotiationError", "Sender", "Receiver", "Result", "FALLBACK_PORT"]

FALLBACK_PORT = 7253
PACE_BURST = 0.005      # s: the pacer lets this much of its rate leave back to back,
PACE_MIN_BURST = 2      # ... and at least this many packets
REORDER_WINDOW = 0.25   # of the minimum RTT: how much later a packet may be sent and still
                        # arrive first without the earlier one being lost (RFC 8985 6.2)
TLP_SRTTS = 1.5         # SRTTs of quiet before the tail loss probe
MSS = wire.MAX_PAYLOAD
SENDER, RECEIVER = C.VTL_ROLE_SENDER, C.VTL_ROLE_RECEIVER


class NegotiationError(VtlError):
    """The peer refused every graft offered (NEGO_NACK) or never answered."""

    def __init__(self, msg: str, refused: bool) -> None:
        super().__init__(msg)
        self.refused = refused


@dataclass
class Result:
    """What one session did: for the CLI's JSON and for tests."""

    graft: str
    session: int
    bytes: int = 0
    packets: int = 0
    negotiation_s: float = 0.0
    fct_s: float = 0.0
    lost: list[int] = field(default_factory=list)   # seqs the receiver never got
    grafts: list[str] = field(default_factory=list)  # in the order the session used them
    encap: str = "ip"                                # "ip" (protocol 253) or "udp"
    stats: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    fallback_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        mbit = self.bytes * 8 / self.fct_s / 1e6 if self.fct_s > 0 else 0.0
        return {"graft": self.graft, "grafts": self.grafts or [self.graft],
                "encap": self.encap if self.graft != "tcp" else "tcp",
                "session": self.session, "bytes": self.bytes,
                "packets": self.packets, "negotiation_ms": round(self.negotiation_s * 1e3, 3),
                "fct_s": round(self.fct_s, 4), "throughput_mbit": round(mbit, 2),
                "lost_packets": len(self.lost), "stats": self.stats,
                "counters": self.counters, "fallback_reason": self.fallback_reason}


class _Channel:
    """How VTL packets travel on one interface: a raw IPv4 socket of protocol 253, or the
    UDP encapsulation (a UDP socket on VTL_UDP_PORT, for paths that drop unknown
    protocols). Control packets come in here; everything the broker sends goes out here,
    through the IP stack and so past the egress KTF."""

    def __init__(self, ifname: str, udp: bool = False) -> None:
        self.udp = udp
        if udp:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, wire.IPPROTO)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            if udp:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.sock.bind(("0.0.0.0", wire.UDP_PORT))
            self.sock.setblocking(False)
        except OSError as e:
            self.sock.close()
            if udp and e.errno == errno.EADDRINUSE:
                raise VtlError(f"UDP port {wire.UDP_PORT} is taken: another VTL endpoint "
                               f"runs in this namespace") from e
            raise

    def send(self, dst: str, h: Header) -> None:
        self.send_packet(dst, wire.pack(h))

    def send_packet(self, dst: str, pkt: bytes | memoryview) -> None:
        port = wire.UDP_PORT if self.udp else 0
        while True:
            try:
                self.sock.sendto(pkt, (dst, port))
                return
            except BlockingIOError:
                select.select([], [self.sock], [], 0.1)   # socket buffer full: wait for room

    def recv(self) -> tuple[str, Header] | None:
        """One valid control packet, or None when nothing (valid) is queued."""
        while True:
            try:
                raw, (src, _) = self.sock.recvfrom(65535)
            except BlockingIOError:
                return None
            if not self.udp:
                raw = raw[(raw[0] & 0x0F) * 4:]   # a raw socket hands us the IP header too
            try:
                return src, wire.unpack(raw)
            except WireError:
                continue   # the ingress KTF already counted and dropped bad packets

    def close(self) -> None:
        self.sock.close()


def _json(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"negotiation payload is not JSON ({e})") from e
    if not isinstance(obj, dict):
        raise WireError("negotiation payload is not a JSON object")
    return obj


def _ctrl(session: int, kind: int, obj: dict[str, Any] | None = None, **kw: int) -> Header:
    payload = json.dumps(obj, separators=(",", ":")).encode() if obj is not None else b""
    return Header(type=kind, session=session, payload=payload, **kw)


class Sender:
    """One sending session: ``negotiate``, ``send`` one message as the graft promises,
    ``close`` (vtlstack.vtl.connect drives it, with the TCP fallback)."""

    def __init__(self, ifname: str, peer: str, services: Services, *,
                 grafts: Iterable[str] | None = None, meta: dict[str, Any] | None = None,
                 nego_rto: float = 0.25, nego_tries: int = 4, fallback: bool = True,
                 idle_timeout: float = 15.0, rules: Iterable[Rule] | None = None,
                 udp: bool = False) -> None:
        self.ifname, self.peer, self.services = ifname, peer, services
        self.udp = udp
        self.meta = meta or {}
        self.nego_rto, self.nego_tries, self.fallback = nego_rto, nego_tries, fallback
        self.idle_timeout = idle_timeout
        self.pool = load_pool()
        offer = select_grafts(self.pool, services)
        if grafts is not None:
            names = list(grafts)
            unknown = [n for n in names if n not in self.pool]
            if unknown:
                raise VtlError(f"unknown graft(s) {', '.join(unknown)}: the pool has "
                               f"{', '.join(sorted(self.pool))}")
            offer = [self.pool[n] for n in names]
        if not offer:
            raise VtlError(f"no graft in the pool provides {services.as_dict()}")
        self.offer: list[Graft] = offer
        self.session = int.from_bytes(os.urandom(4), "big") or 1
        self.graft: Graft | None = None
        self.window = 0
        self.rtt = 0.0
        self.result = Result(graft="", session=self.session)
        self._host: KtfHost | None = None
        self._raw: _Channel | None = None
        self._una = 0
        self._delivered = 0   # distinct packets the receiver has had (from its ACKs)
        self._first_sent: list[float] = []   # when each seq of the message left first
        self._newest_acked = 0.0             # the latest such time of a packet answered
        self._retx: set[int] = set()
        self._goback: int | None = None
        rules = list(rules or [])
        for r in rules:
            for name in (r.src, r.dst):
                if name not in self.pool or name == "canonical":
                    raise VtlError(f"rule {r}: {name!r} is not a graft with feedback in "
                                   f"the pool")
        # Always there for the RTT samples; with rules it may also swap grafts.
        self._monitor = Monitor(rules)

    # -- vtl_negotiate ------------------------------------------------------------------

    def negotiate(self) -> Graft:
        """Offer the grafts, deploy the one the receiver chose (NegotiationError if none)."""
        self._host = KtfHost(self.ifname)
        self._raw = _Channel(self.ifname, udp=self.udp)
        offer = {"offer": [g.name for g in self.offer], "services": self.services.as_dict(),
                 "window": max(g.window for g in self.offer), "meta": self.meta}
        t0 = time.monotonic()
        ans = self._exchange(_ctrl(self.session, C.VTL_NEGO, offer))
        return self._deploy(ans, time.monotonic() - t0)

    def _exchange(self, req: Header) -> dict[str, Any]:
        """Send a NEGO until its answer comes: the NEGO_ACK's JSON, or NegotiationError.
        Sets self.rtt from the round trip that got the answer."""
        assert self._raw is not None
        switch = req.flags & C.VTL_F_SWITCH
        for _ in range(self.nego_tries):
            sent = time.monotonic()
            self._raw.send(self.peer, req)
            deadline = sent + self.nego_rto
            while (left := deadline - time.monotonic()) > 0:
                select.select([self._raw.sock], [], [], left)
                while (got := self._raw.recv()) is not None:
                    src, h = got
                    if h.session != self.session or src != self.peer or \
                            (h.flags & C.VTL_F_SWITCH) != switch:
                        continue
                    if h.type == C.VTL_NEGO_NACK:
                        why = _json(h.payload).get("reason", "no reason given")
                        raise NegotiationError(f"{self.peer} refused: {why}", refused=True)
                    if h.type == C.VTL_NEGO_ACK:
                        self.rtt = time.monotonic() - sent
                        return _json(h.payload)
        raise NegotiationError(f"{self.peer} did not answer {self.nego_tries} offers in "
                               f"{self.nego_tries * self.nego_rto:.2f} s", refused=False)

    def _deploy(self, ans: dict[str, Any], elapsed: float) -> Graft:
        name = ans.get("graft")
        if name not in {g.name for g in self.offer}:
            raise NegotiationError(f"{self.peer} chose {name!r}, which was not offered",
                                   refused=True)
        graft = self.pool[name]
        self.window = max(1, min(int(ans.get("window", graft.window)), graft.window))
        assert self._host is not None
        self._host.deploy(graft)
        self.graft = graft
        self._host.open_session(self.session, SENDER, graft, self.window)
        self._host.rings(None, self._on_event)
        self.result.graft = graft.name
        self.result.grafts = [graft.name]
        self.result.encap = "udp" if self.udp else "ip"
        self.result.negotiation_s = elapsed
        return graft

    def _switch(self, target: Graft) -> None:
        """Move the running session to another graft, both ends agreeing. Called with
        nothing in flight, so no packet is handled by both grafts or by neither."""
        assert self._host is not None and self.graft is not None
        st = self.result.stats
        req = _ctrl(self.session, C.VTL_NEGO,
                    {"switch": target.name, "window": target.window,
                     "max_loss": target.max_loss, "seq": self._una},
                    flags=C.VTL_F_SWITCH)
        try:
            ans = self._exchange(req)
        except NegotiationError as e:
            st["switches_refused"] = st.get("switches_refused", 0) + 1
            self.result.fallback_reason = f"switch to {target.name} failed: {e}"
            self._monitor.rules = []   # keep the graft that works; do not ask again
            return
        window = max(1, min(int(ans.get("window", target.window)), target.window))
        old = self.graft
        self._host.deploy(target)
        self._host.update_session(self.session, SENDER, target, window)
        self._host.release(old)
        self.graft, self.window = target, window
        self.result.graft = target.name
        self.result.grafts.append(target.name)
        st["switches"] = st.get("switches", 0) + 1

    # -- vtl_send_data ------------------------------------------------------------------

    def _on_event(self, ev: Any) -> None:
        if ev.session != self.session:
            return
        if ev.kind == C.VTL_EV_ACKED:
            now = time.monotonic()
            self._monitor.on_acked(ev.seq, ev.answers, ev.seq * MSS, now)
            # The ACK of a resent packet may answer either copy: credit it with the first
            # (Karn's reasoning; the later time would make every packet sent before it
            # look lost). Packets leave first in seq order, so later ones still reveal
            # the holes before them.
            if ev.answers < len(self._first_sent):
                self._newest_acked = max(self._newest_acked, self._first_sent[ev.answers])
            if ev.seq >= self._una and ev.bits >= self._delivered:
                self._una, self._delivered = ev.seq, ev.bits
                self._monitor.on_delivered(ev.bits, now)
        elif ev.kind == C.VTL_EV_RETX:
            self._retx.add(ev.seq)
            if ev.bits:
                self._retx.add(ev.seq + ev.bits)
        elif ev.kind == C.VTL_EV_GOBACK:
            self._goback = ev.seq

    def _rto(self) -> float:
        # Twice the smoothed RTT once there are samples, before that 4 times the
        # handshake's (which includes the peer's graft load); 50 ms floor, not TCP's
        # 200 ms: a spurious timeout here resends one packet, or one window for GBN.
        srtt = self._monitor.srtt
        return max(0.05, 2 * srtt if srtt is not None else 4 * self.rtt)

    def send(self, data: bytes) -> Result:
        """Send one message over the negotiated graft; returns when the graft's promise is
        kept (everything acknowledged, or sent for the canonical graft)."""
        if self.graft is None or self._host is None or self._raw is None:
            raise VtlError("negotiate() first")
        st = self.result.stats
        message = memoryview(data)
        total = -(-len(data) // MSS)
        acked = self.graft.id != C.VTL_GRAFT_CANONICAL
        store = TxStore()
        try:
            return self._send(message, total, acked, store)
        finally:
            st["frames_held_peak"] = store.peak
            store.close()

    def _send(self, message: memoryview, total: int, acked: bool, store: TxStore) -> Result:
        assert self.graft is not None and self._host is not None and self._raw is not None
        host, raw, st = self._host, self._raw, self.result.stats
        rto = self._rto()
        for k in ("sent", "retransmitted", "timeouts", "gobacks"):
            st[k] = 0
        target: Graft | None = None   # a graft the monitor wants: drain, then switch

        sent_at = [0.0] * total   # when each seq left last
        first_sent = self._first_sent = [0.0] * total
        resent_at: dict[int, float] = {}
        self._newest_acked = 0.0

        def put(seq: int, retx: bool = False) -> None:
            assert self.graft is not None
            h = Header(type=C.VTL_DATA, session=self.session, seq=seq, graft=self.graft.id,
                       flags=C.VTL_F_RETX if retx else 0)
            raw.send_packet(self.peer, store.packet(seq, h, message[seq * MSS:(seq + 1) * MSS]))
            if not acked:
                store.release_below(seq + 1)   # no feedback, so never resent
            st["retransmitted" if retx else "sent"] += 1
            now = sent_at[seq] = time.monotonic()
            if retx:
                resent_at[seq] = now
            elif not first_sent[seq]:
                first_sent[seq] = now
            self._monitor.on_send(seq, retx, now, highest - self._delivered)

        t0 = time.monotonic()
        nxt, highest, last_progress, last_ack, una_seen = 0, 0, t0, t0, 0
        backed_off: int | None = None   # the monitor's RTT samples at the last timeout
        tokens, paced_at, pace_wait = 0.0, t0, 0.05   # the pacer: packets it may send now
        probed = -1      # the head the last tail loss probe went for
        st["tail_probes"] = 0
        rfd = host.ring_fd()
        while (self._una < total) if acked else (nxt < total):
            store.release_below(self._una)   # acknowledged (or given up) since last time
            # After a go-back on a long path, ACKs of the first copies can pass the packets
            # being resent: those need no resending.
            nxt = max(nxt, self._una)
            if self._goback is not None:
                # Go-Back-N: everything from the lost packet on is sent again.
                nxt, self._goback = max(self._goback, self._una), None
                st["gobacks"] += 1
            now = time.monotonic()
            srtt = self._monitor.srtt or 0.0
            for seq in sorted(s for s in self._retx if self._una <= s < nxt):
                # A hole NACKed again less than a round trip after we resent it: that
                # NACK left before the retransmission could arrive (the second look of
                # the receiver lags by a fixed number of packets, not by time).
                if now - resent_at.get(seq, -1.0) < srtt:
                    st["renack_ignored"] = st.get("renack_ignored", 0) + 1
                    continue
                put(seq, retx=True)
            self._retx.clear()
            limit = min(total, self._una + self.window) if acked else total
            selective = self.graft.id in (C.VTL_GRAFT_SR, C.VTL_GRAFT_PR)
            if selective and self._una < highest and sent_at[self._una] < \
                    self._newest_acked - REORDER_WINDOW * (self._monitor.min_rtt or 0.0):
                # The cumulative ACK stops at a packet that left before one an ACK has
                # answered since: lost, with its NACK or its retransmission (time order,
                # as RACK reasons, RFC 8985). Resent now, this costs a round trip, not a
                # timeout: what repairs holes near the end of a transfer, which the
                # receiver's NACKs (they need later packets) cannot.
                put(self._una, retx=True)
                st["head_resent"] = st.get("head_resent", 0) + 1
            pace = self._monitor.pacing_rate() if selective else None
            if selective:
                # Within the receive window, keep what the monitor says in flight. What
                # arrived beyond a hole is not in flight (the receiver's count says so),
                # so a hole does not stall us.
                room = self._monitor.inflight_limit() - (highest - self._delivered)
                limit = min(limit, nxt + max(0, room))
            if pace is not None:
                # And pace new packets at about the best delivery rate seen: a limit that
                # grows at once (a longer RTT learnt) must not leave as one burst into a
                # bottleneck queue shorter than that.
                tokens = min(max(PACE_MIN_BURST, pace * PACE_BURST),
                             tokens + pace * (now - paced_at))
                paced_at = now
                pace_wait = 0.05 if limit <= nxt + tokens else (1 - tokens % 1) / pace
                limit = min(limit, nxt + int(tokens))
            if self._monitor.rules and target is None and acked:
                rule = self._monitor.decide(self.graft.name)
                if rule is not None:
                    target = self.pool[rule.dst]
                    st["switch_rule"] = str(rule)
            if target is not None:
                if self._una >= nxt:      # drained: nothing in flight
                    st["switch_at_s"] = round(time.monotonic() - t0, 3)
                    self._switch(target)
                    target = None
                    continue
                limit = nxt               # no new data until the switch
            if pace is not None:
                tokens -= max(0, limit - nxt)
            while nxt < limit:
                put(nxt, retx=nxt < highest)
                nxt += 1
                highest = max(highest, nxt)
                if not acked and nxt % 64 == 0:
                    break   # canonical: no feedback, but keep the loop's checks running
            if not acked:
                continue
            now = time.monotonic()
            if self._una != una_seen:
                una_seen, last_progress, last_ack = self._una, now, now
                # RFC 6298 (5.7): a backed-off RTO stays until a new RTT sample; else a
                # path whose RTT grew times out forever (Karn's rule takes every sample
                # from packets sent more than once, so the RTT would never be learnt).
                if backed_off is None or self._monitor.samples > backed_off:
                    rto, backed_off = self._rto(), None
            elif now - last_progress > rto:
                # Tail loss: nothing later can reveal it, so the timer does.
                st["timeouts"] += 1
                if self.graft.id == C.VTL_GRAFT_GBN:
                    nxt = self._una
                else:
                    put(self._una, retx=True)
                last_progress, rto = now, min(rto * 2, 1.0)
                backed_off = self._monitor.samples
            probe_at = None
            if selective and nxt >= total and probed != self._una and self._monitor.srtt:
                # RFC 8985 (7): once everything has left, a lost packet among the last
                # ones, or a lost resend of a hole the receiver will not NACK again (it
                # does so VTL_RENACK packets later), leaves nothing to reveal it but the
                # timer. So when the head has been quiet for 1.5 SRTT since it was last
                # sent, the last packet sent and the last progress, it is resent once per
                # head, and the RTO restarts (7.3). The receiver KTFs ACK every packet at
                # once: no delayed-ACK allowance is needed.
                probe_at = TLP_SRTTS * self._monitor.srtt + max(
                    last_progress, sent_at[self._una], sent_at[total - 1])
                if now >= probe_at:
                    put(self._una, retx=True)
                    probed, probe_at, last_progress = self._una, None, now
                    st["tail_probes"] += 1
            if now - last_ack > self.idle_timeout:
                raise VtlError(f"no acknowledgement from {self.peer} for "
                               f"{self.idle_timeout:.0f} s: the peer is gone")
            # Sleep until the next ACK or the first timer due (within 50 ms, for the
            # loop's other checks): a timer looked at only every 50 ms fired that late.
            wait = min(last_progress + rto - now, 0.05, pace_wait if pace else 1)
            if probe_at is not None:
                wait = min(wait, probe_at - now)
            ready, _, _ = select.select([rfd], [], [], max(0.0, wait))
            if ready:
                host.poll(0)
        self.result.fct_s = time.monotonic() - t0
        self.result.bytes = len(message)
        self.result.packets = total
        self._close_handshake(total, len(message), rto)
        return self.result

    # -- vtl_close ----------------------------------------------------------------------

    def _close_handshake(self, packets: int, nbytes: int, rto: float) -> None:
        assert self._raw is not None
        close = _ctrl(self.session, C.VTL_CLOSE, None, seq=packets, ack=nbytes)
        self.result.stats["close_acked"] = 0
        for _ in range(self.nego_tries):
            self._raw.send(self.peer, close)
            deadline = time.monotonic() + rto
            while (left := deadline - time.monotonic()) > 0:
                select.select([self._raw.sock], [], [], left)
                while (got := self._raw.recv()) is not None:
                    _, h = got
                    if h.session == self.session and h.type == C.VTL_CLOSE and \
                            h.flags & C.VTL_F_REPLY:
                        self.result.stats["close_acked"] = 1
                        return

    def close(self) -> None:
        """Remove the session's kernel state, the graft (if no one else uses it) and the
        KTFs; idempotent (Connection calls it on every exit path)."""
        host, self._host = self._host, None
        if host is not None:
            try:
                self.result.counters = host.counters()
            except VtlError:
                pass
            host.close_session(self.session, SENDER)
            if self.graft is not None:
                host.release(self.graft)
            host.close()
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def _tcp_fallback(self, data: bytes, why: str) -> Result:
        res = Result(graft="tcp", session=self.session, fallback_reason=why)
        meta = json.dumps(self.meta).encode()
        t0 = time.monotonic()
        try:
            with socket.create_connection((self.peer, FALLBACK_PORT), timeout=5) as s:
                # sendall's timeout bounds the whole call, so the data goes in pieces,
                # each within the idle timeout: a slow path is not a dead peer.
                s.settimeout(self.idle_timeout)
                s.sendall(struct.pack("!QI", len(data), len(meta)) + meta)
                view = memoryview(data)
                for i in range(0, len(data), 1 << 16):
                    s.sendall(view[i:i + (1 << 16)])
                s.shutdown(socket.SHUT_WR)
                s.settimeout(10)
                if s.recv(1) != b"k":
                    raise VtlError(f"{self.peer} closed the TCP fallback before confirming")
        except OSError as e:
            raise VtlError(f"VTL negotiation failed ({why}) and so did the TCP fallback to "
                           f"{self.peer}:{FALLBACK_PORT} ({e})") from e
        res.fct_s = time.monotonic() - t0
        res.bytes = len(data)
        return res


@dataclass
class _RxSession:
    """A receiving session under way."""

    id: int
    src: str
    chan: _Channel
    graft: Graft
    window: int
    ack: Header                  # our NEGO_ACK, said again if the sender asks again
    meta: dict[str, Any]
    t0: float
    last: float
    result: Result
    first: float = 0.0
    chunks: dict[int, bytes] = field(default_factory=dict)


class Receiver:
    """Accepts sessions on one interface, several at a time: answers negotiation from the
    local pool (or a subset), deploys the graft (shared by the sessions that use it),
    collects what the KTFs deliver, and serves the TCP fallback on FALLBACK_PORT."""

    def __init__(self, ifname: str, *, grafts: Iterable[str] | None = None,
                 tcp_fallback: bool = True, vtl: bool = True,
                 idle_timeout: float = 10.0, pool_dir: Path | None = None,
                 from_source: bool = False, max_sessions: int = 16) -> None:
        self.ifname = ifname
        self.pool = load_pool(pool_dir)
        self.from_source = from_source
        allowed = list(grafts) if grafts is not None else list(self.pool)
        unknown = [n for n in allowed if n not in self.pool]
        if unknown:
            raise VtlError(f"unknown graft(s) {', '.join(unknown)}: the pool has "
                           f"{', '.join(sorted(self.pool))}")
        self.allowed = allowed
        self.idle_timeout = idle_timeout
        self._host: KtfHost | None = None
        self._chans: list[_Channel] = []
        self._tcp: socket.socket | None = None
        try:
            if vtl:
                self._host = KtfHost(ifname)
                # Both ways in: a sender picks one, and its session stays on it.
                self._chans = [_Channel(ifname), _Channel(ifname, udp=True)]
            if tcp_fallback:
                self._tcp = socket.socket()
                self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._tcp.bind(("0.0.0.0", FALLBACK_PORT))
                self._tcp.listen(4)
        except BaseException:
            self.close()
            raise
        self.max_sessions = max_sessions
        self._sessions: dict[int, _RxSession] = {}
        self._done: collections.deque[tuple[Result, bytes, dict[str, Any]]] = \
            collections.deque()
        self._closed: collections.OrderedDict[int, Header] = collections.OrderedDict()
        self._rfd = -1
        if self._host is not None:
            self._host.rings(self._on_rx, None)
            self._rfd = self._host.ring_fd()
        self.data = b""                      # the last message received
        self.meta: dict[str, Any] = {}       # and what its sender said about it

    def _on_rx(self, rec: Any) -> None:
        sess = self._sessions.get(rec.session)
        if sess is not None:
            sess.chunks.setdefault(rec.seq, bytes(wire.ffi.buffer(rec.data, rec.len)))
            sess.last = time.monotonic()
            sess.first = sess.first or sess.last

    def _choose(self, offer: dict[str, Any]) -> tuple[Graft | None, str]:
        names = offer.get("offer")
        if not isinstance(names, list) or not names:
            return None, "the offer lists no graft"
        reasons = []
        for name in names:
            if name not in self.allowed:
                reasons.append(f"{name}: not in this pool")
                continue
            try:
                assert self._host is not None
                self._host.deploy(self.pool[name], from_source=self.from_source)
            except GraftLoadError as e:
                reasons.append(f"{name}: {e}")
                continue
            return self.pool[name], ""
        return None, "no offered graft is available (" + "; ".join(reasons) + ")"

    def accept(self, timeout: float | None = None) -> Result:
        """Wait until a session (VTL or TCP fallback) has delivered its message and return
        how it went; the message is in ``self.data``, its metadata in ``self.meta``. VTL
        sessions run concurrently: the ones still under way carry on at the next call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no session within {timeout} s")
            fds = [c.sock for c in self._chans] + ([self._tcp] if self._tcp else [])
            if self._rfd >= 0:
                fds.append(self._rfd)
            ready, _, _ = select.select(fds, [], [], 0.5 if left is None else min(left, 0.5))
            if self._rfd in ready and self._host is not None:
                self._host.poll(0)
            if self._tcp is not None and self._tcp in ready:
                return self._accept_tcp()
            for chan in self._chans:
                if chan.sock in ready:
                    while (got := chan.recv()) is not None:
                        self._control(chan, *got)
            self._reap()
        res, self.data, self.meta = self._done.popleft()
        return res

    def _control(self, chan: _Channel, src: str, h: Header) -> None:
        sess = self._sessions.get(h.session)
        if h.type == C.VTL_NEGO and h.flags & C.VTL_F_SWITCH:
            if sess is not None:
                sess.last = time.monotonic()
                chan.send(src, self._switch(sess, h))
        elif h.type == C.VTL_NEGO:
            if sess is not None:
                chan.send(src, sess.ack)      # our NEGO_ACK was lost: say it again
            else:
                self._negotiate(chan, src, h)
        elif h.type == C.VTL_CLOSE and not h.flags & C.VTL_F_REPLY:
            reply = Header(type=C.VTL_CLOSE, session=h.session, seq=h.seq, ack=h.ack,
                           flags=C.VTL_F_REPLY)
            if sess is not None:
                self._finish(sess, h.seq, h.ack)
                self._closed[h.session] = reply
                while len(self._closed) > 64:
                    self._closed.popitem(last=False)
            if h.session in self._closed:
                chan.send(src, reply)         # also when our first answer was lost

    def _negotiate(self, chan: _Channel, src: str, h: Header) -> None:
        assert self._host is not None
        t0 = time.monotonic()
        try:
            offer = _json(h.payload)
        except WireError as e:
            chan.send(src, _ctrl(h.session, C.VTL_NEGO_NACK, {"reason": str(e)}))
            return
        if len(self._sessions) >= self.max_sessions:
            chan.send(src, _ctrl(h.session, C.VTL_NEGO_NACK, {
                "reason": f"busy: {self.max_sessions} sessions under way"}))
            return
        graft, why = self._choose(offer)
        if graft is None:
            chan.send(src, _ctrl(h.session, C.VTL_NEGO_NACK, {"reason": why}))
            return
        window = max(1, min(int(offer.get("window", graft.window)), graft.window))
        services = offer.get("services") or {}
        loss = float(services.get("max_loss", graft.max_loss))
        budget = int(min(loss, graft.max_loss) * 1_000_000)
        try:
            self._host.open_session(h.session, RECEIVER, graft, window, budget)
        except VtlError as e:
            self._host.release(graft)
            chan.send(src, _ctrl(h.session, C.VTL_NEGO_NACK, {"reason": str(e)}))
            return
        ack = _ctrl(h.session, C.VTL_NEGO_ACK,
                    {"graft": graft.name, "window": window, "budget_ppm": budget})
        now = time.monotonic()
        self._sessions[h.session] = _RxSession(
            id=h.session, src=src, chan=chan, graft=graft, window=window, ack=ack,
            meta=offer.get("meta") or {}, t0=now, last=now,
            result=Result(graft=graft.name, session=h.session, negotiation_s=now - t0,
                          grafts=[graft.name], encap="udp" if chan.udp else "ip"))
        # How many sessions ran at once during each one's life (they share the KTFs).
        for other in self._sessions.values():
            other.result.stats["peak_sessions"] = max(
                other.result.stats.get("peak_sessions", 0), len(self._sessions))
        chan.send(src, ack)

    def _switch(self, sess: _RxSession, h: Header) -> Header:
        """The sender's monitor asks for another graft (it has nothing in flight): deploy
        it, move the session's kernel state over (sequence state kept), answer."""
        assert self._host is not None
        try:
            req = _json(h.payload)
        except WireError as e:
            return _ctrl(sess.id, C.VTL_NEGO_NACK, {"reason": str(e)}, flags=C.VTL_F_SWITCH)
        name = req.get("switch")
        if name == sess.graft.name:   # our answer was lost: the same answer again
            return _ctrl(sess.id, C.VTL_NEGO_ACK, {"graft": name, "window": sess.window},
                         flags=C.VTL_F_SWITCH)
        new, why = self._choose({"offer": [name]})
        if new is None or new.id == C.VTL_GRAFT_CANONICAL:
            if new is not None:
                self._host.release(new)
            return _ctrl(sess.id, C.VTL_NEGO_NACK, {"reason": why or "no feedback in "
                                                    "canonical"}, flags=C.VTL_F_SWITCH)
        window = max(1, min(int(req.get("window", new.window)), new.window))
        budget = int(min(float(req.get("max_loss", new.max_loss)), new.max_loss) * 1e6)
        self._host.update_session(sess.id, RECEIVER, new, window, budget)
        self._host.release(sess.graft)
        sess.graft, sess.window = new, window
        sess.result.grafts.append(new.name)
        return _ctrl(sess.id, C.VTL_NEGO_ACK, {"graft": new.name, "window": window},
                     flags=C.VTL_F_SWITCH)

    def _drop(self, sess: _RxSession) -> None:
        """Remove a session's kernel state and its use of the graft."""
        assert self._host is not None
        del self._sessions[sess.id]
        self._host.close_session(sess.id, RECEIVER)
        self._host.release(sess.graft)

    def _finish(self, sess: _RxSession, packets: int, nbytes: int) -> None:
        assert self._host is not None
        self._host.poll(0)                # everything the KTF accepted is in the ring
        self._drop(sess)
        res = sess.result
        res.fct_s = time.monotonic() - (sess.first or sess.t0)
        res.graft = sess.graft.name
        parts, lost = [], []
        for seq in range(packets):
            chunk = sess.chunks.get(seq)
            if chunk is None:
                lost.append(seq)
                chunk = bytes(min(MSS, nbytes - seq * MSS))   # a hole keeps its place
            parts.append(chunk)
        res.lost, res.packets, res.bytes = lost, packets, nbytes
        res.counters = self._host.counters()
        self._done.append((res, b"".join(parts), sess.meta))

    def _reap(self) -> None:
        now = time.monotonic()
        for sess in [x for x in self._sessions.values() if now - x.last > self.idle_timeout]:
            self._drop(sess)
            raise VtlError(f"session {sess.id:#x} from {sess.src} idle for "
                           f"{self.idle_timeout:.0f} s: state removed")

    def _accept_tcp(self) -> Result:
        assert self._tcp is not None
        conn, (src, _) = self._tcp.accept()
        t0 = time.monotonic()
        with conn:
            conn.settimeout(self.idle_timeout)
            head = _recv_exact(conn, 12)
            size, mlen = struct.unpack("!QI", head)
            self.meta = json.loads(_recv_exact(conn, mlen) or b"{}")
            self.data = _recv_exact(conn, size)
            conn.sendall(b"k")
        res = Result(graft="tcp", session=0, bytes=size, fct_s=time.monotonic() - t0)
        if self._host is not None:
            res.counters = self._host.counters()
        return res

    def close(self) -> None:
        if self._host is not None:
            for sess in list(self._sessions.values()):
                self._drop(sess)
        for chan in self._chans:
            chan.close()
        self._chans = []
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        host, self._host = self._host, None
        if host is not None:
            host.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = conn.recv(min(n - len(buf), 1 << 20))
        if not got:
            raise VtlError(f"TCP fallback: peer closed after {len(buf)} of {n} bytes")
        buf += got
    return bytes(buf)
