"""`vtl demo`: packets flowing through the Cython AF_XDP port between two testbed hosts.

Builds a `pair` testbed (two network namespaces on one veth link), runs `vtl echo` on the
server host's interface (AF_XDP, the network thread answers), and measures it with a plain
Linux UDP client on the client host: round-trip latency with one datagram in flight, and
packets/s with a window in flight. Then the same client against the kernel's own UDP path
on the same link (a C echo on a kernel socket, recvmmsg/sendmmsg), side by side.
Everything is torn down at the end, also on Ctrl-C.
"""

import argparse
import json
import os
import subprocess
import sys

from vtlstack.apps._common import vtl_argv
from vtlstack.apps.bench import build_reference, wait_ready

from vtlstack.errors import require_root

PORT = 7777


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    """Pin to one core. Where a process lands moves its round trip by ~4x on a small VM
    (a wakeup across cores costs tens of microseconds), so both paths are pinned alike:
    services on one core, the client on another."""
    return ["taskset", "-c", str(cpu), *argv] if (os.cpu_count() or 1) >= 2 else argv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a testbed and show packets through the stack",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    p.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    p.add_argument("--window", type=int, default=32, help="datagrams in flight")
    p.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    p.set_defaults(func=run)


def _measure(tb, path: str, args: argparse.Namespace) -> dict:
    server = tb.host("server")
    if path == "kernel":
        argv = [str(build_reference()), "kecho", "-p", str(PORT), "-t", "600"]
    else:
        argv = vtl_argv("echo", "--iface", server.iface.name, "--port", str(PORT))
    echo = tb.popen("server", _pinned(1, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
    try:
        wait_ready(echo)
        out = tb.exec("client", _pinned(0, vtl_argv("udpload", "--to", f"{server.iface.ip}:{PORT}",
                                                    "--seconds", str(args.seconds), "--size",
                                                    str(args.size), "--window",
                                                    str(args.window))),
                      capture_output=True, text=True, check=True)
        result = json.loads(out.stdout)
    finally:
        echo.terminate()
        stats_out, _ = echo.communicate(timeout=20)
    for line in stats_out.splitlines():
        event = json.loads(line)
        if event.get("event") == "stats":
            result["server"] = {k: v for k, v in event.items() if k != "event"}
        elif path == "kernel":
            result["server"] = event
    return result


def run(args: argparse.Namespace) -> int:
    require_root("vtl demo")
    from vtlstack.testbed import Testbed

    print("vtl demo: building a pair testbed (client <-> server, one veth link) ...",
          file=sys.stderr)
    with Testbed.up(topology="pair") as tb:
        server = tb.host("server")
        print(f"vtl demo: server {server.iface.ip} on {server.iface.name} in {server.netns}; "
              f"measuring {args.seconds:g} s per phase", file=sys.stderr)
        results = {path: _measure(tb, path, args) for path in ("stack", "kernel")}
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return 0
    _table(results, args)
    return 0


def _table(results: dict, args: argparse.Namespace) -> None:
    stack, kernel = results["stack"], results["kernel"]
    rows = [
        ("round trip p50 (us)", "rtt_p50_us"),
        ("round trip p99 (us)", "rtt_p99_us"),
        (f"echo packets/s ({args.window} in flight)", "pps"),
        ("datagrams answered", "received"),
    ]
    print(f"\nUDP echo, {args.size}-byte payloads, Linux client in another namespace "
          "(services on core 1, client on core 0)\n")
    print(f"{'':34}{'vtlstack (AF_XDP)':>20}{'kernel UDP':>14}{'ratio':>8}")
    print(f"{'':34}{'network thread':>20}{'C, recvmmsg':>14}")
    for label, key in rows:
        a, b = stack.get(key), kernel.get(key)
        ratio = f"{a / b:.2f}" if a and b else "-"
        print(f"{label:34}{a!s:>20}{b!s:>14}{ratio:>8}")
    net = stack.get("server", {}).get("net", {})
    port = stack.get("server", {}).get("port", {})
    if net:
        print(f"\nnetwork thread: rx {net.get('rx_packets')} tx {net.get('tx_packets')} "
              f"echoed {net.get('echoed')} malformed {net.get('malformed')} "
              f"sleeps in poll() {net.get('polls')}")
    if port:
        print(f"frame pool at exit: {json.dumps(port, sort_keys=True)}")
