"""Grafts stored as source: compiled with clang on demand, once, into a cache.

The KTF pool keeps grafts precompiled (BPF objects shipped in the package) by default.
A manifest may also name a ``source`` (found beside the manifest, or in the checkout's
bpf/): it is compiled when there is no object, or when asked (``from_source``), with the
shipped vtl.h, and the object is cached under a key made of the source, the header and
the compiler (its resolved binary), so a second session pays only the load. The cache is
``$VTL_GRAFT_CACHE``, else ``$XDG_CACHE_HOME/vtlstack/grafts``, else ~/.cache/....
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vtlstack._resources import _REPO, bpf_path
from vtlstack.errors import VtlError
from vtlstack.vtl.grafts import Graft, GraftLoadError

__all__ = ["graft_object", "cache_dir"]


def cache_dir() -> Path:
    if os.environ.get("VTL_GRAFT_CACHE"):
        return Path(os.environ["VTL_GRAFT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "vtlstack" / "grafts"


@functools.lru_cache(maxsize=1)
def _compiler_id() -> str:
    """Which clang this is, for the cache key: its resolved path, size and mtime (running
    `clang --version` would cost a cached deploy more than the load itself)."""
    clang = shutil.which("clang")
    if clang is None:
        raise GraftLoadError("clang is not installed: source grafts cannot be compiled "
                             "(apt-get install clang), precompiled ones still work")
    real = os.path.realpath(clang)
    st = os.stat(real)
    return f"{real}:{st.st_size}:{st.st_mtime_ns}"


def _find_source(graft: Graft) -> Path:
    assert graft.source is not None
    for base in (graft.home, _REPO / "bpf"):
        if base is not None and (base / graft.source).is_file():
            return base / graft.source
    try:
        return bpf_path(graft.source)   # the copy shipped with the package
    except VtlError:
        pass
    raise GraftLoadError(f"graft {graft.name}: source {graft.source} not found beside its "
                         f"manifest, in the checkout's bpf/ or in the package")


def graft_object(graft: Graft, from_source: bool = False) -> Path:
    """The BPF object to load for graft: the shipped one, or its source compiled."""
    if not from_source:
        try:
            return bpf_path(graft.object)
        except VtlError:
            if graft.source is None:
                raise GraftLoadError(f"graft {graft.name}: no object {graft.object} and no "
                                     f"source to build it from") from None
    if graft.source is None:
        raise GraftLoadError(f"graft {graft.name} has no source to compile")
    src = _find_source(graft)
    header = bpf_path("vtl.h")
    digest = hashlib.sha256()
    for part in (src.read_bytes(), header.read_bytes(), _compiler_id().encode()):
        digest.update(hashlib.sha256(part).digest())
    out = cache_dir() / f"{graft.name}-{digest.hexdigest()[:16]}.bpf.o"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Compile into a temporary name and rename: a concurrent or interrupted build never
    # leaves a half-written object under the cached name.
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        cmd = ["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
               "-I", str(header.parent), "-I", "/usr/include/x86_64-linux-gnu",
               "-c", str(src), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            err = " ".join(done.stderr.strip().splitlines()[:3])
            raise GraftLoadError(f"graft {graft.name}: {src.name} does not compile: {err}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
