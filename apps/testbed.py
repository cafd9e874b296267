"""`vtl testbed`: build, list and remove testbeds of network namespaces and veth links.

`up` prints the testbed's description (JSON) and leaves it up, delay forwarder included;
`down --name N` removes it, `down --all` removes everything left with a prefix.
Impairments apply to the pair's link, or to chain's middle-server link.
"""

import argparse
import json
import sys


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("testbed", help="namespaces-and-veths testbed with link impairment",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="testbed_command", metavar="ACTION", required=True)

    up = cmds.add_parser("up", help="build a testbed and print it as JSON")
    up.add_argument("--name", help="testbed name (default: a random id)")
    up.add_argument("--topology", choices=("pair", "chain"), default="pair")
    up.add_argument("--mtu", type=int, default=1500)
    up.add_argument("--offloads", action="store_true",
                    help="leave checksum/segmentation offloads on (default: all off)")
    up.add_argument("--rate", type=_positive, metavar="MBIT", help="link rate, Mbit/s")
    up.add_argument("--delay", type=float, default=0, metavar="MS",
                    help="one-way delay added in each direction, ms")
    up.add_argument("--loss", type=float, default=0, metavar="PCT", help="frame loss, percent")
    up.add_argument("--loss-model", choices=("random", "bursty"), default="random")
    up.add_argument("--reorder", type=float, default=0, metavar="PCT",
                    help="share of frames held back so that later ones overtake them")
    up.add_argument("--reorder-hold", type=_positive, default=2.0, metavar="MS",
                    help="how much longer a reordered frame is held (default 2 ms)")
    up.add_argument("--prefix", default="vtl", help="namespace prefix (default vtl)")
    up.add_argument("--json", action="store_true",
                    help="the description as one compact JSON line (default: indented)")
    up.set_defaults(func=_up)

    down = cmds.add_parser("down", help="remove a testbed, or all of them")
    which = down.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", help="the testbed to remove")
    which.add_argument("--all", action="store_true",
                       help="remove every testbed with the prefix (after a crash)")
    down.add_argument("--prefix", default="vtl", help="namespace prefix (default vtl)")
    down.set_defaults(func=_down)

    ls = cmds.add_parser("list", help="list the testbeds present")
    ls.add_argument("--json", action="store_true", help="as JSON")
    ls.add_argument("--prefix", default="vtl", help="namespace prefix (default vtl)")
    ls.set_defaults(func=_list)


def _up(args: argparse.Namespace) -> int:
    from vtlstack.testbed import Testbed

    tb = Testbed.up(name=args.name, topology=args.topology, mtu=args.mtu,
                    offloads=args.offloads, rate_mbit=args.rate, delay_ms=args.delay,
                    loss_pct=args.loss, loss_model=args.loss_model, reorder_pct=args.reorder,
                    prefix=args.prefix, reorder_extra_ms=args.reorder_hold)
    json.dump(tb.describe(), sys.stdout, indent=None if args.json else 2)
    sys.stdout.write("\n")
    return 0


def _down(args: argparse.Namespace) -> int:
    from vtlstack import testbed

    if args.all:
        removed = testbed.down_all(args.prefix)
    else:
        removed = testbed.down(args.name, args.prefix)
        if not removed:
            raise testbed.TestbedError(
                f"no testbed {args.name!r} with prefix {args.prefix!r}: see `vtl testbed list`"
            )
    for item in removed:
        print(f"removed {item}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from vtlstack.testbed import Testbed

    found = Testbed.list(args.prefix)
    if args.json:
        json.dump(found, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for name, namespaces in sorted(found.items()):
            print(f"{name}\t{' '.join(namespaces)}")
    return 0
