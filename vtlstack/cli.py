"""The `vtl` command: one subcommand per app in vtlstack.apps."""

import argparse
import importlib
import os
import signal
import sys

from vtlstack.errors import VtlError

# Each module has register(subparsers) that adds its subcommand and sets `func`.
_APPS = ("demo", "testbed", "echo", "udpload", "sink", "source", "fetch", "proxy", "bench",
         "vtlsend", "vtlrecv", "grafts")


class Terminated(SystemExit):
    """SIGTERM as an exception, so every `with` and `finally` on the way out runs."""


_main_pid = 0


def _on_sigterm(signum: int, frame: object) -> None:
    # A child forked without exec (pyroute2 does this to enter namespaces) inherits this
    # handler: it must die as SIGTERM asks, not unwind the parent's `with` blocks.
    if os.getpid() != _main_pid:
        os._exit(128 + signum)
    raise Terminated(128 + signum)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vtl",
        description="vtlstack: a zero-copy userspace transport stack over AF_XDP.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _APPS:
        importlib.import_module(f"vtlstack.apps.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    global _main_pid
    _main_pid = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except VtlError as exc:
        print(f"vtl {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
