"""Build and locate the C reference program (bench/xsk_ref.c) for the port benchmarks.

``build()`` compiles it with the system compiler against libxdp/libbpf into
``build/xsk_ref/`` (rebuilt when the source or steer.h is newer); ``python bench/xsk_ref.py``
builds it and prints the path. The steering object it loads is the package's own
(``vtlstack._resources.bpf_path("steer")``), so both sides run the same XDP program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "bench" / "xsk_ref.c"
HEADER = REPO / "bpf" / "include" / "steer.h"


def build(out_dir: Path | None = None) -> Path:
    """Path of an up-to-date xsk_ref binary, compiling it if needed."""
    out_dir = out_dir or REPO / "build" / "xsk_ref"
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "xsk_ref"
    newest = max(SOURCE.stat().st_mtime, HEADER.stat().st_mtime)
    if exe.exists() and exe.stat().st_mtime >= newest:
        return exe
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    tmp = exe.with_suffix(".tmp")
    subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-I", str(HEADER.parent), str(SOURCE), "-o", str(tmp),
         "-lxdp", "-lbpf"],
        check=True,
    )
    tmp.replace(exe)  # atomic: a concurrent run never sees a half-written binary
    return exe


def steer_object() -> Path:
    from vtlstack._resources import bpf_path

    return bpf_path("steer")


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
