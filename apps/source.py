"""`vtl source`: connect from the stack to a TCP server and send a deterministic stream.

Prints one JSON line like `vtl sink`: bytes, SHA-256 of what was sent, seconds, throughput.
The stream is a seeded pseudo-random block repeated, so a receiver can check it.
"""

import argparse
import hashlib
import random
import time
from typing import Any

from vtlstack.apps._common import emit

from vtlstack.errors import VtlError

BLOCK = 1 << 16


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("source", help="TCP client on the stack: send N bytes, JSON report",
                       description=__doc__)
    p.add_argument("--iface", required=True, help="interface to attach to (in this netns)")
    p.add_argument("--connect", required=True, metavar="IP:PORT", help="the server")
    p.add_argument("--bytes", type=int, required=True, help="how many bytes to send")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream (default 0)")
    p.add_argument("--mode", choices=("auto", "skb", "drv"), default="auto",
                   help="XDP attach mode (veth supports skb and drv, copy mode)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the connection and for each send")
    p.set_defaults(func=run)


def stream_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def run(args: argparse.Namespace) -> int:
    from vtlstack.stack import Stack

    host, _, port = args.connect.rpartition(":")
    if not host or not port.isdigit():
        raise VtlError(f"--connect {args.connect!r}: give IP:PORT")
    stack = Stack(args.iface, mode=args.mode)
    with stack:
        try:
            conn = stack.tcp_connect((host, int(port)), timeout=args.timeout)
        except ConnectionRefusedError:
            raise VtlError(f"{args.connect} refused the connection") from None
        except TimeoutError:
            raise VtlError(f"no answer from {args.connect}") from None
        with conn:
            report = produce(conn, args.bytes, args.seed, args.timeout)
    emit(report)
    emit({"event": "stats", **stack.final_stats})
    return 0


def produce(conn: Any, nbytes: int, seed: int, timeout: float) -> dict:
    """Send the stream, half-close, and wait for the peer's FIN; the report line."""
    block = stream_block(seed)
    digest = hashlib.sha256()
    start = time.monotonic()
    left = nbytes
    while left:
        piece = block[:min(left, BLOCK)]
        conn.sendall(piece, timeout=timeout)
        digest.update(piece)
        left -= len(piece)
    conn.shutdown()
    # Wait for the server's FIN: everything we sent was received and acknowledged.
    while conn.recv(BLOCK, timeout=timeout):
        pass
    seconds = time.monotonic() - start
    return {"event": "connection", "bytes": nbytes, "sha256": digest.hexdigest(),
            "seconds": round(seconds, 4),
            "mbit_per_s": round(nbytes * 8 / seconds / 1e6, 1) if seconds else None}
