"""`vtl bench tcp`: the stack's TCP against kernel TCP, between the same two namespaces.

One run builds a pair testbed (veth, MTU 1500, offloads off) and measures, the stack and
the kernel in turn for each figure (adjacent, so both see the same noise):

- bulk RX: a C sender in the client namespace writes 1 MB buffers for S seconds into
  `vtl sink` on the stack, then into a kernel receiver running sink's own consume loop
  (`vtl bench tcp-kernel-sink`). Throughput as the sender sees it: connect to the server's FIN.
- bulk TX: `vtl source` on the stack, then a kernel sender running source's loop
  (`vtl bench tcp-kernel-source`), into the same C receiver in the client namespace. The
  byte count is sized from a short probe so that each run lasts about S seconds.
- connections/s: a C client connects, sends 64 bytes, reads them back and closes, for S
  seconds, against `vtl echo --tcp` on the stack and `vtl echo --tcp --kernel` (the same
  Python serving loop on kernel sockets).
- request/response latency: one connection, 64-byte ping-pong, p50/p99 over N round trips,
  against the same two echo servers.

Servers run on core 1 and clients on core 0, for both transports. iperf3 from kernel to
kernel gives the ceiling: offloads off on the same testbed, and offloads on (GSO/GRO, checksum
offload) on a second one. Every figure is printed with its ratio against the kernel and the
target; the numbers move from run to run, so read the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vtlstack.apps._common import RunUntil, emit, pinned, vtl_argv
from vtlstack.apps.echo import KernelConn, KernelListener

from vtlstack.errors import VtlError, require_root

SINK_PORT, ECHO_PORT, RECV_PORT, IPERF_PORT = 5101, 5102, 5103, 5104
SERVER_CPU, CLIENT_CPU = 1, 0
REQUEST_BYTES = 64
PROBE_BYTES = 4 << 20           # the first TX run of each sender, to size the measured ones
TARGET_BULK_MIN = 1.0           # bulk throughput, stack / kernel (offloads off)
TARGET_CONNS_MIN = 1.5          # connections per second, stack / kernel
TARGET_P99_MAX = 1.2            # p99 round trip, stack / kernel (lower is better)
BUSY_CPU_PCT = 90.0             # a process above this share of its core was the limit


def register(which: argparse._SubParsersAction) -> None:
    """Add `tcp` and its hidden helpers to `vtl bench`."""
    p = which.add_parser("tcp", help="the stack's TCP vs kernel TCP: bulk, connections/s, "
                                     "latency",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each bulk and connections/s run (default 3, --quick 0.5)")
    p.add_argument("--rounds", type=int, default=None,
                   help="round trips of the latency run (default 20000, --quick 2000)")
    p.add_argument("--repeat", type=int, default=1, help="runs per figure; medians reported")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds in all: checks the harness, not the speed")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the scheduler place servers and clients (default: servers on "
                        "core 1, clients on core 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_tcp)

    # The kernel twins of `vtl sink` and `vtl source` (run inside the testbed's namespaces).
    ks = which.add_parser("tcp-kernel-sink")
    ks.add_argument("--iface", required=True)
    ks.add_argument("--port", type=int, required=True)
    ks.add_argument("--count", type=int, default=None)
    ks.add_argument("--duration", type=float, default=None)
    ks.set_defaults(func=run_kernel_sink)
    kt = which.add_parser("tcp-kernel-source")
    kt.add_argument("--connect", required=True, metavar="IP:PORT")
    kt.add_argument("--bytes", type=int, required=True)
    kt.add_argument("--seed", type=int, default=0)
    kt.add_argument("--timeout", type=float, default=30.0)
    kt.set_defaults(func=run_kernel_source)


# ---- the kernel twins of sink and source -------------------------------------------------

def run_kernel_sink(args: argparse.Namespace) -> int:
    """`vtl sink` on kernel sockets: sink's own serving loop over kernel connections."""
    from vtlstack.apps.sink import KernelEvents, serve

    with KernelListener(args.port, args.iface) as listener, \
            RunUntil(args.duration) as running:
        emit({"event": "ready", "iface": args.iface, "port": args.port, "path": "kernel"})
        served = serve(listener, running, args.count, KernelEvents(listener))
    emit({"event": "stats", **served})
    return 0


def run_kernel_source(args: argparse.Namespace) -> int:
    """`vtl source` on a kernel socket: the same stream, block size and loop."""
    from vtlstack.apps.source import produce

    host, _, port = args.connect.rpartition(":")
    with KernelConn(socket.create_connection((host, int(port)), timeout=args.timeout)) as conn:
        emit(produce(conn, args.bytes, args.seed, args.timeout))
    emit({"event": "stats"})
    return 0


# ---- plumbing ------------------------------------------------------------------------------

def build_peer() -> Path:
    """The C peer (bench/tcp_peer.c): Linux sender, receiver and request/response client."""
    from vtlstack.apps.bench import build_c  # not at the top: bench imports this module

    return build_c("tcp_peer")



def _wait_line(proc: subprocess.Popen, needle: str, timeout: float = 30.0) -> None:
    """Wait until the process prints a line containing `needle` (stdout or stderr).

    Reads the raw descriptors: a buffered readline could swallow the line into a buffer
    that select() no longer sees.
    """
    deadline = time.monotonic() + timeout
    fds = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
    want = needle.encode()
    while fds and time.monotonic() < deadline:
        readable, _, _ = select.select(list(fds), [], [], deadline - time.monotonic())
        for fd in readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                del fds[fd]
                continue
            fds[fd] += chunk
            if want in fds[fd]:
                return
    _reap(proc)
    seen = b" ".join(fds.values()).decode(errors="replace").strip()
    raise VtlError(f"{' '.join(map(str, proc.args[-6:]))} did not start: {seen[-500:]}")


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> tuple[str, str]:
    """SIGTERM (servers print their stats on the way out), SIGKILL if that is not enough."""
    proc.terminate()
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise VtlError(f"{proc.args[-1]} ignored SIGTERM") from None


def _reap(proc: subprocess.Popen) -> None:
    """In a finally: a process still running after an error is killed and waited for."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


def _events(out: str) -> dict[str, dict]:
    """The last JSON line of each event kind."""
    found: dict[str, dict] = {}
    for line in out.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            found[obj.get("event", "")] = obj
    return found


def _last_json(out: str) -> dict[str, Any]:
    """A peer's report: its last line, or the whole output (iperf3 -J spans many lines)."""
    text = out.strip()
    if not text:
        raise VtlError("a peer printed nothing")
    try:
        return json.loads(text.splitlines()[-1])
    except json.JSONDecodeError:
        return json.loads(text)


def _stat_cpu(path: str) -> float:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) so far: the whole process, and its main thread."""
    return _stat_cpu(f"/proc/{pid}/stat"), _stat_cpu(f"/proc/{pid}/task/{pid}/stat")


def _cpu_split(before: tuple[float, float], after: tuple[float, float],
               wall: float) -> dict[str, float]:
    """% of a core over `wall`: the whole process, its main (app) thread, the others (for
    the stack: the network thread)."""
    total, app = after[0] - before[0], after[1] - before[1]
    return {"server_cpu_pct": round(100 * total / wall, 1),
            "server_app_cpu_pct": round(100 * app / wall, 1),
            "server_net_cpu_pct": round(100 * (total - app) / wall, 1)}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _frames_back(stats: dict[str, Any]) -> bool:
    port = stats.get("port", {})
    return port.get("held") == 0 and port.get("in_tx") == 0


class Runner:
    """Runs one measurement at a time on a testbed: servers in `server`, peers in `client`."""

    def __init__(self, tb: Any, peer: Path, pin: bool) -> None:
        self.tb, self.peer, self.pin = tb, str(peer), pin
        self.srv, self.cli = tb.host("server").iface, tb.host("client").iface

    def server(self, argv: list[str]) -> subprocess.Popen:
        proc = self.tb.popen("server", pinned(SERVER_CPU, on=self.pin, argv=argv),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_line(proc, "ready")
        except BaseException:
            _reap(proc)
            raise
        return proc

    def client(self, argv: list[str], timeout: float) -> tuple[dict[str, Any], float]:
        """Run a peer in the client namespace; its JSON line and its wall time."""
        start = time.monotonic()
        out = self.tb.exec("client", pinned(CLIENT_CPU, on=self.pin, argv=argv),
                           capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - start
        if out.returncode:
            raise VtlError(f"the client {Path(argv[0]).name} {argv[1]} failed: "
                           f"{out.stderr.strip()[-500:]}")
        return _last_json(out.stdout), wall

    # -- bulk ---------------------------------------------------------------------------

    def bulk_rx(self, path: str, seconds: float) -> dict[str, Any]:
        """The C sender for `seconds` into `vtl sink` (stack) or its kernel twin."""
        # No --count: the sink must outlive the sender, for its CPU to be read afterwards.
        command = ["sink"] if path == "stack" else ["bench", "tcp-kernel-sink"]
        argv = vtl_argv(*command, "--iface", self.srv.name, "--port", str(SINK_PORT))
        proc = self.server(argv)
        try:
            cpu0 = _threads_cpu(proc.pid)
            sent, wall = self.client([self.peer, "send", "-c", self.srv.ip, "-p",
                                      str(SINK_PORT), "-t", str(seconds)], seconds + 120)
            cpu = _cpu_split(cpu0, _threads_cpu(proc.pid), wall)
            out, err = _stop(proc)
        finally:
            _reap(proc)
        if proc.returncode:
            raise VtlError(f"{path} sink failed: {err.strip()[-500:]}")
        ev = _events(out)
        got = ev.get("connection", {}).get("bytes")
        if got != sent["bytes"]:
            raise VtlError(f"{path} sink received {got} bytes of {sent['bytes']} sent")
        return {"mbit_per_s": sent["mbit_per_s"],
                "receiver_mbit_per_s": ev["connection"]["mbit_per_s"],
                **cpu, "peer_cpu_pct": sent["cpu_pct"],
                "frames_back": _frames_back(ev["stats"]) if path == "stack" else None}

    def bulk_tx(self, path: str, nbytes: int) -> dict[str, Any]:
        """`vtl source` (stack) or its kernel twin sending nbytes into the C receiver."""
        target = f"{self.cli.ip}:{RECV_PORT}"
        argv = (vtl_argv("source", "--iface", self.srv.name, "--connect", target,
                         "--bytes", str(nbytes)) if path == "stack" else
                vtl_argv("bench", "tcp-kernel-source", "--connect", target,
                         "--bytes", str(nbytes)))
        recv = self.tb.popen("client", pinned(CLIENT_CPU, on=self.pin,
                                              argv=[self.peer, "recv", "-p", str(RECV_PORT)]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_line(recv, "ready")
            cpu0 = _children_cpu()  # the sender is the only child reaped meanwhile
            start = time.monotonic()
            out = self.tb.exec("server", pinned(SERVER_CPU, on=self.pin, argv=argv),
                               capture_output=True, text=True, timeout=600)
            wall = time.monotonic() - start
            cpu = _children_cpu() - cpu0
            if out.returncode:
                raise VtlError(f"{path} source failed: {out.stderr.strip()[-500:]}")
            rout, rerr = recv.communicate(timeout=30)
        finally:
            _reap(recv)
        if recv.returncode:
            raise VtlError(f"the C receiver failed: {rerr.strip()[-500:]}")
        got = _last_json(rout)
        if got["bytes"] != nbytes:
            raise VtlError(f"the C receiver got {got['bytes']} bytes of {nbytes} from {path}")
        ev = _events(out.stdout)
        return {"mbit_per_s": ev["connection"]["mbit_per_s"], "bytes": nbytes,
                "seconds": ev["connection"]["seconds"],
                "receiver_mbit_per_s": got["mbit_per_s"],
                "server_cpu_pct": round(100 * cpu / wall, 1), "peer_cpu_pct": got["cpu_pct"],
                "frames_back": _frames_back(ev["stats"]) if path == "stack" else None}

    # -- request/response ---------------------------------------------------------------

    def echo(self, path: str, seconds: float, rounds: int) -> dict[str, Any]:
        """Connections/s, then one connection's round trips, against one echo server."""
        argv = vtl_argv("echo", "--tcp", "--iface", self.srv.name, "--port", str(ECHO_PORT),
                        *(["--kernel"] if path == "kernel" else []))
        proc = self.server(argv)
        try:
            cpu0 = _threads_cpu(proc.pid)
            crr, wall = self.client([self.peer, "crr", "-c", self.srv.ip, "-p", str(ECHO_PORT),
                                     "-t", str(seconds), "-s", str(REQUEST_BYTES)],
                                    seconds + 120)
            cpu = _cpu_split(cpu0, _threads_cpu(proc.pid), wall)
            rr, _ = self.client([self.peer, "rr", "-c", self.srv.ip, "-p", str(ECHO_PORT),
                                 "-n", str(rounds), "-s", str(REQUEST_BYTES)], 120)
            out, err = _stop(proc)
        finally:
            _reap(proc)
        if proc.returncode:
            raise VtlError(f"{path} echo failed: {err.strip()[-500:]}")
        stats = _events(out).get("stats", {})
        if stats.get("errors"):
            raise VtlError(f"{path} echo: {stats['errors']} connections failed")
        return {"conns_per_s": crr["per_s"], "conn_p50_us": crr["conn_p50_us"],
                "conn_p99_us": crr["conn_p99_us"],
                **{f"conns_{k}": v for k, v in cpu.items()},
                "conns_peer_cpu_pct": crr["cpu_pct"],
                "rr_p50_us": rr["p50_us"], "rr_p99_us": rr["p99_us"], "rr_mean_us": rr["mean_us"],
                "frames_back": _frames_back(stats) if path == "stack" else None}

    # -- the ceiling --------------------------------------------------------------------

    def iperf3(self, seconds: float) -> float:
        """Kernel to kernel, one stream, client to server: Mbit/s received."""
        proc = self.tb.popen("server", pinned(SERVER_CPU, on=self.pin, argv=[
            "iperf3", "-s", "-1", "-p", str(IPERF_PORT), "--forceflush"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_line(proc, "Server listening")
            # iperf3 takes whole seconds
            out, _ = self.client(["iperf3", "-c", self.srv.ip, "-p", str(IPERF_PORT), "-J",
                                  "-t", str(max(1, round(seconds)))], seconds + 60)
            proc.communicate(timeout=30)  # -1: the server ends after one test
        finally:
            _reap(proc)
        return round(out["end"]["sum_received"]["bits_per_second"] / 1e6, 1)


def _client_tuning(tb: Any) -> None:
    # Thousands of short connections a second leave the client's ports in TIME-WAIT (it
    # closes first): let connect() reuse them, and give it the widest range.
    for key, value in (("net.ipv4.tcp_tw_reuse", "1"),
                       ("net.ipv4.ip_local_port_range", "1024 65000")):
        out = tb.exec("client", ["sysctl", "-q", "-w", f"{key}={value}"], capture_output=True,
                      text=True)
        if out.returncode:
            raise VtlError(f"sysctl {key} in the client namespace: {out.stderr.strip()}")


def own_cores(tb: Any, pin: bool) -> None:
    """Each host's receive processing on its own core, as if it were its own machine.
    A veth delivers in the sender's context: without this, the softirq work of every
    frame the server sends (its peer's TCP receive, ACK processing and the data that
    follows) is charged to the server's core, and the client's to the client's. RPS on
    each end's interface moves it to that host's core, for the stack and the kernel alike.
    (XDP runs before RPS, so the stack's steering and AF_XDP copy stay where they are.)"""
    if not pin or (os.cpu_count() or 1) < 2:
        return
    for host, cpu in (("server", SERVER_CPU), ("client", CLIENT_CPU)):
        path = f"/sys/class/net/{tb.host(host).iface.name}/queues/rx-0/rps_cpus"
        out = tb.exec(host, ["sh", "-c", f"echo {1 << cpu:x} > {path}"], capture_output=True,
                      text=True)
        if out.returncode:
            raise VtlError(f"RPS for the {host}: {out.stderr.strip()}")


# ---- the whole benchmark -----------------------------------------------------------------

def tcp_bench(seconds: float = 3.0, rounds: int = 20000, repeat: int = 1, pin: bool = True,
              quick: bool = False, progress: Callable[[str], None] | None = None
              ) -> dict[str, Any]:
    """Every figure for the stack and for the kernel in one run; ratios and targets."""
    require_root("vtl bench tcp")
    if shutil.which("iperf3") is None:
        raise VtlError("iperf3 is missing (the kernel ceiling): apt-get install iperf3")
    from vtlstack.testbed import Testbed

    say = progress or (lambda _msg: None)
    peer = build_peer()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        k: {"stack": [], "kernel": []} for k in ("bulk_rx", "bulk_tx", "echo")}
    iperf_off: list[float] = []
    iperf_on: list[float] = []
    # Quick runs send a fixed small amount; otherwise a probe sizes TX runs to ~seconds.
    tx_bytes = {"stack": PROBE_BYTES, "kernel": PROBE_BYTES}
    with Testbed.up(topology="pair", offloads=False) as tb:
        _client_tuning(tb)
        own_cores(tb, pin)
        r = Runner(tb, peer, pin)
        if not quick:
            for path in ("stack", "kernel"):
                probe = r.bulk_tx(path, PROBE_BYTES)
                tx_bytes[path] = max(PROBE_BYTES,
                                     int(probe["mbit_per_s"] * 1e6 / 8 * seconds))
                say(f"bulk TX probe {path:<6} {probe['mbit_per_s']:>9,.0f} Mbit/s: "
                    f"{tx_bytes[path]:,} bytes per run")
        for i in range(repeat):
            for path in ("stack", "kernel"):
                row = r.bulk_rx(path, seconds)
                runs["bulk_rx"][path].append(row)
                say(f"[{i + 1}/{repeat}] bulk RX {path:<6} {row['mbit_per_s']:>9,.0f} Mbit/s")
            for path in ("stack", "kernel"):
                row = r.bulk_tx(path, tx_bytes[path])
                runs["bulk_tx"][path].append(row)
                say(f"[{i + 1}/{repeat}] bulk TX {path:<6} {row['mbit_per_s']:>9,.0f} Mbit/s")
            for path in ("stack", "kernel"):
                row = r.echo(path, seconds, rounds)
                runs["echo"][path].append(row)
                say(f"[{i + 1}/{repeat}] echo    {path:<6} {row['conns_per_s']:>9,.0f} conn/s"
                    f"  rr p50 {row['rr_p50_us']:.1f} us  p99 {row['rr_p99_us']:.1f} us")
            iperf_off.append(r.iperf3(seconds))
            say(f"[{i + 1}/{repeat}] iperf3 offloads off {iperf_off[-1]:>9,.0f} Mbit/s")
    with Testbed.up(topology="pair", offloads=True) as tb:
        own_cores(tb, pin)
        r = Runner(tb, peer, pin)
        for i in range(repeat):
            iperf_on.append(r.iperf3(seconds))
            say(f"[{i + 1}/{repeat}] iperf3 offloads on  {iperf_on[-1]:>9,.0f} Mbit/s")
    return _summary(runs, iperf_off, iperf_on, seconds=seconds, rounds=rounds, repeat=repeat,
                    pin=pin, quick=quick, tx_bytes=tx_bytes)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _summary(runs: dict[str, dict[str, list[dict[str, Any]]]], iperf_off: list[float],
             iperf_on: list[float], **setup: Any) -> dict[str, Any]:
    def med(kind: str, path: str, key: str) -> float | None:
        vals = [row[key] for row in runs[kind][path] if row.get(key) is not None]
        return round(statistics.median(vals), 1) if vals else None

    result: dict[str, Any] = {"setup": {
        "testbed": "pair (veth, copy-mode AF_XDP, MTU 1500), offloads off; ceiling also "
                   "with offloads on",
        "servers_cpu": SERVER_CPU if setup["pin"] else None,
        "clients_cpu": CLIENT_CPU if setup["pin"] else None,
        "peer": "C (bench/tcp_peer.c), kernel sockets", "request_bytes": REQUEST_BYTES,
        **setup}}
    for kind, label in (("bulk_rx", "Linux C sender into the server"),
                        ("bulk_tx", "the server into a Linux C receiver")):
        st, k = med(kind, "stack", "mbit_per_s"), med(kind, "kernel", "mbit_per_s")
        result[kind] = {
            "what": label, "stack_mbit_per_s": st, "kernel_mbit_per_s": k,
            "stack_vs_kernel": _ratio(st, k), "target_min": TARGET_BULK_MIN,
            "stack_server_cpu_pct": med(kind, "stack", "server_cpu_pct"),
            "stack_app_cpu_pct": med(kind, "stack", "server_app_cpu_pct"),
            "stack_net_cpu_pct": med(kind, "stack", "server_net_cpu_pct"),
            "kernel_server_cpu_pct": med(kind, "kernel", "server_cpu_pct"),
            "stack_peer_cpu_pct": med(kind, "stack", "peer_cpu_pct"),
            "kernel_peer_cpu_pct": med(kind, "kernel", "peer_cpu_pct"),
        }
    st, k = med("echo", "stack", "conns_per_s"), med("echo", "kernel", "conns_per_s")
    result["connections"] = {
        "what": f"connect, {REQUEST_BYTES} B request, {REQUEST_BYTES} B reply, close; "
                "C client, Python echo server (the same loop for both)",
        "stack_per_s": st, "kernel_per_s": k, "stack_vs_kernel": _ratio(st, k),
        "target_min": TARGET_CONNS_MIN,
        "stack_conn_p50_us": med("echo", "stack", "conn_p50_us"),
        "kernel_conn_p50_us": med("echo", "kernel", "conn_p50_us"),
        "stack_server_cpu_pct": med("echo", "stack", "conns_server_cpu_pct"),
        "stack_app_cpu_pct": med("echo", "stack", "conns_server_app_cpu_pct"),
        "stack_net_cpu_pct": med("echo", "stack", "conns_server_net_cpu_pct"),
        "kernel_server_cpu_pct": med("echo", "kernel", "conns_server_cpu_pct"),
        "stack_peer_cpu_pct": med("echo", "stack", "conns_peer_cpu_pct"),
        "kernel_peer_cpu_pct": med("echo", "kernel", "conns_peer_cpu_pct"),
    }
    lat = {f"{path}_{q}_us": med("echo", path, f"rr_{q}_us")
           for path in ("stack", "kernel") for q in ("p50", "p99", "mean")}
    result["latency"] = {
        "what": f"one connection, {REQUEST_BYTES} B ping-pong, {setup['rounds']} round trips",
        **lat,
        "p50_stack_vs_kernel": _ratio(lat["stack_p50_us"], lat["kernel_p50_us"]),
        "p99_stack_vs_kernel": _ratio(lat["stack_p99_us"], lat["kernel_p99_us"]),
        "target_p99_max": TARGET_P99_MAX,
    }
    off = round(statistics.median(iperf_off), 1) if iperf_off else None
    on = round(statistics.median(iperf_on), 1) if iperf_on else None
    result["ceiling"] = {
        "what": "iperf3, kernel to kernel, one stream",
        "iperf3_offloads_off_mbit_per_s": off, "iperf3_offloads_on_mbit_per_s": on,
        "stack_rx_vs_offloads_on": _ratio(result["bulk_rx"]["stack_mbit_per_s"], on),
        "stack_tx_vs_offloads_on": _ratio(result["bulk_tx"]["stack_mbit_per_s"], on),
        "kernel_rx_vs_iperf3_off": _ratio(result["bulk_rx"]["kernel_mbit_per_s"], off),
    }
    for kind in ("bulk_rx", "bulk_tx", "connections"):
        ratio = result[kind]["stack_vs_kernel"]
        result[kind]["met"] = ratio is not None and ratio >= result[kind]["target_min"]
    p99 = result["latency"]["p99_stack_vs_kernel"]
    result["latency"]["met"] = p99 is not None and p99 <= TARGET_P99_MAX
    result["frames_back"] = all(row["frames_back"] for kind in runs
                                for row in runs[kind]["stack"])
    result["notes"] = _notes(result)
    result["targets"] = {
        "bulk_rx_min": TARGET_BULK_MIN, "bulk_tx_min": TARGET_BULK_MIN,
        "connections_min": TARGET_CONNS_MIN, "p99_max": TARGET_P99_MAX,
        "met": all(result[k]["met"] for k in ("bulk_rx", "bulk_tx", "connections",
                                             "latency")),
    }
    return result


def _notes(result: dict[str, Any]) -> list[str]:
    """Which process was the limit, from the CPU each used (pinned: a share of one core)."""
    notes = []
    if not result["setup"]["pin"]:
        notes.append("not pinned: a process may use more than one core, so CPU shares do "
                     "not show which one was the limit")
    for kind in ("bulk_rx", "bulk_tx", "connections"):
        if not result["setup"]["pin"]:
            break
        row = result[kind]
        for path in ("stack", "kernel"):
            for who in ("server", "peer"):
                pct = row.get(f"{path}_{who}_cpu_pct")
                if pct is not None and pct >= BUSY_CPU_PCT:
                    name = "the C peer" if who == "peer" else f"the {path} server process"
                    notes.append(f"{kind}, {path}: {name} used {pct:.0f} % of a core "
                                 "(likely the limit)")
    if not result["frames_back"]:
        notes.append("the stack did not have every frame back at exit (a leak)")
    return notes


# ---- output ---------------------------------------------------------------------------------

def run_tcp(args: argparse.Namespace) -> int:
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 3.0)
    rounds = args.rounds if args.rounds is not None else (2000 if args.quick else 20000)
    if seconds <= 0 or rounds <= 0 or args.repeat <= 0:
        raise VtlError("--seconds, --rounds and --repeat must be positive")
    result = tcp_bench(seconds, rounds, args.repeat, args.pin, args.quick,
                       progress=lambda msg: print(f"  {msg}", file=sys.stderr))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_tcp_table(result)
    return 0


def print_tcp_table(result: dict[str, Any]) -> None:
    """The figures as a table: stack, kernel, ratio, target."""
    def fmt(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    s = result["setup"]
    pinned = (f"servers on core {s['servers_cpu']}, clients on core {s['clients_cpu']}"
              if s["pin"] else "not pinned")
    print(f"\nvtl bench tcp: pair testbed, MTU 1500, offloads off; {pinned}; "
          f"{s['seconds']:g} s per run, median of {s['repeat']}")
    print(f"\n{'':34}{'vtlstack':>12}{'kernel':>12}{'ratio':>8}{'target':>9}{'met':>5}")
    bx, tx, c, lat = (result[k] for k in ("bulk_rx", "bulk_tx", "connections", "latency"))
    rows = [
        ("bulk RX, Mbit/s", bx["stack_mbit_per_s"], bx["kernel_mbit_per_s"],
         bx["stack_vs_kernel"], f">= {bx['target_min']}", bx["met"], 0),
        ("bulk TX, Mbit/s", tx["stack_mbit_per_s"], tx["kernel_mbit_per_s"],
         tx["stack_vs_kernel"], f">= {tx['target_min']}", tx["met"], 0),
        ("connections/s", c["stack_per_s"], c["kernel_per_s"], c["stack_vs_kernel"],
         f">= {c['target_min']}", c["met"], 0),
        ("request/response p50, us", lat["stack_p50_us"], lat["kernel_p50_us"],
         lat["p50_stack_vs_kernel"], "", None, 1),
        ("request/response p99, us", lat["stack_p99_us"], lat["kernel_p99_us"],
         lat["p99_stack_vs_kernel"], f"<= {lat['target_p99_max']}", lat["met"], 1),
    ]
    for label, st, k, ratio, target, met, digits in rows:
        shown = "" if met is None else ("yes" if met else "no")
        print(f"{label:34}{fmt(st, digits):>12}{fmt(k, digits):>12}{fmt(ratio, 3):>8}"
              f"{target:>9}{shown:>5}")
    ce = result["ceiling"]
    print(f"\nceiling, iperf3 kernel to kernel: {fmt(ce['iperf3_offloads_off_mbit_per_s'])} "
          f"Mbit/s offloads off, {fmt(ce['iperf3_offloads_on_mbit_per_s'])} Mbit/s offloads on;"
          f" stack RX {fmt(ce['stack_rx_vs_offloads_on'], 3)}x and TX "
          f"{fmt(ce['stack_tx_vs_offloads_on'], 3)}x of the offloads-on ceiling")
    print("\nCPU while measured, % of one core: server process (app thread + network "
          "thread) / C peer")
    for kind, label in (("bulk_rx", "bulk RX"), ("bulk_tx", "bulk TX"),
                        ("connections", "connections/s")):
        row = result[kind]
        split = (f" ({fmt(row['stack_app_cpu_pct'])} + {fmt(row['stack_net_cpu_pct'])})"
                 if row.get("stack_app_cpu_pct") is not None else "")
        print(f"  {label:16} stack {fmt(row['stack_server_cpu_pct']):>3}{split:<10} / "
              f"{fmt(row['stack_peer_cpu_pct']):>3}    kernel "
              f"{fmt(row['kernel_server_cpu_pct']):>3} / {fmt(row['kernel_peer_cpu_pct']):>3}")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\nframes all back in the stack's pool: {result['frames_back']}; "
          f"targets met: {result['targets']['met']}")
