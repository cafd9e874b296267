"""Entry point of the testbed's delay/reorder forwarder: ``python -m vtlstack.wire``.

Run by vtlstack.testbed inside a wire namespace; it prints ``ready`` once both sockets are
bound, then forwards until it is killed or an interface goes away.
"""

import argparse
import mmap
import os
import socket
import sys

import numpy as np

from vtlstack._wire import COUNTERS, run

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING = 15, 23  # linux/if_packet.h
VNET_HDR_LEN = 10  # struct virtio_net_hdr
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # root may exceed net.core.*mem_max


def _socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # Our own transmissions on an interface would otherwise come back as receptions.
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    # Each frame comes with a virtio_net_hdr that is sent back out with it: a frame whose
    # checksum is still to be filled in (hosts with offloads on) keeps that information,
    # without which the peer would receive it with a bad checksum.
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    # Room for a delay's worth of bursts: drops belong in our rings, where they are counted.
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 16 << 20)
    sock.bind((ifname, ETH_P_ALL))
    return sock


def counters_view(path: str, create: bool = False) -> np.ndarray:
    """The forwarder's counters (2 directions x COUNTERS, uint64) mapped from a file."""
    return _view(path, 2 * len(COUNTERS), create)


def control_view(path: str, create: bool = False) -> np.ndarray:
    """The forwarder's control slots mapped from a file: [0] the delay in ns (both ways),
    which the forwarder reads as frames arrive, so writing it changes the delay live."""
    return _view(path, 1, create)


def _view(path: str, slots: int, create: bool) -> np.ndarray:
    size = slots * 8
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    try:
        if create:
            os.ftruncate(fd, size)
        return np.frombuffer(mmap.mmap(fd, size), dtype=np.uint64)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vtlstack.wire")
    p.add_argument("--a", required=True, help="first wire interface")
    p.add_argument("--b", required=True, help="second wire interface")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--reorder-pct", type=float, default=0.0)
    p.add_argument("--reorder-extra-ms", type=float, default=2.0)
    p.add_argument("--frame-size", type=int, default=1518, help="largest frame, bytes")
    p.add_argument("--queue-frames", type=int, default=4096)
    p.add_argument("--stats", required=True, help="counters file (created)")
    p.add_argument("--control", help="control file (created): the delay, changeable live")
    args = p.parse_args(argv)
    counters = counters_view(args.stats, create=True)
    control = control_view(args.control, create=True) if args.control else None
    sa, sb = _socket(args.a), _socket(args.b)
    print("ready", flush=True)
    try:
        run(sa.fileno(), sb.fileno(), args.delay_ms, args.reorder_pct, args.reorder_extra_ms,
            args.frame_size + VNET_HDR_LEN, args.queue_frames, counters, control=control,
            skip_bytes=VNET_HDR_LEN)
    except OSError as exc:
        print(f"vtlstack.wire: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
