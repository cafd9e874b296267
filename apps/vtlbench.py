"""`vtl bench vtl`: the VTL paper's evaluation, reduced, on a pair testbed, in one run.

Fig. 8 / Table IV: negotiation delay with precompiled grafts (the receiver loads and
verifies the graft inside it) and the size of each graft's object. Fig. 9: file completion
time of each graft beside kernel TCP (CUBIC, the fallback path of `vtl send`), for each
file size and loss rate, at --rate Mbit/s and --rtt ms. The defaults finish in about a
minute; the paper's grid is `--sizes 1,2,4,8,16,32,64 --losses 0,1,2,3,4,5`. With --fig10,
Fig. 10: a 32 MB transfer whose RTT rises from 20 to 320 ms while it runs, link throughput
over time for Go-Back-N alone, Go-Back-N under the paper's monitor rule (which moves it to
Partial Reliability) and TCP. The paper raises the RTT 20 s in; at 16 Mbit/s a 32 MB
transfer takes 17 s, so the default is 5 s in, and each transfer is watched for at most
30 s (Go-Back-N alone would need minutes at 320 ms). Figures move from run to run: compare
within one run. --plot DIR writes the figures as PNG (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from vtlstack.apps import _vtlplot
from vtlstack.apps._common import emit, json_line, vtl_argv

from vtlstack.errors import VtlError, require_root

GRAFTS = ("sr", "gbn", "pr")
# Fig. 10's transfers: `vtl send` arguments (None: kernel TCP through the fallback).
FIG10_RUNS: dict[str, list[str] | None] = {
    "gbn": ["--graft", "gbn"],
    "gbn->pr": ["--graft", "gbn", "--monitor"],
    "tcp": None,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vtl", help="VTL grafts vs kernel TCP (paper Fig. 8-9)",
                       description=__doc__)
    p.add_argument("--sizes", default="1,4",
                   help="file sizes in MB (default 1,4; empty: no Fig. 9)")
    p.add_argument("--losses", default="0,2", help="loss rates in %% (default 0,2)")
    p.add_argument("--rate", type=float, default=16.0, help="link rate, Mbit/s (16)")
    p.add_argument("--rtt", type=float, default=10.0, help="round-trip delay, ms (10)")
    p.add_argument("--repeat", type=int, default=1,
                   help="Fig. 9 transfers per graft and cell, interleaved; medians (1)")
    p.add_argument("--negotiations", type=int, default=5,
                   help="negotiations timed per graft for Fig. 8 (5; 0: no Fig. 8)")
    p.add_argument("--fig10", action="store_true",
                   help="also run Fig. 10: RTT 20 -> 320 ms during a transfer (~100 s)")
    p.add_argument("--fig10-size", type=float, default=32.0, help="Fig. 10 file, MB (32)")
    p.add_argument("--fig10-at", type=float, default=5.0,
                   help="s after the first bytes when the RTT rises (5; the paper: 20)")
    p.add_argument("--fig10-for", type=float, default=30.0,
                   help="s each Fig. 10 transfer is watched at most (30)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", type=Path, metavar="DIR",
                   help="write the figures (fig8.png, fig9.png, fig10.png) to DIR")
    p.set_defaults(func=run)


def _transfer(tb: Any, graft: str, path: Path, source_cache: str | None = None,
              budget: float = 60.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """One file from client to server; source_cache: the receiver compiles the graft
    from source with this cache directory; budget: seconds the transfer may take."""
    cli, srv = tb.host("client"), tb.host("server")
    tcp = graft == "tcp"
    extra = ["--no-vtl"] if tcp else []
    env = None
    if source_cache is not None:
        extra.append("--from-source")
        env = {**os.environ, "VTL_GRAFT_CACHE": source_cache}
    recv = tb.popen("server", vtl_argv("recv", "--iface", srv.iface.name, "--timeout",
                                       str(int(budget)), *extra),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        json_line(recv, 20, "`vtl recv`")
        sent = tb.exec("client", vtl_argv("send", "--iface", cli.iface.name, "--to",
                                          srv.iface.ip,
                                          *(["--nego-tries", "1"] if tcp else
                                            ["--graft", graft]), str(path)),
                       capture_output=True, text=True, timeout=budget + 30)
        if sent.returncode:
            raise VtlError(f"vtl send ({graft}) failed: {sent.stderr.strip()}")
        got = json_line(recv, budget, "`vtl recv`")
        recv.wait(timeout=15)
    finally:
        if recv.poll() is None:
            recv.terminate()
            recv.wait(timeout=10)
    return json.loads(sent.stdout), got


def _fig9_run(tb: Any, graft: str, path: Path, budget: float) -> dict[str, Any]:
    """One Fig. 9 transfer, reduced to what the figure and its table report."""
    sent, got = _transfer(tb, graft, path, budget=budget)
    return {"fct_s": sent["fct_s"], "mbit": sent["throughput_mbit"],
            "lost_packets": got["lost_packets"], "intact": got["sha256"] == sent["sha256"],
            "retransmitted": sent["stats"].get("retransmitted", 0),
            "timeouts": sent["stats"].get("timeouts", 0),
            "frames_held_peak": sent["stats"].get("frames_held_peak", 0)}


def _fig9_row(graft: str, mb: float, loss: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's row: the run of median FCT (so its counters belong to that run), every
    run's FCT, and whether every run delivered the file intact."""
    mid = sorted(runs, key=lambda r: r["fct_s"])[(len(runs) - 1) // 2]
    return {"graft": graft, "size_mb": mb, "loss_pct": loss, **mid,
            "intact": all(r["intact"] for r in runs),
            "fct_runs_s": [r["fct_s"] for r in runs]}


def _fig10(tb: Any, path: Path, at: float, watch: float, low_ms: float, high_ms: float,
           step: float = 0.25) -> dict[str, Any]:
    """Fig. 10: each transfer of FIG10_RUNS with the RTT raised from low_ms to high_ms at
    `at` s after its first bytes; throughput is what the link carried client->server in
    each `step` (every byte on the wire, retransmissions included), so TCP and VTL are
    measured alike."""
    cli, srv = tb.host("client"), tb.host("server")
    runs: dict[str, Any] = {}
    for name, send_args in FIG10_RUNS.items():
        tb.set_delay(low_ms / 2)
        tcp = send_args is None
        recv = tb.popen("server", vtl_argv("recv", "--iface", srv.iface.name, "--timeout",
                                           str(int(watch + 30)),
                                           *(["--no-vtl"] if tcp else [])),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        send = None
        try:
            json_line(recv, 20, "`vtl recv`")
            send = tb.popen("client", vtl_argv("send", "--iface", cli.iface.name, "--to",
                                               srv.iface.ip,
                                               *(["--nego-tries", "1"] if tcp else send_args),
                                               str(path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            start = tb.link_bytes()["client->server"]
            while tb.link_bytes()["client->server"] == start and send.poll() is None:
                time.sleep(0.005)   # polling for the first bytes, a sampling interval
            t0 = last_t = time.monotonic()
            last, series, raised = tb.link_bytes()["client->server"], [], False
            while send.poll() is None and last_t - t0 < watch:
                time.sleep(step)
                now, sent = time.monotonic(), tb.link_bytes()["client->server"]
                series.append((round(now - t0, 3), round((sent - last) * 8 / (now - last_t)
                                                         / 1e6, 3)))
                last, last_t = sent, now
                if not raised and now - t0 >= at:
                    tb.set_delay(high_ms / 2)
                    raised = True
            finished = send.poll() is not None
            if not finished:
                send.terminate()
            out, err = send.communicate(timeout=15)
            if finished and send.returncode:
                raise VtlError(f"vtl send ({name}) failed: {err.strip()}")
            res = json.loads(out) if finished else {}
            runs[name] = {"t_s": [t for t, _ in series], "mbit": [m for _, m in series],
                          "finished": finished, "fct_s": res.get("fct_s"),
                          "grafts": res.get("grafts", [name]),
                          "switch_at_s": res.get("stats", {}).get("switch_at_s")}
        finally:
            for proc in (send, recv):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=10)
    return {"size_mb": path.stat().st_size / 1e6, "rtt_ms": [low_ms, high_ms],
            "raised_at_s": at, "watched_s": watch, "runs": runs}


def run(args: argparse.Namespace) -> int:
    require_root("vtl bench vtl")
    from vtlstack._resources import bpf_path
    from vtlstack.testbed import Testbed
    from vtlstack.vtl.grafts import load_pool

    if args.plot is not None:
        _vtlplot.check()
    sizes = [float(s) for s in args.sizes.split(",") if s]
    losses = [float(x) for x in args.losses.split(",") if x]
    pool = load_pool()
    if args.repeat < 1:
        raise VtlError("--repeat must be at least 1")
    out: dict[str, Any] = {"rate_mbit": args.rate, "rtt_ms": args.rtt,
                           "repeat": args.repeat, "negotiation": {}, "fct": []}
    with tempfile.TemporaryDirectory(prefix="vtlbench-") as tmp:
        files = {}
        for mb in sizes:
            files[mb] = Path(tmp) / f"{mb:g}MB.bin"
            files[mb].write_bytes(os.urandom(int(mb * 1_000_000)))
        small = Path(tmp) / "nego.bin"
        small.write_bytes(b"x")
        for loss in losses:
            with Testbed.up(topology="pair", rate_mbit=args.rate, delay_ms=args.rtt / 2,
                            loss_pct=loss, prefix="vtlbench") as tb:
                if loss == losses[0] and args.negotiations > 0:
                    for g in GRAFTS:
                        def nego(cache: str | None = None, g: str = g) -> float:
                            return _transfer(tb, g, small, cache)[0]["negotiation_ms"]

                        pre = [nego() for _ in range(args.negotiations)]
                        # A fresh cache each time: the receiver compiles, as in the
                        # paper's source grafts; then the same with the cache warm.
                        src = [nego(tempfile.mkdtemp(dir=tmp))
                               for _ in range(args.negotiations)]
                        warm = tempfile.mkdtemp(dir=tmp)
                        nego(warm)
                        cached = [nego(warm) for _ in range(args.negotiations)]
                        source = Path(bpf_path("vtl.h")).parents[2] / "bpf" / \
                            (pool[g].source or "")
                        out["negotiation"][g] = {
                            "precompiled_ms": round(statistics.median(pre), 2),
                            "source_ms": round(statistics.median(src), 2),
                            "source_cached_ms": round(statistics.median(cached), 2),
                            "object_bytes": bpf_path(pool[g].object).stat().st_size,
                            "source_bytes": source.stat().st_size if source.is_file()
                            else None,
                            "shared_header_bytes": bpf_path("vtl.h").stat().st_size,
                            "loss_pct": loss}
                for mb, path in files.items():
                    # Go-Back-N at 5 % loss runs at a third of the link rate: ten times
                    # the time at link rate leaves room, a hung transfer still ends.
                    budget = 60 + 10 * mb * 8 / args.rate
                    runs: dict[str, list[dict[str, Any]]] = {g: [] for g in (*GRAFTS, "tcp")}
                    for _ in range(args.repeat):
                        for g in runs:
                            runs[g].append(_fig9_run(tb, g, path, budget))
                    for g, rs in runs.items():
                        row = _fig9_row(g, mb, loss, rs)
                        out["fct"].append(row)
                        if not args.json:
                            emit(row)
        if args.fig10:
            big = Path(tmp) / "fig10.bin"
            big.write_bytes(os.urandom(int(args.fig10_size * 1_000_000)))
            with Testbed.up(topology="pair", rate_mbit=args.rate, delay_ms=10,
                            prefix="vtlbench") as tb:
                out["fig10"] = _fig10(tb, big, args.fig10_at, args.fig10_for, 20.0, 320.0)
            if not args.json:
                for name, r in out["fig10"]["runs"].items():
                    emit({"fig10": name, "finished": r["finished"], "fct_s": r["fct_s"],
                          "grafts": r["grafts"], "switch_at_s": r["switch_at_s"]})
    if args.plot is not None:
        out["plots"] = [str(png) for png in _vtlplot.plot_all(out, args.plot)]
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        emit({"negotiation": out["negotiation"], "plots": out.get("plots", [])})
    return 0
