"""The net monitor: per-session RTT, loss and rate, and the rules that swap grafts.

The sender's broker feeds it (a packet sent, a packet resent, the window moving) and
asks ``decide(graft)`` whether a rule wants another graft. RTT samples follow Karn's
rule (only packets sent once) and are smoothed as RFC 6298 does (alpha 1/8). A rule is
written ``METRIC OP VALUE:FROM->TO``, e.g. the paper's ``rtt_ms>=300:gbn->pr``; metrics
are ``rtt_ms``, ``loss`` (resent / sent) and ``rate_mbit`` (acknowledged bytes over time).

It also tells Selective Repeat and Partial Reliability how many packets to keep in flight
(``inflight_limit``): the path's bandwidth-delay product, from the best delivery rate of the
last 10 s and an estimate of the path's base RTT, plus as much again as headroom for the
sender's jitter, but never more than 20 ms of traffic (bottleneck buffers are sized in time,
the testbed's tbf holds 50 ms). Loss is not a signal here (these grafts are for lossy
paths); the limit only keeps the bottleneck busy without filling its queue, so a hole's
retransmission does not wait behind a queue the sender built itself.

A fresh session does not know the path: it starts with INITIAL_INFLIGHT packets and, while
the delivery rate still grows by a quarter per round trip, keeps twice the bandwidth-delay
product in flight and paces at twice the rate (BBR's startup, in spirit), so a long path
fills in a few round trips rather than at 10 % per round trip. The startup ends, for the
session's life, after three round trips without that growth (loss tells nothing on the
lossy paths these grafts are for). On a buffer shallower than the path's bandwidth-delay
product it overshoots, and the losses are repaired like any others: measured, that cost
less than ending the startup when the RTT rises (HyStart's test, RFC 9406), which ended
it early. The queue the startup built drains as the limit falls back.

The base RTT has to follow a path whose delay changes (the paper's Fig. 10) without taking
the sender's own queue for path delay. Every RTT sample bounds it from above, so it drops at
once to a smaller sample. Each sample ``r`` of a packet sent with ``f`` packets in flight
also bounds it from below by ``r - f / rate`` (at most ``f`` packets waited ahead of it at the
bottleneck, which drains at least at the best rate seen): a queue of our own cancels out of
that bound, a longer path does not. When every bound of the last second exceeds twice the
estimate, the estimate rises to the smallest of them. (Were the rate overestimated, the
bounds would take some of our own queue for path delay; the factor 2 keeps that from feeding
on itself unless the rate is off twofold.)
"""

from __future__ import annotations

import collections
import math
import operator
import re
import time
from dataclasses import dataclass

__all__ = ["Rule", "Monitor", "PAPER_RULE"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_RULE = re.compile(r"^\s*(rtt_ms|loss|rate_mbit)\s*(>=|<=|>|<)\s*([0-9.]+)\s*:"
                   r"\s*([a-z0-9_]+)\s*->\s*([a-z0-9_]+)\s*$")


@dataclass(frozen=True)
class Rule:
    metric: str
    op: str
    value: float
    src: str
    dst: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        m = _RULE.match(text)
        if not m:
            raise ValueError(f"rule {text!r}: write METRIC OP VALUE:FROM->TO with METRIC "
                             f"rtt_ms, loss or rate_mbit, e.g. 'rtt_ms>=300:gbn->pr'")
        return cls(m[1], m[2], float(m[3]), m[4], m[5])

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}:{self.src}->{self.dst}"


PAPER_RULE = Rule.parse("rtt_ms>=300:gbn->pr")   # VTL paper, section V.C


INITIAL_INFLIGHT = 32   # packets in flight before the path is measured
MIN_INFLIGHT = 16       # never fewer: a path this thin is not worth measuring finer
MAX_QUEUE = 0.02        # s: headroom beyond the bandwidth-delay product, at most this long
PACING_GAIN = 1.1       # new packets leave at this much the best delivery rate: 10 % more
                        # per round trip to find a faster path, and a queue that grows
                        # slowly enough for a short buffer while a window fills
PACE_MIN_RTT = 1.0      # s: never pace below MIN_INFLIGHT packets per this long
RATE_WINDOW = 10.0      # s: the best delivery rate of this long (a path whose RTT grows
                        # keeps its rate: the sender need not find it again)
BASE_WINDOW = 1.0       # s: lower bounds of the base RTT from this long
RATE_SPAN = 0.05        # s: delivery-rate samples over at least this long (ACKs bunch up)
STARTUP_GAIN = 2.0      # in startup: pace at, and keep in flight, this much the rate seen
STARTUP_GROWTH = 1.25   # the rate still grows while it rises this much per round trip
STARTUP_ROUNDS = 3      # round trips without that growth end the startup


class _WindowedExtreme:
    """The largest (or smallest) value of the last `window` seconds (a monotonic deque)."""

    def __init__(self, window: float, largest: bool) -> None:
        self.window, self.largest = window, largest
        self._q: collections.deque[tuple[float, float]] = collections.deque()
        self._first: float | None = None

    def add(self, now: float, value: float) -> None:
        q = self._q
        if self._first is None:
            self._first = now
        while q and (q[-1][1] <= value if self.largest else q[-1][1] >= value):
            q.pop()
        q.append((now, value))
        while q[0][0] < now - self.window:
            q.popleft()

    def value(self) -> float | None:
        return self._q[0][1] if self._q else None

    def spans(self, now: float) -> bool:
        """Whether values have been added for a whole window (not only since a start)."""
        return self._first is not None and now - self._first >= self.window


class Monitor:
    """What the path looks like to one sending session."""

    def __init__(self, rules: list[Rule], min_samples: int = 8) -> None:
        self.rules = rules
        self.min_samples = min_samples
        self.srtt: float | None = None
        self.min_rtt: float | None = None
        self._base_rtt: float | None = None
        self.samples = 0
        self.sent = 0
        self.resent = 0
        self.acked_bytes = 0
        self._t0 = time.monotonic()
        # seq -> (when, packets in flight then), in seq order
        self._sent_at: collections.OrderedDict[int, tuple[float, int]] = \
            collections.OrderedDict()
        self._resent: set[int] = set()
        self._rate = _WindowedExtreme(RATE_WINDOW, largest=True)     # packets/s
        self._bounds = _WindowedExtreme(BASE_WINDOW, largest=False)  # s, base RTT >=
        self._delivered: collections.deque[tuple[float, int]] = collections.deque()
        self.startup = True
        self._round_at: float | None = None   # when the current round trip began
        self._round_rate = 0.0                # the best rate when it last grew enough
        self._flat_rounds = 0

    def on_send(self, seq: int, retx: bool, now: float, inflight: int = 0) -> None:
        if retx:
            self.resent += 1
            self._resent.add(seq)
        else:
            self.sent += 1
            self._sent_at[seq] = (now, inflight)

    def on_delivered(self, delivered: int, now: float) -> None:
        """`delivered` packets are known to have arrived (cumulatively and selectively
        acknowledged): one delivery-rate sample over about the last round trip."""
        d = self._delivered
        d.append((now, delivered))
        span = max(self.srtt or 0.0, RATE_SPAN)
        while len(d) > 2 and d[1][0] <= now - span:
            d.popleft()
        t0, n0 = d[0]
        if now - t0 >= span and delivered > n0:
            self._rate.add(now, (delivered - n0) / (now - t0))
        if self.startup and self.srtt:
            self._startup_round(now)

    def _startup_round(self, now: float) -> None:
        if self._round_at is None:
            self._round_at = now
        if now - self._round_at < self.srtt:
            return
        self._round_at = now
        rate = self._rate.value() or 0.0
        if rate >= STARTUP_GROWTH * self._round_rate:
            self._round_rate, self._flat_rounds = rate, 0
            return
        self._flat_rounds += 1
        self.startup = self._flat_rounds < STARTUP_ROUNDS

    def inflight_limit(self) -> int:
        """How many packets to keep in flight (see the module docstring)."""
        rate, base = self._rate.value(), self._base_rtt
        if rate is None or base is None or self.samples < self.min_samples:
            return INITIAL_INFLIGHT
        gain = STARTUP_GAIN if self.startup else 1.0
        return max(MIN_INFLIGHT, math.ceil(rate * (gain * base + min(base, MAX_QUEUE))))

    def pacing_rate(self) -> float | None:
        """Packets/s to pace new packets at: a little above the best delivery rate, so the
        rate can still grow (None until the path is measured)."""
        rate = self._rate.value()
        if rate is None or self.samples < self.min_samples:
            return None
        gain = STARTUP_GAIN if self.startup else PACING_GAIN
        return max(gain * rate, MIN_INFLIGHT / PACE_MIN_RTT)

    def base_rtt(self) -> float | None:
        """The estimate of the path's RTT without queues (see the module docstring)."""
        return self._base_rtt

    def on_acked(self, una: int, answers: int, acked_bytes: int, now: float) -> None:
        """An ACK came: the window is at una, and the ACK answers DATA seq `answers` (one
        RTT sample, unless that packet was sent more than once)."""
        self.acked_bytes = acked_bytes
        sent = self._sent_at.pop(answers, None)
        while self._sent_at and next(iter(self._sent_at)) < una:
            self._sent_at.popitem(last=False)
        if sent is None or answers in self._resent:
            return   # Karn: an ACK for a resent packet says nothing about the RTT
        at, inflight = sent
        rtt = now - at
        self.srtt = rtt if self.srtt is None else self.srtt + (rtt - self.srtt) / 8
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        self.samples += 1
        base = self._base_rtt = rtt if self._base_rtt is None else min(self._base_rtt, rtt)
        rate = self._rate.value()
        if rate:
            self._bounds.add(now, rtt - inflight / rate)
            low = self._bounds.value()
            if low is not None and low > 2 * base and self._bounds.spans(now):
                self._base_rtt = low

    def metrics(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        return {"rtt_ms": (self.srtt or 0.0) * 1e3,
                "loss": self.resent / self.sent if self.sent else 0.0,
                "rate_mbit": self.acked_bytes * 8 / elapsed / 1e6}

    def decide(self, graft: str) -> Rule | None:
        """The first rule for the current graft whose condition holds, if any."""
        if self.samples < self.min_samples:
            return None
        m = self.metrics()
        for rule in self.rules:
            if rule.src == graft and _OPS[rule.op](m[rule.metric], rule.value):
                return rule
        return None
