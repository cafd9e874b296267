"""Where the installed package keeps its BPF objects, shared headers, specs and manifests."""

from pathlib import Path

from vtlstack.errors import VtlError

_PKG = Path(__file__).resolve().parent
_REPO = _PKG.parent


def bpf_path(name: str) -> Path:
    """Path of a compiled BPF object (``steer`` -> .../_bpf/steer.bpf.o) or a shared header."""
    filename = name if "." in name else f"{name}.bpf.o"
    path = _PKG / "_bpf" / filename
    if not path.exists():
        raise VtlError(f"{path} is missing: the package was not built (pip install .)")
    return path


def data_dir(kind: str) -> Path:
    """The shipped ``parsers``, ``grafts`` or ``bench`` data (the repo's own in a checkout)."""
    for base in (_PKG / "_data" / kind, _REPO / kind):
        if base.is_dir():
            return base
    raise VtlError(f"no {kind} directory shipped with vtlstack")
