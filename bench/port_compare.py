"""Side-by-side packet rates on a pair testbed: C reference vs the Cython port vs the kernel.

    python bench/port_compare.py [--seconds 5] [--sizes 64,1400]

The client runs the C generator (xsk_ref gen: AF_XDP TX at full speed, counting replies);
the server runs, in turn, xsk_ref rxdrop/echo, XskPort.rxdrop_loop/echo_loop, and kernel
UDP sockets (xsk_ref kdrop/kecho). One JSON line per run, then a table. Receiver pps is
packets received divided by the generator's sending time (the same clock for everyone).
Needs root. Not part of pytest (bench/test_bench_port.py is the pytest-benchmark suite).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

PORT, SPORT = 9000, 9001


def loop_main(kind: str, ifname: str, seconds: float, batch: int) -> None:
    """Runs in the server namespace: the Cython port's own benchmark loop."""
    from vtlstack._port import XskPort
    from vtlstack.xdp import Steering

    with Steering(ifname) as st:
        st.own(17, PORT)
        with XskPort(ifname, xsks_map_fd=st.xsks_map_fd, batch=batch) as port:
            print("ready", file=sys.stderr, flush=True)
            cpu0 = _cpu_s()
            if kind == "rxdrop":
                n = port.rxdrop_loop(seconds)
            else:
                n = port.echo_loop(seconds)
            cpu = _cpu_s() - cpu0
            stats = port.stats()
            port.check_frames()
    print(json.dumps({"mode": f"cy-{kind}", "rx": stats["rx_packets"], "tx": stats["tx_packets"],
                      "loop_count": n, "app_dropped": stats["app_dropped"],
                      "k_rx_dropped": stats.get("k_rx_dropped"), "cpu_s": round(cpu, 3)}),
          flush=True)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def wait_ready(proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
        if not r:
            break
        line = proc.stderr.readline()
        if not line or line.strip() == "ready":
            if line:
                return
            break
    proc.kill()
    raise RuntimeError(f"receiver not ready: {proc.communicate(timeout=10)}")


def one_run(tb, exe: Path, obj: Path, receiver: str, size: int, seconds: float,
            batch: int, pin: bool) -> dict:
    srv, cli = tb.host("server").iface, tb.host("client").iface
    # Pinned, generator and receiver never share a core; the veth softirq work (XDP, the
    # copy into the receiver's UMEM) runs on the sender's core either way.
    gen_cpu, rx_cpu = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pin else ([], [])
    rx_seconds = seconds + 4
    if receiver.startswith("cy-"):
        argv = [sys.executable, __file__, "--loop", receiver[3:], srv.name, str(rx_seconds),
                str(batch)]
    elif receiver.startswith("c-"):
        argv = [str(exe), receiver[2:], "-i", srv.name, "-o", str(obj), "-p", str(PORT),
                "-t", str(rx_seconds), "-b", str(batch)]
    else:
        argv = [str(exe), receiver, "-p", str(PORT), "-t", str(rx_seconds), "-b", str(batch)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = tb.popen("server", rx_cpu + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, env=env)
    try:
        wait_ready(proc)
        gen = tb.exec("client", [*gen_cpu, str(exe), "gen", "-i", cli.name, "-o", str(obj),
                                 "-m", srv.mac, "-D", srv.ip, "-s", cli.ip, "-p", str(PORT),
                                 "-P", str(SPORT), "-S", str(size), "-t", str(seconds),
                                 "-b", str(batch)],
                      capture_output=True, text=True, timeout=seconds + 30)
        if gen.returncode:
            raise RuntimeError(f"gen failed: {gen.stderr}")
        g = json.loads(gen.stdout.strip().splitlines()[-1])
        out, err = proc.communicate(timeout=rx_seconds + 30)
        if proc.returncode:
            raise RuntimeError(f"{receiver} failed: {err}")
        r = json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return {
        "receiver": receiver, "size": size,
        "gen_tx_pps": round(g["tx_pps"]), "rx_pps": round(r["rx"] / g["tx_s"]),
        "echoed_back_pps": round(g["rx"] / g["tx_s"]) if "echo" in receiver else None,
        # The receiver's own CPU per packet (user + system; the veth softirq work runs on
        # the generator's core): the cost of driving the rings, whatever the generator does.
        "rx_cpu_ns_per_pkt": round(r["cpu_s"] * 1e9 / r["rx"]) if r["rx"] else None,
        "gen": g, "recv": r,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--sizes", default="64,1400")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="let the scheduler place generator and receiver")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell (median reported)")
    ap.add_argument("--receivers", default="c-rxdrop,cy-rxdrop,kdrop,c-echo,cy-echo,kecho")
    ap.add_argument("--loop", nargs=4, metavar=("KIND", "IF", "SECONDS", "BATCH"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop:
        kind, ifname, seconds, batch = args.loop
        loop_main(kind, ifname, float(seconds), int(batch))
        return

    from xsk_ref import build, steer_object

    from vtlstack.testbed import Testbed

    exe, obj = build(), steer_object()
    cells: dict[tuple[str, int], list[dict]] = {}
    with Testbed.up(topology="pair") as tb:
        for _ in range(args.repeat):
            for size in (int(s) for s in args.sizes.split(",")):
                for receiver in args.receivers.split(","):
                    row = one_run(tb, exe, obj, receiver, size, args.seconds, args.batch,
                                  args.pin)
                    print(json.dumps(row), flush=True)
                    cells.setdefault((receiver, size), []).append(row)
    print(f"{'receiver':<10} {'size':>5} {'gen tx pps':>12} {'rx pps':>12} {'echo pps':>12}"
          f" {'rx cpu ns/pkt':>14}  rx pps of each run")
    for (receiver, size), rows in cells.items():
        def med(key, rows=rows):
            vals = [r[key] for r in rows if r[key] is not None]
            return format(int(statistics.median(vals)), ",") if vals else ""
        runs = " ".join(format(r["rx_pps"], ",") for r in rows)
        print(f"{receiver:<10} {size:>5} {med('gen_tx_pps'):>12} {med('rx_pps'):>12} "
              f"{med('echoed_back_pps'):>12} {med('rx_cpu_ns_per_pkt'):>14}  {runs}")


if __name__ == "__main__":
    main()
