"""`vtl sink`: accept TCP connections on the stack, consume them, report each one.

One JSON line per connection: bytes, SHA-256 of the stream, seconds, throughput. A `ready`
line comes first, once the port is listening. Connections are served one after another.
"""

import argparse
import hashlib
import time
from typing import Any

from vtlstack.apps._common import RunUntil, emit


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtlstack.stack import Stack

    stack = Stack(args.iface, mode=args.mode)
    with stack, RunUntil(args.duration) as running:
        listener = stack.tcp_listen(args.port)
        emit({"event": "ready", "iface": args.iface, "ip": stack.ip, "port": args.port})
        serve(listener, running, args.count)
        listener.close()
    emit({"event": "stats", **stack.final_stats})
    return 0


def serve(listener: Any, running: RunUntil, count: int | None) -> int:
    """Accept and consume connections one after another (a line each); how many."""
    served = 0
    while running and (count is None or served < count):
        try:
            conn = listener.accept(timeout=0.2)
        except TimeoutError:
            continue
        with conn:
            emit(consume(conn, running))
        served += 1
    return served


def consume(conn: Any, running: RunUntil) -> dict:
    digest = hashlib.sha256()
    total = 0
    start = time.monotonic()
    while running:
        try:
            data = conn.recv(1 << 20, timeout=0.5)
        except TimeoutError:
            continue
        if not data:
            break
        digest.update(data)
        total += len(data)
    seconds = time.monotonic() - start
    return {"event": "connection", "bytes": total, "sha256": digest.hexdigest(),
            "seconds": round(seconds, 4),
            "mbit_per_s": round(total * 8 / seconds / 1e6, 1) if seconds else None}
