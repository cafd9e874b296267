"""`vtl bench records`: CSV rows/s received as records by the stack, against Python's csv
module reading a kernel TCP socket, on one pair testbed in one run.

The client host sends the same rows (16 bytes each by default, RFC 4180 CRLF) from a kernel
socket to each receiver in turn; each receiver reads one connection to its end and counts
rows from its first byte to the end of the stream:

- stack-net: `Stack.listen(parser="csv")`, rows parsed in the network thread, read with
  read_records() (fields stay spans in the frames);
- stack-app: the same, parsed in the application thread (parse_in="app");
- stack-net-column: parsed in the network thread, each batch's first field taken as a
  numpy column (the columnar way to use the rows);
- kernel-csv: a kernel socket read through csv.reader (rows as lists of str).

The figures move from run to run: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import select
import statistics
import subprocess
import sys
from typing import Any

from vtlstack.apps._common import emit, vtl_argv

from vtlstack.errors import VtlError, require_root

PORT = 9100
RECEIVERS = ("stack-net", "stack-app", "stack-net-column", "kernel-csv")

# The sender (Linux host): rows in 1 MB blocks from a kernel socket, then close.
SENDER = r"""
import socket, sys
ip, port, rows, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
row = b"%0*d,abcdef\r\n" % (width - 9, 0)
assert len(row) == width
per = (1 << 20) // width
block = row * per
s = socket.create_connection((ip, port), timeout=30)
left = rows
while left:
    n = min(left, per)
    s.sendall(block if n == per else row * n)
    left -= n
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("records", help="CSV records: the stack's parsing vs the csv module",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4_000_000, help="rows per receiver (4M)")
    p.add_argument("--width", type=int, default=16, help="bytes per row, CRLF included (16)")
    p.add_argument("--repeat", type=int, default=1, help="runs per receiver; medians")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    recv = sub.add_parser("records-recv")  # one receiver, inside the server netns
    recv.add_argument("receiver", choices=RECEIVERS)
    recv.add_argument("iface")
    recv.add_argument("port", type=int)
    recv.set_defaults(func=run_receiver)


def run_receiver(args: argparse.Namespace) -> int:
    """Read one connection to its end; one JSON line: rows, bytes, seconds."""
    import time

    if args.receiver == "kernel-csv":
        import csv
        import socket

        with socket.create_server(("0.0.0.0", args.port)) as srv:
            emit({"event": "ready"})
            conn, _ = srv.accept()
            with conn, conn.makefile("r", encoding="latin-1", newline="",
                                     buffering=1 << 20) as f:
                start = time.perf_counter()
                rows = sum(1 for _ in csv.reader(f))
                seconds = time.perf_counter() - start
        emit({"rows": rows, "seconds": seconds})
        return 0
    from vtlstack.stack import Stack

    parse_in = "app" if args.receiver == "stack-app" else "net"
    column = args.receiver == "stack-net-column"
    with Stack(args.iface) as stack:
        lst = stack.listen(args.port, parser="csv", parse_in=parse_in)
        emit({"event": "ready"})
        conn = lst.accept(timeout=30)
        rows = 0
        start = None
        while True:
            batch = conn.read_records(max=1 << 16, timeout=30)
            if start is None:
                start = time.perf_counter()
            with batch:
                if not len(batch):
                    break
                rows += len(batch.column(0)) if column else len(batch)
        seconds = time.perf_counter() - start
        conn.close()
        lst.close()
    emit({"rows": rows, "seconds": seconds, "parse_errors": stack.final_stats["net"]
          ["parse_errors"], "held": stack.final_stats["port"]["held"]})
    return 0


def _line(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise VtlError(f"the receiver said nothing in {timeout:.0f} s: "
                       f"{proc.stderr.read().strip() if proc.poll() is not None else ''}")
    return json.loads(line)


def one_run(tb: Any, receiver: str, rows: int, width: int) -> dict[str, Any]:
    server = tb.host("server").iface
    proc = tb.popen("server", vtl_argv("bench", "records-recv", receiver, server.name,
                                       str(PORT)),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _line(proc, 30)
        sender = tb.exec("client", [sys.executable, "-c", SENDER, server.ip, str(PORT),
                                    str(rows), str(width)],
                         capture_output=True, text=True, timeout=600)
        if sender.returncode != 0:
            raise VtlError(f"the sender failed: {sender.stderr.strip()}")
        got = _line(proc, 120)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    if got["rows"] != rows:
        raise VtlError(f"{receiver} read {got['rows']} rows of {rows}")
    if got.get("held"):
        raise VtlError(f"{receiver} left {got['held']} frames held")
    return {"rows_per_s": rows / got["seconds"], "mb_per_s": rows * width / got["seconds"] / 1e6}


def records_bench(rows: int = 4_000_000, width: int = 16, repeat: int = 1,
                  progress: Any = None) -> dict[str, Any]:
    """Every receiver on one testbed, `repeat` times each, interleaved; medians and the
    ratios of this run."""
    from vtlstack.testbed import Testbed

    require_root("vtl bench records")
    runs: dict[str, list[dict]] = {r: [] for r in RECEIVERS}
    with Testbed.up(topology="pair", prefix="vtlbrec") as tb:
        for _ in range(repeat):
            for receiver in RECEIVERS:
                row = one_run(tb, receiver, rows, width)
                runs[receiver].append(row)
                if progress:
                    progress(receiver, row)
    result: dict[str, Any] = {"rows": rows, "row_bytes": width, "repeat": repeat}
    for receiver, rs in runs.items():
        result[receiver] = {k: round(statistics.median(r[k] for r in rs), 1)
                            for k in ("rows_per_s", "mb_per_s")}
    rate = {r: result[r]["rows_per_s"] for r in RECEIVERS}
    result["ratios"] = {
        "stack_net_vs_kernel_csv": round(rate["stack-net"] / rate["kernel-csv"], 2),
        "stack_app_vs_kernel_csv": round(rate["stack-app"] / rate["kernel-csv"], 2),
        "stack_net_vs_stack_app": round(rate["stack-net"] / rate["stack-app"], 2),
        "column_vs_kernel_csv": round(rate["stack-net-column"] / rate["kernel-csv"], 2),
    }
    return result


def run(args: argparse.Namespace) -> int:
    def progress(receiver: str, row: dict) -> None:
        if not args.json:
            print(f"  {receiver:17} {row['rows_per_s'] / 1e6:8.2f} M rows/s "
                  f"{row['mb_per_s']:8.1f} MB/s", file=sys.stderr, flush=True)

    result = records_bench(args.rows, args.width, args.repeat, progress)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"CSV rows of {args.width} bytes, {args.rows:,} per receiver, medians of "
          f"{args.repeat}:")
    for receiver in RECEIVERS:
        r = result[receiver]
        print(f"  {receiver:17} {r['rows_per_s'] / 1e6:8.2f} M rows/s {r['mb_per_s']:8.1f} MB/s")
    for name, ratio in result["ratios"].items():
        print(f"  {name:28} {ratio:.2f}x")
    return 0
