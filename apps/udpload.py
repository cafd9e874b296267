"""`vtl udpload`: a plain Linux UDP client (kernel sockets) for echo services.

Two phases, each bounded in time: round-trip latency with one datagram in flight, then
throughput with `--window` datagrams in flight. Prints one JSON object. Datagrams carry a
sequence number, and answers that do not match one in flight are counted, not trusted.
"""

import argparse
import select
import socket
import struct
import time

from vtlstack.apps._common import emit

from vtlstack.errors import VtlError

_SEQ = struct.Struct("!Q")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("udpload", help="UDP echo client: latency and packets/s (kernel sockets)",
                       description=__doc__)
    p.add_argument("--to", required=True, metavar="IP:PORT", help="the echo service")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each phase")
    p.add_argument("--size", type=int, default=64, help="UDP payload bytes (>= 8)")
    p.add_argument("--window", type=int, default=32, help="datagrams in flight (throughput)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit():
        raise VtlError(f"--to {args.to!r}: give IP:PORT")
    try:
        emit(measure((host, int(port)), args.seconds, max(args.size, 8), args.window))
    except ConnectionRefusedError:
        # A connected UDP socket reports the peer's ICMP port unreachable this way.
        raise VtlError(f"nothing listens on {args.to} (ICMP port unreachable)") from None
    return 0


def measure(peer: tuple[str, int], seconds: float, size: int, window: int) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(peer)
        pad = bytes(size - _SEQ.size)
        rtts = _latency(s, pad, seconds)
        sent, received, elapsed, stray = _throughput(s, pad, seconds, window)
    rtts.sort()
    return {
        "peer": f"{peer[0]}:{peer[1]}",
        "size": size,
        "rtt_samples": len(rtts),
        "rtt_p50_us": round(rtts[len(rtts) // 2] * 1e6, 1) if rtts else None,
        "rtt_p99_us": round(rtts[int(len(rtts) * 0.99)] * 1e6, 1) if rtts else None,
        "window": window,
        "sent": sent,
        "received": received,
        "stray": stray,
        "pps": round(received / elapsed) if elapsed else 0,
    }


def _latency(s: socket.socket, pad: bytes, seconds: float) -> list[float]:
    rtts = []
    s.settimeout(0.5)
    end = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < end:
        seq += 1
        t0 = time.perf_counter()
        s.send(_SEQ.pack(seq) + pad)
        try:
            while _SEQ.unpack_from(s.recv(65535))[0] != seq:
                pass  # a late answer to an earlier probe: skip it
        except TimeoutError:
            continue  # lost; not a sample
        rtts.append(time.perf_counter() - t0)
    return rtts


def _throughput(s: socket.socket, pad: bytes, seconds: float,
                window: int) -> tuple[int, int, float, int]:
    s.setblocking(False)
    inflight = sent = received = stray = 0
    seq = 1 << 40  # disjoint from the latency phase's numbers
    start = time.monotonic()
    end = start + seconds
    poller = select.poll()
    poller.register(s, select.POLLIN)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        while inflight < window:
            seq += 1
            try:
                s.send(_SEQ.pack(seq) + pad)
            except BlockingIOError:
                break
            sent += 1
            inflight += 1
        if not poller.poll(50):
            inflight = 0  # the whole window was lost: start a new one
            continue
        while True:
            try:
                data = s.recv(65535)
            except BlockingIOError:
                break
            if len(data) >= _SEQ.size and _SEQ.unpack_from(data)[0] > 1 << 40:
                received += 1
                inflight = max(0, inflight - 1)
            else:
                stray += 1
    return sent, received, time.monotonic() - start, stray
