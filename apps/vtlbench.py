"""`vtl bench vtl`: the VTL paper's evaluation, reduced, on a pair testbed, in one run.

Fig. 8 / Table IV: negotiation delay with precompiled grafts (the receiver loads and
verifies the graft inside it) and the size of each graft's object. Fig. 9: file completion
time of each graft beside kernel TCP (CUBIC, the fallback path of `vtl send`), for each
file size and loss rate, at --rate Mbit/s and --rtt ms. The defaults finish in about a
minute; the paper's grid is `--sizes 1,2,4,8,16,32,64 --losses 0,1,2,3,4,5`. Figures move
from run to run: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from vtlstack.apps._common import emit, vtl_argv

from vtlstack.errors import VtlError, require_root

GRAFTS = ("sr", "gbn", "pr")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vtl", help="VTL grafts vs kernel TCP (paper Fig. 8-9)",
                       description=__doc__)
    p.add_argument("--sizes", default="1,4", help="file sizes in MB (default 1,4)")
    p.add_argument("--losses", default="0,2", help="loss rates in %% (default 0,2)")
    p.add_argument("--rate", type=float, default=16.0, help="link rate, Mbit/s (16)")
    p.add_argument("--rtt", type=float, default=10.0, help="round-trip delay, ms (10)")
    p.add_argument("--negotiations", type=int, default=5,
                   help="negotiations timed per graft for Fig. 8 (5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _line(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise VtlError(f"`vtl recv` said nothing in {timeout:.0f} s: "
                       f"{proc.stderr.read().strip() if proc.poll() is not None else ''}")
    return json.loads(line)


def _transfer(tb: Any, graft: str, path: Path, source_cache: str | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One file from client to server; source_cache: the receiver compiles the graft
    from source with this cache directory."""
    cli, srv = tb.host("client"), tb.host("server")
    tcp = graft == "tcp"
    extra = ["--no-vtl"] if tcp else []
    env = None
    if source_cache is not None:
        extra.append("--from-source")
        env = {**os.environ, "VTL_GRAFT_CACHE": source_cache}
    recv = tb.popen("server", vtl_argv("recv", "--iface", srv.iface.name, "--timeout", "60",
                                       *extra),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _line(recv, 20)
        sent = tb.exec("client", vtl_argv("send", "--iface", cli.iface.name, "--to",
                                          srv.iface.ip,
                                          *(["--nego-tries", "1"] if tcp else
                                            ["--graft", graft]), str(path)),
                       capture_output=True, text=True, timeout=300)
        if sent.returncode:
            raise VtlError(f"vtl send ({graft}) failed: {sent.stderr.strip()}")
        got = _line(recv, 60)
        recv.wait(timeout=15)
    finally:
        if recv.poll() is None:
            recv.terminate()
            recv.wait(timeout=10)
    return json.loads(sent.stdout), got


def run(args: argparse.Namespace) -> int:
    require_root("vtl bench vtl")
    from vtlstack._resources import bpf_path
    from vtlstack.testbed import Testbed
    from vtlstack.vtl.grafts import load_pool

    sizes = [float(s) for s in args.sizes.split(",")]
    losses = [float(x) for x in args.losses.split(",")]
    pool = load_pool()
    out: dict[str, Any] = {"rate_mbit": args.rate, "rtt_ms": args.rtt, "negotiation": {},
                           "fct": []}
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
                if loss == losses[0]:
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
                    for g in (*GRAFTS, "tcp"):
                        sent, got = _transfer(tb, g, path)
                        row = {"graft": g, "size_mb": mb, "loss_pct": loss,
                               "fct_s": sent["fct_s"], "mbit": sent["throughput_mbit"],
                               "lost_packets": got["lost_packets"],
                               "intact": got["sha256"] == sent["sha256"],
                               "retransmitted": sent["stats"].get("retransmitted", 0)}
                        out["fct"].append(row)
                        if not args.json:
                            emit(row)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        emit({"negotiation": out["negotiation"]})
    return 0
