"""`vtl echo`: a UDP echo service in the stack, answering plain Linux clients.

By default the network thread answers each datagram in place (the frame is turned around
and re-sent: no copy, no application round trip). `--app` answers from the application
thread through the handoff channels and the socket API instead; `--kernel` runs the same
service on a kernel UDP socket, for comparison.
"""

import argparse
import socket

from vtlstack.apps._common import RunUntil, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("echo", help="UDP echo service on an interface (AF_XDP)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", required=True, help="interface to attach to (in this netns)")
    p.add_argument("--port", type=int, default=7, help="UDP port to answer (default 7)")
    p.add_argument("--mode", choices=("auto", "skb", "drv"), default="auto",
                   help="XDP attach mode (veth supports skb and drv, copy mode)")
    p.add_argument("--batch", type=int, default=64, help="RX/TX batch size (default 64)")
    p.add_argument("--busy-poll-us", type=int, default=0,
                   help="microseconds the idle network thread polls before sleeping "
                        "(default 0: sleep in poll() at once)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--app", action="store_true",
                     help="echo from the application thread via the socket API")
    how.add_argument("--kernel", action="store_true",
                     help="echo on a kernel UDP socket instead (the comparison)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kernel:
        return _kernel_echo(args)
    from vtlstack.stack import Stack

    stack = Stack(args.iface, mode=args.mode, batch=args.batch, busy_poll_us=args.busy_poll_us)
    with stack:
        if args.app:
            sock = stack.udp_socket(args.port)
            emit({"event": "ready", "iface": args.iface, "ip": stack.ip, "port": args.port,
                  "path": "app"})
            with RunUntil(args.duration) as running:
                while running:
                    try:
                        data, peer = sock.recvfrom(timeout=0.2)
                    except TimeoutError:
                        continue
                    sock.sendto(data, peer)
        else:
            stack.echo(args.port)
            emit({"event": "ready", "iface": args.iface, "ip": stack.ip, "port": args.port,
                  "path": "stack"})
            with RunUntil(args.duration) as running:
                running.wait()
    # After close(): every frame is back (close() raises otherwise), counters are final.
    emit({"event": "stats", **stack.final_stats})
    return 0


def _kernel_echo(args: argparse.Namespace) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
        s.bind(("0.0.0.0", args.port))
        s.settimeout(0.2)
        emit({"event": "ready", "iface": args.iface, "port": args.port, "path": "kernel"})
        echoed = 0
        with RunUntil(args.duration) as running:
            while running:
                try:
                    data, peer = s.recvfrom(65535)
                except TimeoutError:
                    continue
                s.sendto(data, peer)
                echoed += 1
        emit({"event": "stats", "echoed": echoed})
    return 0
