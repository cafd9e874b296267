"""Splice: two TCP connections joined in the network thread (see Stack.splice).

The frames one connection receives are re-sent on the other with new headers, no payload
copy, both ways at once; they stay referenced until the other peer acknowledges them. The
window each side advertises follows the other's reader (adaptive alpha), so a slow or
stalled reader throttles the sender and nothing is lost. The application only waits for
the end and reads counters.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtlstack.stack import Stack, TcpSocket

_WAIT_STEP = 0.05


class Splice:
    """A running splice of connections `a` and `b`. It owns both sockets: the app must
    not read, send or close them itself. It ends when both connections have ended, each
    way's FIN having followed its bytes (or a reset of one having reset the other); then
    both sockets are closed."""

    def __init__(self, stack: Stack, a: TcpSocket, b: TcpSocket,
                 inspector: Any = None) -> None:
        self._stack = stack
        self.a = a
        self.b = b
        self.inspector = inspector      # an HttpInspector with inspect="http"
        self.started = time.monotonic()
        self.ended: float | None = None
        self._final: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """Both connections have ended (pumps the handoff once, without waiting)."""
        if self._final is None:
            with self._stack._lock:
                self._stack._pump(0)
            self._check()   # outside the lock: it may close the sockets
        return self._final is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the splice has ended; False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stack = self._stack
        while True:
            self._check()   # outside the lock: it may close the sockets
            if self._final is not None:
                return True
            left = _WAIT_STEP if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            with stack._lock:
                stack._pump(min(left, _WAIT_STEP))

    def abort(self) -> None:
        """Reset both connections now (queued bytes are dropped)."""
        if self._final is None:
            self._final = self._snapshot()
            self.ended = time.monotonic()
        for sock in (self.a, self.b):
            sock.abort()

    def counters(self) -> dict[str, Any]:
        """bytes_ab: bytes received from a's peer and passed on to b's; bytes_ba the other
        way; seconds: how long it has run (or ran); states of both connections; with an
        inspector, its counters under "http"."""
        out = dict(self._final) if self._final is not None else self._snapshot()
        if self.inspector is not None:
            out["http"] = self.inspector.counters()
        return out

    def exchanges(self) -> list[dict[str, Any]]:
        """inspect="http": the requests answered (or not) since the last call, oldest
        first: method, target, status, bytes each way, start and end (monotonic ns)."""
        return self.inspector.exchanges() if self.inspector is not None else []

    def _snapshot(self) -> dict[str, Any]:
        stack = self._stack
        tcp = stack._net.tcp if stack._net is not None else None
        out: dict[str, Any] = {"bytes_ab": 0, "bytes_ba": 0, "state_a": None,
                               "state_b": None,
                               "seconds": (self.ended or time.monotonic()) - self.started}
        for sock, key, side in ((self.a, "bytes_ab", "state_a"),
                                (self.b, "bytes_ba", "state_b")):
            if tcp is not None and not sock.closed and tcp.exists(sock.cid):
                info = tcp.info(sock.cid)
                out[key] = info["splice_moved"]
                out[side] = info["state"]
        return out

    def _check(self) -> None:
        """Done once both sockets have seen EV_SPLICE_DONE: take the last counters, then
        close the sockets (their slots are freed when the engine lets go of them)."""
        if self._final is None and self.a._splice_done and self.b._splice_done:
            self.ended = time.monotonic()
            self._final = self._snapshot()
            self.a.close()
            self.b.close()

    def __repr__(self) -> str:
        state = "done" if self._final is not None else "running"
        return f"<Splice {self.a.peer} <-> {self.b.peer} {state}>"
