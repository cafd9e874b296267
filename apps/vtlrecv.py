"""`vtl recv`: receive files sent with `vtl send`, over whatever graft is negotiated.

A `ready` line comes first, once the KTFs are attached and the TCP fallback listens; then
one JSON line per file: the graft, negotiation time, FCT, throughput, packets lost (only
a partially reliable or best-effort graft may lose any; a lost packet's bytes are zeros
in the file), the kernel counters of the interface, SHA-256 and where the file went.
"""

import argparse
import hashlib
import os
from pathlib import Path

from vtlstack.apps._common import emit

from vtlstack.errors import VtlError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recv", help="receive files over VTL (JSON per file)",
                       description=__doc__)
    p.add_argument("--iface", required=True, help="interface to attach the KTFs to")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="write received files here (default: only report them)")
    p.add_argument("--grafts", default=None, metavar="A,B",
                   help="grafts this end agrees to run (default: the whole pool)")
    p.add_argument("--pool", type=Path, default=None, metavar="DIR",
                   help="graft manifests to answer from (default: the shipped pool)")
    p.add_argument("--from-source", action="store_true",
                   help="compile grafts from their source (cached) instead of loading "
                        "the precompiled objects")
    p.add_argument("--no-vtl", action="store_true",
                   help="behave as a legacy peer: TCP fallback only (for tests)")
    p.add_argument("--no-tcp", action="store_true", help="no TCP fallback listener")
    p.add_argument("--count", type=int, default=1, help="files to receive (default 1)")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up after this many seconds without a sender")
    p.add_argument("--idle-timeout", type=float, default=10.0,
                   help="drop a session (and its kernel state) silent this long (10 s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtlstack import vtl

    grafts = args.grafts.split(",") if args.grafts else None
    if args.output is not None and not args.output.is_dir():
        raise VtlError(f"{args.output} is not a directory")
    with vtl.listen(args.iface, grafts=grafts, tcp_fallback=not args.no_tcp,
                    vtl=not args.no_vtl, idle_timeout=args.idle_timeout,
                    pool_dir=args.pool, from_source=args.from_source) as listener:
        emit({"event": "ready", "iface": args.iface})
        for _ in range(args.count):
            try:
                msg = listener.accept(timeout=args.timeout)
            except TimeoutError as e:
                raise VtlError(str(e)) from e
            out = {"event": "received", "sha256": hashlib.sha256(msg.data).hexdigest(),
                   **msg.result.as_dict()}
            if args.output is not None:
                name = os.path.basename(str(msg.meta.get("name") or "")) or \
                    f"vtl-{msg.result.session:08x}"
                path = args.output / name
                tmp = path.with_name(path.name + ".part")
                tmp.write_bytes(msg.data)
                tmp.replace(path)   # the file appears whole or not at all
                out["path"] = str(path)
            emit(out)
    return 0
