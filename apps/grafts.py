"""`vtl grafts`: the KTF pool: each graft's services, QoS, version and KTFs, as JSON."""

import argparse

from vtlstack.apps._common import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grafts", help="list the VTL graft pool", description=__doc__)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vtlstack._resources import bpf_path
    from vtlstack.errors import VtlError
    from vtlstack.vtl.grafts import load_pool

    for g in load_pool().values():
        try:
            obj = bpf_path(g.object)
            size, built = obj.stat().st_size, True
        except VtlError:
            size, built = 0, False
        emit({"name": g.name, "id": g.id, "version": g.version, "description": g.description,
              "services": {"integrity": g.integrity, "reliable": g.reliable,
                           "ordered": g.ordered, "max_loss": g.max_loss},
              "qos": g.qos, "ktfs": g.ktfs, "object": g.object, "precompiled": built,
              "object_bytes": size})
    return 0
