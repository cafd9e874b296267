"""`vtl sink`: accept TCP connections on the stack, consume them, report each one.

One JSON line per connection as it ends: bytes, SHA-256 of the stream, seconds,
throughput. A `ready` line comes first, once the port is listening, and a `stats` line
last. Connections are served concurrently, from one thread: the stack says which sockets
moved (`Stack.pump()`), so a pass costs what happened, not how many connections are open.
"""

import argparse
import hashlib
import select
import selectors
import time
from typing import Any

from vtlstack.apps._common import RunUntil, emit

RECV_BYTES = 1 << 20
_POLL_S = 0.2      # longest sleep between checks of `running`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sink", help="TCP sink on the stack: JSON per connection",
                       description=__doc__)
    p.add_argument("--iface", required=True, help="interface to attach to (in this netns)")
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    p.add_argument("--mode", choices=("auto", "skb", "drv"), default="auto",
                   help="XDP attach mode (veth supports skb and drv, copy mode)")
    p.add_argument("--count", type=int, default=None,
                   help="stop after this many connections (default: until SIGINT/SIGTERM)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds")
    p.add_argument("--max-conns", type=int, default=1024,
                   help="connections the stack holds at once, listener included "
                        "(about 13 KB each; default 1024)")
    p.add_argument("--frames", type=int, default=4096,
                   help="UMEM frames, 2 KB each (default 4096)")
    p.add_argument("--net-cpu", type=int, default=None,
                   help="pin the network thread to this CPU (default: not pinned)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtlstack.stack import Stack

    stack = Stack(args.iface, mode=args.mode, max_conns=args.max_conns,
                  frame_count=args.frames, net_cpu=args.net_cpu)
    with stack, RunUntil(args.duration) as running:
        listener = stack.tcp_listen(args.port)
        emit({"event": "ready", "iface": args.iface, "ip": stack.ip, "port": args.port})
        served = serve(listener, running, args.count, StackEvents(stack))
        listener.close()
    emit({"event": "stats", **served, **stack.final_stats})
    return 0


class StackEvents:
    """Which of the stack's sockets may have moved: pump(), then sleep on its eventfd."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack

    def add(self, sock: Any) -> None:
        """Nothing to register: every socket of the stack reports through pump()."""

    def remove(self, sock: Any) -> None:
        """Nothing to unregister."""

    def ready(self, timeout: float) -> set:
        moved = self.stack.pump()
        if not moved and self.stack.arm():
            select.select([self.stack.fileno()], [], [], timeout)
            moved = self.stack.pump()
        return moved


class KernelEvents:
    """The same for kernel sockets (bench's kernel twin): a selector over them all."""

    def __init__(self, listener: Any) -> None:
        self.selector = selectors.DefaultSelector()
        self.add(listener)

    def add(self, sock: Any) -> None:
        self.selector.register(sock.sock, selectors.EVENT_READ, sock)

    def remove(self, sock: Any) -> None:
        self.selector.unregister(sock.sock)

    def ready(self, timeout: float) -> set:
        return {key.data for key, _ in self.selector.select(timeout)}


class _Consumed:
    """What one connection has delivered so far."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.total = 0
        self.start = time.monotonic()

    def line(self) -> dict:
        seconds = time.monotonic() - self.start
        return {"event": "connection", "bytes": self.total,
                "sha256": self.digest.hexdigest(), "seconds": round(seconds, 4),
                "mbit_per_s": round(self.total * 8 / seconds / 1e6, 1) if seconds else None}


def serve(listener: Any, running: RunUntil, count: int | None, events: Any) -> dict:
    """Accept and consume connections concurrently, a JSON line for each as it ends.

    Stops after `count` connections ended (None: when `running` turns false). Each ready
    socket is read until it would block, so a readiness report is never needed twice.
    Returns the serving figures: connections ended, errors, the most open at once."""
    open_: dict[Any, _Consumed] = {}
    served = errors = peak = 0
    try:
        while running and (count is None or served < count):
            for sock in events.ready(_POLL_S):
                if sock is listener:
                    # a new connection is read at once: its first bytes (even its end)
                    # may have been announced before it was accepted
                    movable = _accept_all(listener)
                    for conn in movable:
                        open_[conn] = _Consumed()
                        events.add(conn)
                    peak = max(peak, len(open_))
                else:
                    movable = [sock]
                for conn in movable:
                    consumed = open_.get(conn)
                    if consumed is None:
                        continue    # closed in this pass already
                    try:
                        done = _drain(conn, consumed)
                    except OSError:
                        # a reset ends that connection, not the service
                        done, errors = True, errors + 1
                    if done:
                        del open_[conn]
                        events.remove(conn)
                        conn.close()
                        emit(consumed.line())
                        served += 1
    finally:
        for conn in open_:
            conn.close()
    return {"connections": served, "errors": errors, "peak_open": peak}


def _accept_all(listener: Any) -> list:
    accepted = []
    while True:
        try:
            accepted.append(listener.accept(timeout=0))
        except (BlockingIOError, TimeoutError):
            return accepted


def _drain(conn: Any, consumed: _Consumed) -> bool:
    """Read until it would block; True at end of stream."""
    while True:
        try:
            data = conn.recv(RECV_BYTES, timeout=0)
        except (BlockingIOError, TimeoutError):
            return False
        if not data:
            return True
        consumed.digest.update(data)
        consumed.total += len(data)
