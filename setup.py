"""Build the Cython fast path and the eBPF objects.

The eBPF objects (bpf/*.bpf.c, compiled with clang -target bpf and BTF) and the shared
headers they are built from land in vtlstack/_bpf/; the built-in record parsers
(parsers/*.spec, generated to C and compiled) in vtlstack/_parsers/; parser specs, graft
manifests and the benchmark's C reference are copied into vtlstack/_data/. All of it ships
as package data, so only `vtlstack` is installed. `VTL_ONLY=_port,_fastpath python setup.py
build_ext --inplace` rebuilds a subset.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BPF_SRC = ROOT / "bpf"
# Shipped data: parser specs, graft manifests, and the C reference the port bench builds.
DATA_GLOBS = {"parsers": "**/*", "grafts": "**/*", "bench": "*.c"}

# One extension per hot domain; all link libxdp/libbpf so the xsk.h inlines resolve.
EXTENSIONS = {
    "_handoff": ["vtlstack/_handoff.pyx"],
    "_port": ["vtlstack/_port.pyx"],
    "_fastpath": ["vtlstack/_fastpath.pyx"],
    "_wire": ["vtlstack/_wire.pyx"],
    "_tcp": ["vtlstack/_tcp.pyx"],
    "_records": ["vtlstack/_records.pyx"],
    "_zc": ["vtlstack/_zc.pyx"],
    "_recstream": ["vtlstack/_recstream.pyx"],
    "_inspect": ["vtlstack/_inspect.pyx"],
}


def _extensions() -> list[Extension]:
    only = {name for name in os.environ.get("VTL_ONLY", "").split(",") if name}
    exts = []
    for name, sources in EXTENSIONS.items():
        if only and name not in only:
            continue
        if not all((ROOT / s).exists() for s in sources):
            continue
        exts.append(
            Extension(
                f"vtlstack.{name}",
                sources,
                include_dirs=["vtlstack/_includes", "bpf/include", numpy.get_include()],
                libraries=["xdp", "bpf"],
                extra_compile_args=["-O2", "-Wno-unused-function"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
        include_path=["vtlstack", "vtlstack/_includes"],
    )


def compile_bpf(outdir: Path) -> None:
    """clang -target bpf every bpf/*.bpf.c into outdir, with BTF (-g), plus the headers."""
    outdir.mkdir(parents=True, exist_ok=True)
    for src in sorted(BPF_SRC.glob("*.bpf.c")):
        obj = outdir / (src.name[: -len(".c")] + ".o")
        cmd = [
            "clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
            "-I", str(BPF_SRC / "include"), "-I", "/usr/include/x86_64-linux-gnu",
            "-c", str(src), "-o", str(obj),
        ]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
    for header in sorted((BPF_SRC / "include").glob("*.h")):
        shutil.copy2(header, outdir / header.name)
    # the sources ship too: a graft may be built from its source at runtime
    for src in sorted(BPF_SRC.glob("*.bpf.c")):
        shutil.copy2(src, outdir / src.name)


def copy_data(outdir: Path) -> None:
    for name, pattern in DATA_GLOBS.items():
        for src in sorted((ROOT / name).glob(pattern)):
            if src.is_file():
                dst = outdir / name / src.relative_to(ROOT / name)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


def compile_parsers(outdir: Path) -> None:
    """Generate C from every parsers/*.spec and compile it into outdir/<name>.so."""
    sys.path.insert(0, str(ROOT))
    try:
        from vtlstack._pbuild import build_builtins
    finally:
        sys.path.pop(0)
    build_builtins(ROOT / "parsers", outdir)


class BuildExt(build_ext):
    def run(self) -> None:
        base = ROOT if self.inplace else Path(self.build_lib)
        compile_bpf(base / "vtlstack" / "_bpf")
        compile_parsers(base / "vtlstack" / "_parsers")
        super().run()


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        copy_data(Path(self.build_lib) / "vtlstack" / "_data")


setup(
    packages=["vtlstack", "vtlstack.apps", "vtlstack.vtl"],
    package_dir={"vtlstack": "vtlstack", "vtlstack.apps": "apps"},
    package_data={"vtlstack": ["_bpf/*.o", "_bpf/*.h", "_bpf/*.bpf.c", "_data/**/*", "*.pyi",
                               "py.typed", "_parsers/*.so", "_includes/vtlparse.h"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
    zip_safe=False,
)
