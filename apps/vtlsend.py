"""`vtl send`: send a file over VTL; the application asks for services, not a protocol.

The sender offers the grafts that provide the services asked for (--reliable, --ordered,
--max-loss), the receiver picks one, both deploy its KTFs and the file moves. With
--graft the offer is exactly those grafts (for experiments). When the receiver refuses or
does not answer, the file goes over kernel TCP unless --no-fallback. One JSON line:
negotiated graft, negotiation time, FCT, throughput, retransmissions, kernel counters,
SHA-256 of the file.
"""

import argparse
import hashlib
from pathlib import Path

from vtlstack.apps._common import emit

from vtlstack.errors import VtlError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="send a file over a negotiated VTL graft",
                       description=__doc__)
    p.add_argument("--iface", required=True, help="interface to attach the KTFs to")
    p.add_argument("--to", required=True, metavar="IP", help="the receiver's IPv4 address")
    p.add_argument("--graft", action="append", metavar="NAME",
                   help="offer only this graft (repeatable, in order of preference)")
    p.add_argument("--reliable", action="store_true", help="every byte must arrive")
    p.add_argument("--ordered", action="store_true", help="bytes keep their order")
    p.add_argument("--max-loss", type=float, default=None, metavar="FRACTION",
                   help="fraction of packets the application can lose, e.g. 0.1")
    p.add_argument("--udp", action="store_true",
                   help="carry VTL in UDP (port 7254) instead of IP protocol 253, for paths "
                        "that drop unknown protocols")
    p.add_argument("--no-fallback", action="store_true",
                   help="fail instead of falling back to kernel TCP")
    p.add_argument("--nego-tries", type=int, default=4,
                   help="NEGO packets sent before giving up on VTL (default 4)")
    p.add_argument("--switch", action="append", default=[], metavar="RULE",
                   help="net monitor rule that swaps grafts mid-transfer, both ends "
                        "agreeing, e.g. 'rtt_ms>=300:gbn->pr' (repeatable)")
    p.add_argument("--monitor", action="store_true",
                   help="run the net monitor with the paper's rule (rtt_ms>=300:gbn->pr)")
    p.add_argument("file", type=Path, help="the file to send")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtlstack import vtl

    try:
        data = args.file.read_bytes()
    except OSError as e:
        raise VtlError(f"cannot read {args.file}: {e.strerror}") from e
    from vtlstack.vtl.monitor import PAPER_RULE, Rule

    try:
        rules = [Rule.parse(r) for r in args.switch] + ([PAPER_RULE] if args.monitor else [])
        conn = vtl.connect(args.iface, args.to, reliable=args.reliable, ordered=args.ordered,
                           max_loss=1.0 if args.max_loss is None else args.max_loss,
                           grafts=args.graft, fallback=not args.no_fallback,
                           meta={"name": args.file.name}, nego_tries=args.nego_tries,
                           rules=rules, udp=args.udp)
    except ValueError as e:   # services that contradict each other, or a bad rule
        raise VtlError(str(e)) from e
    with conn:
        res = conn.send_data(data)
    emit({"event": "sent", "file": str(args.file), "sha256": hashlib.sha256(data).hexdigest(),
          **res.as_dict()})
    return 0
