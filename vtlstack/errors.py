"""The errors vtlstack raises when the machine, the input or the peer is not as needed.

Each carries a message naming the cause and, where there is one, the fix; the CLI prints
it as one line and exits non-zero.
"""

import os


class VtlError(Exception):
    """A failure the user can act on: the message says what went wrong and what to do."""


class PrivilegeError(VtlError):
    pass


class KernelFeatureError(VtlError):
    pass


class InterfaceError(VtlError):
    pass


class XdpBusyError(VtlError):
    pass


def require_root(what: str) -> None:
    """Raise PrivilegeError unless we can use namespaces, AF_XDP and BPF."""
    if os.geteuid() != 0:
        raise PrivilegeError(
            f"{what} needs CAP_NET_ADMIN and CAP_BPF: run it as root (e.g. with sudo)"
        )


class SpecError(VtlError):
    """A record spec that cannot be compiled: `line` (1-based) and `reason` say where and why."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class ParseError(VtlError):
    """Input a record parser refused: `offset` is the stream offset of the offending byte."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"at stream offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class CompilerError(VtlError):
    """A record spec could not be built into native code (no C compiler, or it failed)."""


class ReleasedError(VtlError):
    """Zero-copy views (recv_zc chains, record batches) used or released after release()."""
