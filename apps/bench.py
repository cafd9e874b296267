"""`vtl bench`: figures measured side by side with a peer or a limit, in the same run.

`vtl bench port` builds a pair testbed. The client host runs the C generator (AF_XDP TX at
full speed, counting the answers it gets back). The server host runs, in turn:

- the C reference program (bench/xsk_ref.c): the same rings, driven the same way;
- the Cython port's own loops (XskPort.rxdrop_loop / echo_loop);
- the whole stack: `vtl echo`, where the network thread validates each frame, answers it
  and sleeps when idle;
- kernel UDP sockets with recvmmsg/sendmmsg (xsk_ref kdrop / kecho).

Each one runs one-way RX drop and UDP echo, at 64 and 1400 bytes. Then the stack sits idle
for a while, to measure the CPU of its network thread. The numbers move from run to run,
so compare the ratios of a single run, not absolute figures across runs.

`vtl bench records` (apps/bench_records.py) sets CSV rows and HTTP/1.1 requests parsed in
the stack against Python's csv module and httptools on a kernel socket, and against the
stack's own TCP receive with no parser.

`vtl bench tcp` (apps/bench_tcp.py) sets the stack's TCP against kernel TCP: bulk both ways,
connections per second and request/response latency, with iperf3 as the ceiling.

`vtl bench proxy` (apps/bench_proxy.py) sets `vtl proxy` against HAProxy and against no
proxy on the middle host of a chain: requests/s with wrk and one large download with curl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vtlstack.apps._common import emit, vtl_argv

from vtlstack.errors import VtlError, require_root

PORT, SPORT = 9000, 9001
RECEIVERS = ("c-rxdrop", "cy-rxdrop", "kdrop", "c-echo", "cy-echo", "stack-echo", "kecho")
TARGET_CYTHON_VS_C = 0.9
TARGET_IDLE_CPU_PCT = 2.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks against a peer measured in the same run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_subparsers(dest="which", metavar="WHAT", required=True)
    port = which.add_parser("port", help="AF_XDP port: Cython vs C reference vs kernel UDP")
    port.add_argument("--seconds", type=float, default=3.0, help="generator time per run")
    port.add_argument("--sizes", default="64,1400", help="UDP payload sizes, comma-separated")
    port.add_argument("--batch", type=int, default=64, help="ring batch size, same for all")
    port.add_argument("--repeat", type=int, default=1, help="runs per cell; medians reported")
    port.add_argument("--idle-seconds", type=float, default=5.0,
                      help="how long the idle network thread is watched")
    port.add_argument("--no-pin", dest="pin", action="store_false",
                      help="let the scheduler place generator and receiver (default: pinned "
                           "to different cores)")
    port.add_argument("--json", action="store_true", help="print one JSON object")
    port.set_defaults(func=run_port)
    loop = which.add_parser("port-loop")  # the Cython side of a run, inside the server netns
    loop.add_argument("kind", choices=("rxdrop", "echo"))
    loop.add_argument("iface")
    loop.add_argument("seconds", type=float)
    loop.add_argument("batch", type=int)
    loop.set_defaults(func=run_port_loop)
    from vtlstack.apps import (  # bench_tcp imports this
        bench_proxy,
        bench_records,
        bench_tcp,
        vtlbench,
    )

    bench_tcp.register(which)
    vtlbench.register(which)
    bench_records.register(which)
    bench_proxy.register(which)


# ---- the C reference -------------------------------------------------------------------

def build_c(name: str, *, headers: tuple[Path, ...] = (), libs: tuple[str, ...] = ()) -> Path:
    """Compile bench/NAME.c (shipped as package data) once per source version, into the
    user's cache; the headers it includes count in the version."""
    from vtlstack._resources import data_dir

    source = data_dir("bench") / f"{name}.c"
    text = source.read_bytes() + b"".join(h.read_bytes() for h in headers)
    digest = hashlib.sha256(text).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vtlstack"
    exe = cache / f"{name}-{digest}"
    if exe.exists():
        return exe
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise VtlError(f"no C compiler to build {name}: apt-get install gcc")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(f".tmp{os.getpid()}")
    includes = [arg for h in headers for arg in ("-I", str(h.parent))]
    out = subprocess.run([cc, "-O2", "-Wall", *includes, str(source), "-o", str(tmp),
                          *libs], capture_output=True, text=True)
    if out.returncode:
        raise VtlError(f"building {name} failed: {out.stderr.strip()}")
    tmp.replace(exe)  # atomic: a concurrent run never sees a half-written binary
    return exe


def build_reference() -> Path:
    """The C reference (bench/xsk_ref.c): the same rings as the Cython port, in C."""
    from vtlstack._resources import bpf_path

    return build_c("xsk_ref", headers=(bpf_path("steer.h"),), libs=("-lxdp", "-lbpf"))


# ---- one receiver against the generator ------------------------------------------------

def run_port_loop(args: argparse.Namespace) -> int:
    """The Cython port's own loop (runs in the server namespace)."""
    from vtlstack._port import XskPort
    from vtlstack.xdp import Steering

    with Steering(args.iface) as steering:
        steering.own(17, PORT)
        with XskPort(args.iface, xsks_map_fd=steering.xsks_map_fd, batch=args.batch) as port:
            emit({"event": "ready"})
            cpu0 = _cpu_seconds()
            if args.kind == "rxdrop":
                port.rxdrop_loop(args.seconds)
            else:
                port.echo_loop(args.seconds)
            cpu = _cpu_seconds() - cpu0
            stats = port.stats()
            port.check_frames()
    emit({"event": "stats", "rx": stats["rx_packets"], "tx": stats["tx_packets"],
          "cpu_s": round(cpu, 4)})
    return 0


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def wait_ready(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """C programs say `ready` on stderr, vtl commands a JSON event on stdout."""
    deadline = time.monotonic() + timeout
    streams = [proc.stdout, proc.stderr]
    while streams and time.monotonic() < deadline:
        readable, _, _ = select.select(streams, [], [], deadline - time.monotonic())
        for stream in readable:
            line = stream.readline()
            if not line:
                streams.remove(stream)
            elif line.strip() == "ready" or '"ready"' in line:
                return
    proc.kill()
    out, err = proc.communicate(timeout=10)
    raise VtlError(f"the receiver did not start: {err.strip() or out.strip()}")


def _receiver_argv(receiver: str, exe: Path, steer: Path, iface: str, seconds: float,
                   batch: int) -> list[str]:
    kind = receiver.split("-", 1)[-1]
    if receiver.startswith("cy-"):
        return vtl_argv("bench", "port-loop", kind, iface, str(seconds), str(batch))
    if receiver == "stack-echo":
        return vtl_argv("echo", "--iface", iface, "--port", str(PORT), "--batch", str(batch),
                        "--duration", str(seconds))
    if receiver.startswith("c-"):
        return [str(exe), kind, "-i", iface, "-o", str(steer), "-p", str(PORT),
                "-t", str(seconds), "-b", str(batch)]
    return [str(exe), receiver, "-p", str(PORT), "-t", str(seconds), "-b", str(batch)]


def _receiver_counts(receiver: str, out: str) -> tuple[int, float | None]:
    """(packets received, receiver CPU seconds) from the receiver's last JSON line."""
    last = json.loads(out.strip().splitlines()[-1])
    if receiver == "stack-echo":
        return last["net"]["rx_packets"], last["net_cpu_seconds"]
    return last["rx"], last.get("cpu_s")


def one_run(tb: Any, exe: Path, steer: Path, receiver: str, size: int, seconds: float,
            batch: int, pin: bool) -> dict[str, Any]:
    srv, cli = tb.host("server").iface, tb.host("client").iface
    # Pinned, generator and receiver never share a core. The veth softirq work (XDP, the
    # copy into the receiver's UMEM) runs on the sender's core either way.
    gen_cpu, rx_cpu = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pin else ([], [])
    rx_seconds = seconds + 4  # the receiver outlives the generator's run
    proc = tb.popen("server", rx_cpu + _receiver_argv(receiver, exe, steer, srv.name,
                                                      rx_seconds, batch),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(proc)
        gen = tb.exec("client", [*gen_cpu, str(exe), "gen", "-i", cli.name, "-o", str(steer),
                                 "-m", srv.mac, "-D", srv.ip, "-s", cli.ip, "-p", str(PORT),
                                 "-P", str(SPORT), "-S", str(size), "-t", str(seconds),
                                 "-b", str(batch)],
                      capture_output=True, text=True, timeout=seconds + 30)
        if gen.returncode:
            raise VtlError(f"the generator failed: {gen.stderr.strip()}")
        g = json.loads(gen.stdout.strip().splitlines()[-1])
        out, err = proc.communicate(timeout=rx_seconds + 30)
        if proc.returncode:
            raise VtlError(f"{receiver} failed: {err.strip()}")
        rx, cpu = _receiver_counts(receiver, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return {
        "receiver": receiver, "size": size,
        "gen_tx_pps": round(g["tx_pps"]),
        "rx_pps": round(rx / g["tx_s"]),
        "echo_pps": round(g["rx"] / g["tx_s"]) if receiver.endswith("echo") else None,
        # The receiver's own CPU per packet: what driving the rings costs, whatever the
        # generator manages to send (the figure that separates two receivers that both
        # keep up with the generator).
        "rx_cpu_ns_per_pkt": round(cpu * 1e9 / rx) if rx and cpu is not None else None,
    }


def idle_cpu(tb: Any, seconds: float) -> float:
    """Percent of a core the stack's network thread uses while nothing arrives."""
    srv = tb.host("server").iface
    out = tb.exec("server", vtl_argv("echo", "--iface", srv.name, "--port", str(PORT),
                                     "--duration", str(seconds)),
                  capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode:
        raise VtlError(f"vtl echo failed: {out.stderr.strip()}")
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    return 100.0 * stats["net_cpu_seconds"] / seconds


# ---- the whole benchmark -----------------------------------------------------------------

def port_bench(seconds: float = 3.0, sizes: tuple[int, ...] = (64, 1400), batch: int = 64,
               repeat: int = 1, pin: bool = True, idle_seconds: float = 5.0,
               progress: Any = None) -> dict[str, Any]:
    """Run every receiver at every size; return figures, ratios and targets."""
    require_root("vtl bench port")
    from vtlstack._resources import bpf_path
    from vtlstack.testbed import Testbed

    exe, steer = build_reference(), bpf_path("steer")
    cells: dict[tuple[str, int], list[dict]] = {}
    with Testbed.up(topology="pair") as tb:
        for _ in range(repeat):
            for size in sizes:
                for receiver in RECEIVERS:
                    row = one_run(tb, exe, steer, receiver, size, seconds, batch, pin)
                    if progress:
                        progress(row)
                    cells.setdefault((receiver, size), []).append(row)
        idle = idle_cpu(tb, idle_seconds)

    def med(receiver: str, size: int, key: str) -> float | None:
        vals = [r[key] for r in cells[(receiver, size)] if r[key] is not None]
        return statistics.median(vals) if vals else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    result: dict[str, Any] = {
        "setup": {"testbed": "pair (veth, copy mode, MTU 1500, offloads off)",
                  "seconds": seconds, "batch": batch, "repeat": repeat, "pinned": pin},
        "rxdrop": {}, "echo": {},
    }
    worst = []
    for size in sizes:
        c, cy, k = (med(r, size, "rx_pps") for r in ("c-rxdrop", "cy-rxdrop", "kdrop"))
        c_ns, cy_ns = med("c-rxdrop", size, "rx_cpu_ns_per_pkt"), med(
            "cy-rxdrop", size, "rx_cpu_ns_per_pkt")
        result["rxdrop"][str(size)] = {
            "c_ref_pps": c, "cython_pps": cy, "kernel_pps": k,
            "cython_vs_c": ratio(cy, c), "cython_vs_kernel": ratio(cy, k),
            "c_ref_cpu_ns_per_pkt": c_ns, "cython_cpu_ns_per_pkt": cy_ns,
        }
        c, cy, st, k = (med(r, size, "echo_pps")
                        for r in ("c-echo", "cy-echo", "stack-echo", "kecho"))
        result["echo"][str(size)] = {
            "c_ref_pps": c, "cython_pps": cy, "stack_pps": st, "kernel_pps": k,
            "cython_vs_c": ratio(cy, c), "stack_vs_c": ratio(st, c),
            "cython_vs_kernel": ratio(cy, k), "stack_vs_kernel": ratio(st, k),
        }
        worst += [result["rxdrop"][str(size)]["cython_vs_c"], result["echo"][str(size)][
            "cython_vs_c"]]
    result["idle_cpu_pct"] = round(idle, 3)
    result["targets"] = {
        "cython_vs_c_min": TARGET_CYTHON_VS_C,
        "cython_vs_c_worst": min((w for w in worst if w is not None), default=None),
        "idle_cpu_pct_max": TARGET_IDLE_CPU_PCT,
    }
    result["targets"]["met"] = bool(
        result["targets"]["cython_vs_c_worst"] is not None
        and result["targets"]["cython_vs_c_worst"] >= TARGET_CYTHON_VS_C
        and idle < TARGET_IDLE_CPU_PCT)
    return result


def run_port(args: argparse.Namespace) -> int:
    sizes = tuple(int(s) for s in args.sizes.split(","))

    def progress(row: dict) -> None:
        print(f"  {row['receiver']:<11} {row['size']:>5} B  rx {row['rx_pps']:>10,} pps"
              + (f"  echoed {row['echo_pps']:>10,} pps" if row["echo_pps"] is not None else ""),
              file=sys.stderr)

    result = port_bench(args.seconds, sizes, args.batch, args.repeat, args.pin,
                        args.idle_seconds, progress)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_port_table(result)
    return 0


def print_port_table(result: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:,.0f}" if v > 10 else f"{v:.3f}")

    for mode, cols in (("rxdrop", ("c_ref_pps", "cython_pps", "kernel_pps", "cython_vs_c")),
                       ("echo", ("c_ref_pps", "cython_pps", "stack_pps", "kernel_pps",
                                 "cython_vs_c", "stack_vs_kernel"))):
        print(f"\n{mode}: " + "  ".join(f"{c:>16}" for c in cols))
        for size, row in result[mode].items():
            print(f"{size + ' B':>{len(mode) + 1}} " + "  ".join(f"{fmt(row[c]):>16}"
                                                                for c in cols))
    t = result["targets"]
    print(f"\nidle network thread: {result['idle_cpu_pct']:.2f} % of a core "
          f"(target < {t['idle_cpu_pct_max']} %)")
    print(f"Cython vs C reference, worst cell: {fmt(t['cython_vs_c_worst'])} "
          f"(target >= {t['cython_vs_c_min']}); targets met: {t['met']}")
