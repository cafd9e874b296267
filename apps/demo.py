"""`vtl demo`: packets flowing through the Cython AF_XDP port between two testbed hosts.

Builds a `pair` testbed (two network namespaces on one veth link), runs `vtl echo` on the
server host's interface (AF_XDP, the network thread answers), and measures it with a plain
Linux UDP client on the client host: round-trip latency with one datagram in flight, and
packets/s with a window in flight. Then the same client against the kernel's own UDP path
on the same link (a C echo on a kernel socket, recvmmsg/sendmmsg), side by side.

Then TCP: a Linux client (a kernel socket) sends --tcp-bytes into `vtl sink` on the stack,
with live progress, and then into the same consume loop on a kernel socket. Both sinks
hash what they receive; the hash must equal the one the client computed over what it sent.
Everything is torn down at the end, also on Ctrl-C.
"""

import argparse
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from vtlstack.apps._common import emit, pinned, vtl_argv
from vtlstack.apps.bench import build_reference, wait_ready

from vtlstack.errors import VtlError, require_root

PORT = 7777
TCP_PORT = 7778
READY_TIMEOUT = 30.0    # a sink attaching XDP takes well under a second; 30 s means it is stuck
TRANSFER_TIMEOUT = 30.0  # per path: the demo must end, even on a stack that stalls
EXIT_TIMEOUT = 10.0     # a sink's way out after its one connection (stats, XDP detach)
SEND_BLOCK = 1 << 20
PROGRESS_EVERY = 0.2



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a testbed and show packets through the stack",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    p.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    p.add_argument("--window", type=int, default=32, help="datagrams in flight")
    p.add_argument("--tcp-bytes", type=int, default=200_000_000,
                   help="bytes of the TCP transfer into each sink, which must end within "
                        f"{TRANSFER_TIMEOUT:g} s (0: skip the TCP phase)")
    p.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    p.set_defaults(func=run)


def _measure(tb, path: str, args: argparse.Namespace) -> dict:
    server = tb.host("server")
    if path == "kernel":
        argv = [str(build_reference()), "kecho", "-p", str(PORT), "-t", "600"]
    else:
        argv = vtl_argv("echo", "--iface", server.iface.name, "--port", str(PORT))
    echo = tb.popen("server", pinned(1, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
    try:
        wait_ready(echo)
        out = tb.exec("client", pinned(0, vtl_argv("udpload", "--to", f"{server.iface.ip}:{PORT}",
                                                    "--seconds", str(args.seconds), "--size",
                                                    str(args.size), "--window",
                                                    str(args.window))),
                      capture_output=True, text=True)
        if out.returncode:
            raise VtlError(f"the UDP client against the {path} echo failed: "
                           f"{_last_line(out.stderr)}")
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
    if args.tcp_bytes < 0:
        raise VtlError("--tcp-bytes must be 0 (no TCP phase) or more")
    from vtlstack.testbed import Testbed

    print("vtl demo: building a pair testbed (client <-> server, one veth link) ...",
          file=sys.stderr)
    with Testbed.up(topology="pair") as tb:
        server = tb.host("server")
        print(f"vtl demo: server {server.iface.ip} on {server.iface.name} in {server.netns}; "
              f"measuring {args.seconds:g} s per phase", file=sys.stderr)
        results: dict[str, Any] = {path: _measure(tb, path, args)
                                   for path in ("stack", "kernel")}
        if args.tcp_bytes:
            print(f"vtl demo: TCP, {args.tcp_bytes / 1e6:g} MB from a Linux client into "
                  "`vtl sink` on the stack, then into the same loop on a kernel socket",
                  file=sys.stderr)
            results["tcp"] = _tcp_phase(tb, args.tcp_bytes)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        _table(results, args)
    tcp = results.get("tcp")
    if tcp and not tcp["sha256_equal"]:
        for path in ("stack", "kernel"):
            row = tcp[path]
            if not row["sha256_equal"]:
                print(f"vtl demo: error: the {path} sink received {row['sink_bytes']} bytes "
                      f"(sha256 {row['sink_sha256'][:16]}...), the client sent {row['bytes']} "
                      f"(sha256 {row['sha256'][:16]}...)", file=sys.stderr)
        return 1
    return 0


# ---- TCP: a Linux client into `vtl sink` and into its kernel twin ---------------------------

def _tcp_phase(tb: Any, nbytes: int) -> dict[str, Any]:
    rows = {path: _tcp_transfer(tb, path, nbytes) for path in ("stack", "kernel")}
    st, k = rows["stack"]["mbit_per_s"], rows["kernel"]["mbit_per_s"]
    return {
        "bytes": nbytes,
        "what": "Linux client (Python, kernel socket) on core 0 into a sink that hashes the "
                "stream on core 1; Mbit/s as the client sees it, connect to the sink's FIN",
        "stack": rows["stack"], "kernel": rows["kernel"],
        "stack_vs_kernel": round(st / k, 3) if st and k else None,
        "sha256_equal": all(r["sha256_equal"] for r in rows.values()),
    }


def _tcp_transfer(tb: Any, path: str, nbytes: int) -> dict[str, Any]:
    """Start the sink, send nbytes into it from the client host, check what it got."""
    server = tb.host("server").iface
    command = ["sink"] if path == "stack" else ["bench", "tcp-kernel-sink"]
    # --duration: should the demo die without its finally, the sink still ends on its own.
    limit = READY_TIMEOUT + TRANSFER_TIMEOUT + EXIT_TIMEOUT
    sink_name = "the stack's `vtl sink`" if path == "stack" else "the kernel sink"
    sink = _Child(tb.popen("server", pinned(1, vtl_argv(
        *command, "--iface", server.name, "--port", str(TCP_PORT), "--count", "1",
        "--duration", str(limit))), stdout=subprocess.PIPE, stderr=subprocess.PIPE), sink_name)
    sender_name = f"the Linux client sending to the {path} sink"
    sender = None
    progress = _Progress(f"{path:<6}", nbytes)
    try:
        sink.wait_for("ready", READY_TIMEOUT, "become ready")
        sender = _Child(tb.popen("client", pinned(0, [
            sys.executable, "-P", "-m", "vtlstack.apps.demo", "send",
            f"{server.ip}:{TCP_PORT}", str(nbytes)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE), sender_name)
        done = None
        for event in sender.events(TRANSFER_TIMEOUT, f"send {nbytes / 1e6:g} MB"):
            if event.get("event") == "progress":
                progress.update(event["bytes"], event["seconds"])
            elif event.get("event") == "done":
                done = event
        if sender.wait() or done is None:
            raise VtlError(f"{sender.name} failed: {sender.error()}")
        progress.update(done["bytes"], done["seconds"], mbit=done["mbit_per_s"], final=True)
        got = {e["event"]: e for e in sink.events(EXIT_TIMEOUT, "exit after its connection")}
        if sink.wait() or "connection" not in got:
            raise VtlError(f"{sink.name} failed: {sink.error()}")
    finally:
        progress.close()
        for child in (sender, sink):
            if child is not None:
                child.kill()
    conn = got["connection"]
    row = {"bytes": done["bytes"], "sha256": done["sha256"], "seconds": done["seconds"],
           "mbit_per_s": done["mbit_per_s"], "sink_bytes": conn["bytes"],
           "sink_sha256": conn["sha256"], "sink_mbit_per_s": conn["mbit_per_s"],
           "sha256_equal": conn["sha256"] == done["sha256"] and conn["bytes"] == done["bytes"]}
    if path == "stack":
        row["server"] = {k: v for k, v in got.get("stats", {}).items() if k != "event"}
    return row


def _last_line(text: str | bytes) -> str:
    """The last non-empty line (of a traceback: the exception), for one-line errors."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(nothing on stderr)"


class _Child:
    """A child's stdout as JSON events, read with select() up to a deadline (never a blocking
    read that could outlast it); its stderr is kept for the error message."""

    def __init__(self, proc: subprocess.Popen, name: str) -> None:
        self.proc, self.name = proc, name
        self._out_fd, self._err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        self._open = {self._out_fd, self._err_fd}
        self._out, self._err = b"", b""

    def events(self, timeout: float, doing: str) -> Iterator[dict[str, Any]]:
        """Each JSON line of stdout as it comes, until the child closes both streams."""
        deadline = time.monotonic() + timeout
        while True:
            # Lines already read come first: a caller may have stopped after an earlier one.
            while b"\n" in self._out:
                line, self._out = self._out.split(b"\n", 1)
                if line.startswith(b"{"):
                    yield json.loads(line)
            if not self._open:
                return
            left = deadline - time.monotonic()
            readable = select.select(list(self._open), [], [], left)[0] if left > 0 else []
            if not readable:
                raise VtlError(f"{self.name} did not {doing} within {timeout:g} s")
            for fd in readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._open.discard(fd)
                elif fd == self._out_fd:
                    self._out += chunk
                else:
                    self._err = (self._err + chunk)[-4096:]

    def wait_for(self, event: str, timeout: float, doing: str) -> dict[str, Any]:
        for found in self.events(timeout, doing):
            if found.get("event") == event:
                return found
        raise VtlError(f"{self.name} exited before it could {doing} "
                       f"(exit {self.wait()}): {self.error()}")

    def wait(self) -> int:
        """Its exit code, once its streams are closed (so it is on its way out)."""
        try:
            return self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise VtlError(f"{self.name} closed its output but did not exit") from None

    def error(self) -> str:
        return _last_line(self._err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass  # the testbed's down() tries again, and removes the namespace
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


class _Progress:
    """One updating line on a terminal; on a pipe or file, a plain line about once a second."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.tty = sys.stderr.isatty()
        self.shown_at: float | None = None
        self.open_line = False

    def update(self, sent: int, seconds: float, mbit: float | None = None,
               final: bool = False) -> None:
        if mbit is None:
            mbit = sent * 8 / seconds / 1e6 if seconds > 0 else 0.0
        text = (f"vtl demo: TCP into {self.label} {sent / 1e6:8.1f} of {self.total / 1e6:g} MB"
                f"  {mbit:8.1f} Mbit/s{'  done' if final else ''}")
        if self.tty:
            sys.stderr.write(f"\r{text}\033[K")
            self.open_line = True
        elif final or self.shown_at is None or seconds - self.shown_at >= 1.0:
            sys.stderr.write(text + "\n")
            self.shown_at = seconds
        sys.stderr.flush()

    def close(self) -> None:
        """End the terminal line (also when the transfer failed half-way)."""
        if self.open_line:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open_line = False


# ---- the client, run as `python -m vtlstack.apps.demo send IP:PORT BYTES` -------------------

def send(target: str, nbytes: int, stall: float = 10.0) -> dict[str, Any]:
    """Send nbytes on a kernel TCP socket, hashing them; progress lines on the way.

    Blocks carry their offset in their first bytes, so every block differs and a sink that
    dropped, repeated or swapped one would report another hash. Timed like `tcp_peer send`:
    from connect to the sink's FIN (it has read everything).
    """
    host, _, port = target.rpartition(":")
    block = bytearray(os.urandom(SEND_BLOCK))
    digest = hashlib.sha256()
    sent = 0
    with socket.create_connection((host, int(port)), timeout=stall) as sock:
        start = shown = time.monotonic()
        while sent < nbytes:
            block[:8] = sent.to_bytes(8, "big")
            piece = memoryview(block)[:min(SEND_BLOCK, nbytes - sent)]
            try:
                sock.sendall(piece)
            except TimeoutError:
                raise TimeoutError(f"the sink took nothing for {stall:g} s, after "
                                   f"{sent:,} bytes") from None
            digest.update(piece)
            sent += len(piece)
            now = time.monotonic()
            if now - shown >= PROGRESS_EVERY:
                emit({"event": "progress", "bytes": sent, "seconds": round(now - start, 4)})
                shown = now
        sock.shutdown(socket.SHUT_WR)
        back = 0
        while chunk := sock.recv(1 << 16):
            back += len(chunk)
        seconds = time.monotonic() - start
    return {"event": "done", "bytes": sent, "sha256": digest.hexdigest(),
            "seconds": round(seconds, 4), "mbit_per_s": round(sent * 8 / seconds / 1e6, 1),
            "unexpected_bytes_back": back}


def _send_main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "send":
        print("usage: python -m vtlstack.apps.demo send IP:PORT BYTES", file=sys.stderr)
        return 2
    try:
        emit(send(argv[1], int(argv[2])))
    except OSError as exc:  # one line for the demo's error message, not a traceback
        print(f"sending to {argv[1]}: {exc}", file=sys.stderr)
        return 1
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
    if "tcp" in results:
        _tcp_table(results["tcp"])


def _tcp_table(tcp: dict[str, Any]) -> None:
    stack, kernel = tcp["stack"], tcp["kernel"]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    print(f"\nTCP, {tcp['bytes'] / 1e6:g} MB from a Linux client (kernel socket) into a sink "
          "that hashes the stream (sink on core 1, client on core 0)\n")
    print(f"{'':34}{'vtlstack (AF_XDP)':>20}{'kernel TCP':>14}{'ratio':>8}")
    print(f"{'':34}{'vtl sink':>20}{'same loop':>14}")
    for label, key in (("TCP into sink, Mbit/s", "mbit_per_s"),
                       ("  as the sink saw it, Mbit/s", "sink_mbit_per_s")):
        a, b = stack.get(key), kernel.get(key)
        print(f"{label:34}{a!s:>20}{b!s:>14}{ratio(a, b):>8}")
    print(f"{'bytes received':34}{stack['sink_bytes']:>20}{kernel['sink_bytes']:>14}")
    equal = ["yes" if row["sha256_equal"] else "NO" for row in (stack, kernel)]
    print(f"{'sha256 equal (sent = received)':34}{equal[0]:>20}{equal[1]:>14}")
    port = stack.get("server", {}).get("port", {})
    if port:
        back = port.get("held") == 0 and port.get("in_tx") == 0
        print(f"\nstack sink at exit: every frame back in the pool: {'yes' if back else 'NO'} "
              f"(held {port.get('held')}, in TX {port.get('in_tx')})")


if __name__ == "__main__":
    sys.exit(_send_main(sys.argv[1:]))
