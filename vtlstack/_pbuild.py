"""Turn a record spec into a shared object: the built-ins at build time, user specs at runtime.

A user spec is compiled once into a cache keyed by the hash of what determines the code
(the spec's text, the generator's version and the runtime header), so loading it again
costs a dlopen. The cache is $XDG_CACHE_HOME/vtlstack/parsers (~/.cache/... by default),
or a per-user directory under the system's temporary directory when that is not writable.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from vtlstack import _pgen, _pspec
from vtlstack.errors import CompilerError

_PKG = Path(__file__).resolve().parent
INCLUDE_DIR = _PKG / "_includes"
BUILTIN_DIR = _PKG / "_parsers"
CFLAGS = ["-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-unused-label"]


def find_compiler() -> list[str]:
    """The C compiler to use: $CC if set, else cc, gcc or clang from PATH."""
    cc = os.environ.get("CC")
    if cc:
        cmd = shlex.split(cc)
        if shutil.which(cmd[0]):
            return cmd
        raise CompilerError(f"CC={cc!r} is not an executable on PATH: record specs compile "
                            "to C and need a C compiler")
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise CompilerError("no C compiler found (cc, gcc or clang on PATH, or $CC): user record "
                        "specs compile to native code; install one, e.g. apt-get install gcc")


def compile_spec(spec: _pspec.Spec, out: Path) -> None:
    """Generate C for `spec` and compile it to the shared object `out` (written atomically)."""
    cc = find_compiler()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{spec.format}-", suffix=".so", dir=out.parent)
    os.close(fd)
    src = Path(tmp[:-3] + ".c")
    try:
        src.write_text(_pgen.generate(spec), encoding="utf-8")
        cmd = [*cc, *CFLAGS, "-I", str(INCLUDE_DIR), "-o", tmp, str(src)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise CompilerError(f"compiling the {spec.format} parser failed ({shlex.join(cmd)}):"
                                f"\n{res.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        src.unlink(missing_ok=True)
        Path(tmp).unlink(missing_ok=True)


def spec_key(spec_text: str) -> str:
    """What a compiled parser depends on, hashed: the spec, the generator, the runtime."""
    h = hashlib.sha256()
    h.update(f"generator {_pgen.GENERATOR_VERSION}\n".encode())
    h.update((INCLUDE_DIR / "vtlparse.h").read_bytes())
    h.update(spec_text.encode())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    """The first writable of $XDG_CACHE_HOME/vtlstack/parsers, ~/.cache/..., $TMPDIR/..."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates = [Path(base) / "vtlstack" / "parsers",
                  Path(tempfile.gettempdir()) / f"vtlstack-{os.getuid()}" / "parsers"]
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK | os.X_OK):
            return d
    raise CompilerError("no writable cache directory for compiled record specs (tried "
                        + ", ".join(str(d) for d in candidates) + "); set XDG_CACHE_HOME")


def cached_build(path: Path) -> tuple[Path, bool]:
    """The shared object for the spec file at `path`: (its path, whether it was compiled now).

    The spec is parsed (and a bad one rejected) even when a build is cached, so a SpecError
    never depends on the state of the cache.
    """
    text = path.read_text(encoding="utf-8")
    spec = _pspec.parse_spec(text)
    so = cache_dir() / f"{spec.format}-{spec_key(text)}.so"
    if so.exists():
        return so, False
    compile_spec(spec, so)
    return so, True


def build_builtins(specs: Path, outdir: Path) -> None:
    """Compile every specs/*.spec into outdir/<name>.so (setup.py calls this)."""
    for path in sorted(specs.glob("*.spec")):
        out = outdir / f"{path.stem}.so"
        print(f"generating and compiling parser {path.name} -> {out}")
        compile_spec(_pspec.load_spec(path), out)
