"""`vtl sink`: accept TCP connections on the stack, consume them, report each one.

One JSON line per connection as it ends: bytes, SHA-256 of the stream, seconds,
throughput. A `ready` line comes first, once the port is listening, and a `stats` line
last. Connections are served concurrently, from one thread: the stack says which sockets
moved (`Stack.pump()`), so a pass costs what happened, not how many connections are open.

With --format the stack parses each connection into records (csv, http_request, resp...;
in the network thread, or with --parse-in app in the application thread): the lines also
count records, a connection whose input does not parse ends with its error, and progress
(records/s, MB/s) shows live on a terminal, or as a `progress` JSON line every second.
"""

import argparse
import hashlib
import select
import selectors
import sys
import time
from typing import Any

from vtlstack.apps._common import RunUntil, emit

from vtlstack.errors import ParseError
from vtlstack.parsers import BUILTINS

RECV_BYTES = 1 << 20
RECORDS_MAX = 4096  # records per batch
_POLL_S = 0.2      # longest sleep between checks of `running`
_PROGRESS_S = 1.0


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
    p.add_argument("--format", choices=BUILTINS, default=None,
                   help="read each connection as records of this format, parsed in the stack")
    p.add_argument("--parse-in", choices=("net", "app"), default="net",
                   help="with --format: parse in the network thread (default) or in the "
                        "application thread")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtlstack.stack import Stack

    stack = Stack(args.iface, mode=args.mode, max_conns=args.max_conns,
                  frame_count=args.frames, net_cpu=args.net_cpu)
    with stack, RunUntil(args.duration) as running:
        if args.format:
            listener = stack.listen(args.port, parser=args.format, parse_in=args.parse_in)
        else:
            listener = stack.tcp_listen(args.port)
        emit({"event": "ready", "iface": args.iface, "ip": stack.ip, "port": args.port})
        served = serve(listener, running, args.count, StackEvents(stack),
                       _drain_records if args.format else _drain,
                       Progress(sys.stdout.isatty()) if args.format else None)
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
        self.records = 0
        self.error: str | None = None
        self.start = time.monotonic()

    def line(self, records: bool) -> dict:
        seconds = time.monotonic() - self.start
        out = {"event": "connection", "bytes": self.total,
               "sha256": self.digest.hexdigest(), "seconds": round(seconds, 4),
               "mbit_per_s": round(self.total * 8 / seconds / 1e6, 1) if seconds else None}
        if records:
            out["records"] = self.records
            out["records_per_s"] = round(self.records / seconds) if seconds else None
        if self.error is not None:
            out["error"] = self.error
        return out


class Progress:
    """Records/s and MB/s over all connections, once a second: a status line redrawn on a
    terminal, a `progress` JSON line otherwise."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.ended_records = self.ended_bytes = 0
        self.last = (time.monotonic(), 0, 0)

    def ended(self, consumed: _Consumed) -> None:
        self.ended_records += consumed.records
        self.ended_bytes += consumed.total

    def tick(self, open_: dict) -> None:
        now = time.monotonic()
        then, records0, bytes0 = self.last
        if now - then < _PROGRESS_S:
            return
        records = self.ended_records + sum(c.records for c in open_.values())
        nbytes = self.ended_bytes + sum(c.total for c in open_.values())
        self.last = (now, records, nbytes)
        rate, mb = (records - records0) / (now - then), (nbytes - bytes0) / (now - then) / 1e6
        if self.tty:
            sys.stdout.write(f"\r{rate:12,.0f} records/s {mb:9.1f} MB/s {records:14,} "
                             f"records {len(open_):5} open ")
            sys.stdout.flush()
        else:
            emit({"event": "progress", "records_per_s": round(rate), "mb_per_s": round(mb, 1),
                  "records": records, "bytes": nbytes, "open": len(open_)})


def serve(listener: Any, running: RunUntil, count: int | None, events: Any,
          drain: Any = None, progress: Progress | None = None) -> dict:
    """Accept and consume connections concurrently, a JSON line for each as it ends.

    Stops after `count` connections ended (None: when `running` turns false). Each ready
    socket is read until it would block, so a readiness report is never needed twice.
    `drain(conn, consumed)` reads a connection (default: bytes); with `progress` the
    connections are record connections. Returns the serving figures: connections ended,
    errors, the most open at once."""
    open_: dict[Any, _Consumed] = {}
    served = errors = peak = 0
    drain = drain or _drain
    try:
        while running and (count is None or served < count):
            if progress is not None:
                progress.tick(open_)
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
                        done = drain(conn, consumed)
                    except (OSError, ParseError) as exc:
                        # a reset or bad input ends that connection, not the service
                        done, errors = True, errors + 1
                        consumed.error = str(exc)
                    if done:
                        del open_[conn]
                        events.remove(conn)
                        conn.close()
                        if progress is not None:
                            progress.ended(consumed)
                        if progress is not None and progress.tty:
                            print(f"\n{consumed.line(True)}", flush=True)
                        else:
                            emit(consumed.line(progress is not None))
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


def _drain_records(conn: Any, consumed: _Consumed) -> bool:
    """Read records until it would block; True at end of stream. The stream's bytes are
    hashed through the batch's views of its frames (no copy)."""
    while True:
        try:
            batch = conn.read_records(max=RECORDS_MAX, timeout=0)
        except (BlockingIOError, TimeoutError):
            return False
        with batch:
            if not len(batch):
                return True
            for view in batch.view(batch.start, batch.end - batch.start):
                consumed.digest.update(view)
            consumed.total += batch.end - batch.start
            consumed.records += len(batch)
