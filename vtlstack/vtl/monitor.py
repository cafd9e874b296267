"""The net monitor: per-session RTT, loss and rate, and the rules that swap grafts.

The sender's broker feeds it (a packet sent, a packet resent, the window moving) and
asks ``decide(graft)`` whether a rule wants another graft. RTT samples follow Karn's
rule (only packets sent once) and are smoothed as RFC 6298 does (alpha 1/8). A rule is
written ``METRIC OP VALUE:FROM->TO``, e.g. the paper's ``rtt_ms>=300:gbn->pr``; metrics
are ``rtt_ms``, ``loss`` (resent / sent) and ``rate_mbit`` (acknowledged bytes over time).
"""

from __future__ import annotations

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


class Monitor:
    """What the path looks like to one sending session."""

    def __init__(self, rules: list[Rule], min_samples: int = 8) -> None:
        self.rules = rules
        self.min_samples = min_samples
        self.srtt: float | None = None
        self.samples = 0
        self.sent = 0
        self.resent = 0
        self.acked_bytes = 0
        self._t0 = time.monotonic()
        self._sent_at: dict[int, float] = {}
        self._resent: set[int] = set()

    def on_send(self, seq: int, retx: bool, now: float) -> None:
        if retx:
            self.resent += 1
            self._resent.add(seq)
        else:
            self.sent += 1
            self._sent_at[seq] = now

    def on_acked(self, una: int, acked_bytes: int, now: float) -> None:
        """The window moved to una: one RTT sample from the newest packet acknowledged."""
        self.acked_bytes = acked_bytes
        seq = una - 1
        sent = self._sent_at.pop(seq, None)
        for s in [s for s in self._sent_at if s < seq]:
            del self._sent_at[s]
        if sent is None or seq in self._resent:
            return   # Karn: an ACK for a resent packet says nothing about the RTT
        rtt = now - sent
        self.srtt = rtt if self.srtt is None else self.srtt + (rtt - self.srtt) / 8
        self.samples += 1

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
