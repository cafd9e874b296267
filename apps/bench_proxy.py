"""`vtl bench proxy`: `vtl proxy` against HAProxy and against no proxy, in the same run.

One run builds a chain testbed (client <-> middle <-> server; veth, MTU 1500, offloads
off). nginx on the server serves a 2 KB file and a large one (sparse, made in a temporary
directory that goes with the run). From the client, for each row in turn:

- wrk: requests/s for the 2 KB file (keep-alive, --connections connections, --seconds);
- curl: one download of the large file (Gbit/s, from curl's own timing).

Rows: `direct` (the middle host only routes), `haproxy` (HAProxy 2.6 in TCP mode with
`option splice-auto` on the middle host), `vtl-forward`, `vtl-splice` and `vtl-inspect`
(`vtl proxy` on the middle host, attached to both of its interfaces). The large file is read
once before the first row, so that no row pays for filling the page cache. With --repeat N
every row is measured N times, the rows taking turns, and each figure is the median of its
N runs (every run is kept in `runs`). Each figure is given as a ratio against direct and
against HAProxy of the same run; absolute figures move from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vtlstack.apps._common import json_line, vtl_argv
from vtlstack.apps._peers import start_nginx, wait_listening

from vtlstack.errors import VtlError, require_root

NGINX_PORT, HAPROXY_PORT, VTL_PORT = 8080, 8081, 8082
SMALL_BYTES = 2048
ROWS = ("direct", "haproxy", "vtl-forward", "vtl-splice", "vtl-inspect")
# Issue 6's targets for the splice row.
TARGET_SPLICE_VS_HAPROXY = 1.2
TARGET_SPLICE_VS_DIRECT_GBIT = 0.9
TARGET_INSPECT_COST = 0.10      # inspection may cost at most this share of splice's figures

# TCP mode: bytes joined both ways, no HTTP processing, as `vtl proxy` does. splice-auto lets
# HAProxy move them with splice(2) when it judges it pays.
HAPROXY_CONF = """
global
    maxconn 4096
    nbthread 1
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen vtlbench
    bind {ip}:{port}
    server upstream {upstream_ip}:{upstream_port}
"""

def register(which: argparse._SubParsersAction) -> None:
    """Add `proxy` to `vtl bench`."""
    p = which.add_parser("proxy", help="vtl proxy vs HAProxy vs direct: requests/s and "
                                       "Gbit/s through the middle host of a chain",
                         description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=None,
                   help="wrk run per row (default 5, --quick 1)")
    p.add_argument("--connections", type=int, default=16,
                   help="wrk connections (default 16)")
    p.add_argument("--big-mb", type=int, default=None,
                   help="size of the large download in MB (default 1024, --quick 64)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="measure every row N times, in turns, and report medians "
                        "(default 1)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds in all: checks the harness, not the speed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_proxy)


# ---- peers in the testbed ------------------------------------------------------------------

def start_haproxy(tb: Any, d: Path, ip: str, port: int, upstream: tuple[str, int]) -> Any:
    (d / "haproxy.cfg").write_text(HAPROXY_CONF.format(ip=ip, port=port,
                                                        upstream_ip=upstream[0],
                                                        upstream_port=upstream[1]))
    proc = tb.popen("middle", ["haproxy", "-db", "-f", str(d / "haproxy.cfg")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_listening(tb, "client", ip, port, proc)
    return proc


def start_vtl_proxy(tb: Any, row: str, ip: str, port: int,
                    upstream: tuple[str, int]) -> subprocess.Popen:
    """`vtl proxy` on both of the middle host's links for a row: vtl-forward, vtl-splice
    or vtl-inspect (splice with --inspect http)."""
    middle = tb.host("middle")
    how = {"vtl-forward": ("--mode", "forward"), "vtl-splice": ("--mode", "splice"),
           "vtl-inspect": ("--mode", "splice", "--inspect", "http")}[row]
    argv = vtl_argv("proxy", *(a for i in middle.ifaces for a in ("--iface", i.name)),
                    "--listen", f"{ip}:{port}", "--upstream", f"{upstream[0]}:{upstream[1]}",
                    *how)
    proc = tb.popen("middle", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
    line = json_line(proc, 30, "vtl proxy")
    if line.get("event") != "listening":
        raise VtlError(f"vtl proxy said {line} instead of listening")
    return proc


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, then what it wrote to stderr (killed if it does not go in 30 s)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return err or ""


# ---- measuring one row ---------------------------------------------------------------------

def wrk_rps(tb: Any, url: str, seconds: float, connections: int) -> dict[str, Any]:
    """Requests/s of wrk from the client host, and the errors it counted."""
    out = tb.exec("client", ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                             url], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode:
        raise VtlError(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if rps is None:
        raise VtlError(f"wrk printed no Requests/sec: {out.stdout.strip()}")
    errors = sum(int(n) for n in re.findall(
        r"(?:connect|read|write|timeout) (\d+)", out.stdout))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    return {"rps": round(float(rps.group(1))),
            "errors": errors + (int(bad.group(1)) if bad else 0)}


def curl_gbit(tb: Any, url: str, size: int) -> float:
    """Gbit/s of one curl download (to /dev/null) from the client host."""
    out = tb.exec("client", ["curl", "-sS", "-o", "/dev/null", "-w",
                             "%{http_code} %{size_download} %{time_total}", url],
                  capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise VtlError(f"curl failed ({out.returncode}): {out.stderr.strip()}")
    code, got, seconds = out.stdout.split()
    if code != "200" or int(got) != size:
        raise VtlError(f"curl got HTTP {code} and {got} of {size} bytes")
    return round(size * 8 / float(seconds) / 1e9, 3)


def measure(tb: Any, ip: str, port: int, seconds: float, connections: int,
            big_size: int) -> dict[str, Any]:
    base = f"http://{ip}:{port}"
    row = wrk_rps(tb, f"{base}/small.bin", seconds, connections)
    row["gbit_per_s"] = curl_gbit(tb, f"{base}/big.bin", big_size)
    return row


# ---- the whole benchmark -------------------------------------------------------------------

def warm(path: Path) -> None:
    """Read a file once, so that its pages are in the page cache: the first download of a
    sparse file fills it, and ran at about half the speed of the next ones."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its runs: the median of each figure, errors summed, every run kept."""
    row: dict[str, Any] = {key: statistics.median(r[key] for r in runs)
                           for key in ("rps", "gbit_per_s", "seconds")}
    row["rps"] = round(row["rps"])
    row["errors"] = sum(r["errors"] for r in runs)
    if len(runs) > 1:
        row["runs"] = runs
    return row


def proxy_bench(seconds: float = 5.0, connections: int = 16, big_mb: int = 1024,
                progress: Any = None, repeat: int = 1) -> dict[str, Any]:
    """Every row on one chain testbed, `repeat` times in turns; median figures, ratios and
    the splice targets."""
    if repeat < 1:
        raise VtlError(f"--repeat must be at least 1, not {repeat}")
    require_root("vtl bench proxy")
    from vtlstack.testbed import Testbed

    big_size = big_mb * 1_000_000
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ROWS}
    with tempfile.TemporaryDirectory(prefix="vtlp-bench-") as tmp, \
            Testbed.up(topology="chain") as tb:
        d = Path(tmp)
        (d / "www").mkdir()
        (d / "www" / "small.bin").write_bytes(os.urandom(SMALL_BYTES))
        with open(d / "www" / "big.bin", "wb") as f:
            f.truncate(big_size)    # sparse: no disk, and the page cache serves it
        warm(d / "www" / "big.bin")
        server = tb.host("server").iface
        front = tb.host("middle").ifaces[0]     # the client's side of the middle host
        upstream = (server.ip, NGINX_PORT)
        start_nginx(tb, "server", d, server.ip, NGINX_PORT)
        for name in ROWS * repeat:      # the rows take turns
            started = time.monotonic()
            proc = None
            if name == "direct":
                where = upstream
            elif name == "haproxy":
                proc = start_haproxy(tb, d, front.ip, HAPROXY_PORT, upstream)
                where = (front.ip, HAPROXY_PORT)
            else:
                proc = start_vtl_proxy(tb, name, front.ip, VTL_PORT, upstream)
                where = (front.ip, VTL_PORT)
            try:
                run = measure(tb, *where, seconds, connections, big_size)
            finally:
                if proc is not None:
                    err = stop(proc)
                    if proc.returncode not in (0, -15):
                        raise VtlError(f"{name} exited {proc.returncode}: {err.strip()}")
            run["seconds"] = round(time.monotonic() - started, 1)
            runs[name].append(run)
            if progress:
                progress(name, run)
    result = _with_ratios({name: median_row(rs) for name, rs in runs.items()}, seconds,
                          connections, big_size)
    result["setup"]["repeat"] = repeat
    return result


def _with_ratios(rows: dict[str, dict[str, Any]], seconds: float, connections: int,
                 big_size: int) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    direct, haproxy = rows["direct"], rows["haproxy"]
    for row in rows.values():
        for key in ("rps", "gbit_per_s"):
            row[f"{key}_vs_direct"] = ratio(row.get(key), direct.get(key))
            row[f"{key}_vs_haproxy"] = ratio(row.get(key), haproxy.get(key))
    splice, inspect = rows["vtl-splice"], rows["vtl-inspect"]
    for key in ("rps", "gbit_per_s"):
        inspect[f"{key}_vs_splice"] = ratio(inspect.get(key), splice.get(key))
    rows["vtl-forward"]["gbit_per_s_vs_splice"] = ratio(rows["vtl-forward"].get("gbit_per_s"),
                                                        splice.get("gbit_per_s"))
    result: dict[str, Any] = {
        "setup": {"testbed": "chain (veth, MTU 1500, offloads off), nginx on server, wrk "
                             "and curl on client, proxies on middle",
                  "wrk_seconds": seconds, "wrk_connections": connections,
                  "small_bytes": SMALL_BYTES, "big_bytes": big_size},
        "rows": rows,
        "targets": {"splice_vs_haproxy_min": TARGET_SPLICE_VS_HAPROXY,
                    "splice_gbit_vs_direct_min": TARGET_SPLICE_VS_DIRECT_GBIT,
                    "inspect_vs_splice_min": 1 - TARGET_INSPECT_COST},
    }
    t = result["targets"]
    t["splice_met"] = bool(
        (splice["rps_vs_haproxy"] or 0) >= TARGET_SPLICE_VS_HAPROXY
        and (splice["gbit_per_s_vs_haproxy"] or 0) >= TARGET_SPLICE_VS_HAPROXY
        and (splice["gbit_per_s_vs_direct"] or 0) >= TARGET_SPLICE_VS_DIRECT_GBIT)
    t["inspect_met"] = bool(
        (inspect["rps_vs_splice"] or 0) >= 1 - TARGET_INSPECT_COST
        and (inspect["gbit_per_s_vs_splice"] or 0) >= 1 - TARGET_INSPECT_COST)
    return result


def print_proxy_table(result: dict[str, Any]) -> None:
    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    s = result["setup"]
    print(f"\n2 KB responses: wrk, {s['wrk_connections']} connections, {s['wrk_seconds']} s; "
          f"large download: curl, {s['big_bytes'] / 1e6:.0f} MB"
          + (f"; medians of {s['repeat']} runs" if s["repeat"] > 1 else ""))
    print(f"{'row':<12} {'req/s':>9} {'vs direct':>9} {'vs haproxy':>10}  "
          f"{'Gbit/s':>7} {'vs direct':>9} {'vs haproxy':>10}")
    for name, row in result["rows"].items():
        print(f"{name:<12} {fmt(row['rps'], ',d'):>9} {fmt(row['rps_vs_direct'], '.3f'):>9} "
              f"{fmt(row['rps_vs_haproxy'], '.3f'):>10}  {fmt(row['gbit_per_s'], '.3f'):>7} "
              f"{fmt(row['gbit_per_s_vs_direct'], '.3f'):>9} "
              f"{fmt(row['gbit_per_s_vs_haproxy'], '.3f'):>10}"
              + (f"  ({row['errors']} wrk errors)" if row["errors"] else ""))
    t = result["targets"]
    print(f"targets: splice >= {t['splice_vs_haproxy_min']}x HAProxy and >= "
          f"{t['splice_gbit_vs_direct_min']:.0%} of direct Gbit/s: {t['splice_met']}; "
          f"inspect >= {t['inspect_vs_splice_min']:.0%} of splice: {t['inspect_met']}")


def run_proxy(args: argparse.Namespace) -> int:
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    big_mb = args.big_mb or (64 if args.quick else 1024)

    def progress(name: str, row: dict) -> None:
        print(f"  {name:<12} " + json.dumps(row), file=sys.stderr)

    result = proxy_bench(seconds, args.connections, big_mb, progress, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_proxy_table(result)
    return 0
