"""Record parsers generated from declarative specs: CSV, HTTP/1.1, RESP, and your own.

    p = vtlstack.parsers.load("csv", delimiter=";")
    s = p.stream()
    for rec in s.feed(chunk):          # the records these bytes completed
        print(rec.as_dict())           # {"fields": [b"a", b"b"]}
    last = s.close()                   # a record ended by the end of the stream, or None

A spec (parsers/README.md) compiles to C; the built-in ones are compiled when vtlstack is
built, others on first load into a cache. Feeding is incremental at any byte boundary and
never copies the stream: a record keeps its fields as spans until as_dict() is called.
"""

from __future__ import annotations

import os
from pathlib import Path

from vtlstack import _pbuild
from vtlstack._records import Library, Record, RespError
from vtlstack._records import Stream as _Stream
from vtlstack.errors import CompilerError, ParseError, SpecError, VtlError

__all__ = ["BUILTINS", "CompilerError", "ParseError", "Parser", "Record", "RespError",
           "SpecError", "Stream", "load"]

BUILTINS = ("csv", "http_request", "http_response", "resp")

# HTTP methods whose responses are framed differently (RFC 9112 6.3), as the http_response
# spec's `input $method` expects them.
_METHOD_CODES = {b"HEAD": 1, b"CONNECT": 2}

_libraries: dict[str, Library] = {}


class Stream:
    """An incremental parser over one byte stream. Not thread-safe: one feeder at a time."""

    def __init__(self, lib: Library, params: list[int], header: bool) -> None:
        self._s = _Stream(lib, params, header)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Record]:
        """Parse the next bytes; return the records they completed, in order.

        Raises ParseError (with .offset and .reason) on bad input; the records the same
        bytes completed before the error are in its .records. The stream is dead after it.
        """
        return self._s.feed(data)

    def close(self) -> Record | None:
        """End the stream: return the record the end completes (a CSV row without a final
        newline, a response read until close), None if it ended between records, or raise
        ParseError if it ended inside a record that cannot end there."""
        records = self._s.close()
        return records[0] if records else None

    def expect_response_to(self, method: bytes) -> None:
        """http_response: the next response answers a request with this method (a queue,
        for pipelining: call it once per request sent). Without it a response is read as
        the answer to a GET."""
        self._s.push(_METHOD_CODES.get(bytes(method).upper(), 0))

    @property
    def header(self) -> list[bytes] | None:
        """csv with header=True: the header row's fields, once it has been read."""
        rec = self._s.header_record
        if rec is None:
            return None
        d = rec.as_dict()
        return d["fields"] if "fields" in d else d


class Parser:
    """A loaded parser: `stream()` starts a stream over its format with its options."""

    def __init__(self, name: str, lib: Library, params: list[int], header: bool,
                 compiled: bool) -> None:
        self.name = name
        self.path = Path(lib.path)
        self.compiled = compiled  # True when this load compiled the spec (a cache miss)
        self._lib = lib
        self._params = params
        self._header = header

    @property
    def format(self) -> str:
        return self._lib.meta["format"]

    def stream(self) -> Stream:
        return Stream(self._lib, self._params, self._header)

    def __repr__(self) -> str:
        return f"<Parser {self.name} ({self.path})>"


def _library(path: Path) -> Library:
    key = str(path)
    if key not in _libraries:
        _libraries[key] = Library(key)
    return _libraries[key]


def _option_value(fmt: str, name: str, kind: str, value: object) -> int:
    if kind == "byte":
        if isinstance(value, str):
            value = value.encode("latin-1")
        if isinstance(value, (bytes, bytearray)) and len(value) == 1:
            return value[0]
        if isinstance(value, int) and 0 <= value <= 255:
            return value
        raise ValueError(f"{fmt} option {name} is one byte, not {value!r}")
    if kind == "flag":
        if not isinstance(value, bool):
            raise ValueError(f"{fmt} option {name} is True or False, not {value!r}")
        return int(value)
    if not isinstance(value, int):
        raise ValueError(f"{fmt} option {name} is an integer, not {value!r}")
    return value


def load(name_or_path: str | os.PathLike, **options: object) -> Parser:
    """A parser for a built-in format ("csv", "http_request", "http_response", "resp") or
    for the spec file at a path (compiled on first use, then cached).

    Options are the spec's `option` lines (csv: delimiter, quote, header). Raises SpecError
    for a bad spec, CompilerError when a spec cannot be compiled (e.g. no C compiler).
    """
    name = os.fspath(name_or_path)
    compiled = False
    if name in BUILTINS:
        so = _pbuild.BUILTIN_DIR / f"{name}.so"
        if not so.exists():
            raise VtlError(f"{so} is missing: the built-in parsers are compiled when vtlstack "
                           "is built (pip install . or python setup.py build_ext --inplace)")
    else:
        path = Path(name)
        if not path.is_file():
            raise VtlError(f"no built-in parser {name!r} ({', '.join(BUILTINS)}) and no spec "
                           "file at that path")
        so, compiled = _pbuild.cached_build(path)
    lib = _library(so)
    fmt = lib.meta["format"]
    declared = {o["name"]: o for o in lib.meta["options"]}
    unknown = set(options) - set(declared)
    if unknown:
        raise TypeError(f"{fmt} has no option {', '.join(sorted(unknown))} (its options: "
                        f"{', '.join(declared) or 'none'})")
    params = [_option_value(fmt, o["name"], o["kind"], options[o["name"]])
              if o["name"] in options else o["default"] for o in lib.meta["options"]]
    header = bool(options.get("header", False)) if "header" in declared else False
    _Stream(lib, params, header)  # the parser checks its options (e.g. delimiter != quote)
    return Parser(name, lib, params, header, compiled)
