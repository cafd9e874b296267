"""The VTL wire format, read from bpf/include/vtl.h (the one definition).

The header's declarations (everything outside its ``#ifdef __bpf__`` block) are parsed
with cffi; the ``struct`` format used to pack and unpack is derived from the fields of
``struct vtl_hdr`` (their sizes and offsets), so a field added to the header changes the
Python side too, and a layout cffi cannot express fails loudly at import.

Pure Python, no root: ``pack`` builds a packet with its checksum, ``unpack`` validates
length, version, type and checksum and raises ``WireError`` naming what is wrong.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Any

from vtlstack._resources import _REPO, bpf_path
from vtlstack.errors import VtlError

__all__ = [
    "Header", "WireError", "checksum", "pack", "pack_into", "unpack", "header_text", "ffi", "C",
]


class WireError(VtlError):
    """A VTL packet that is truncated, of another version, of unknown type or corrupt."""


def header_text() -> str:
    """vtl.h as shipped (the package's copy, or the checkout's bpf/include)."""
    try:
        return bpf_path("vtl.h").read_text()
    except VtlError:
        # A checkout whose package was not built yet: the source header is the same file.
        return (_REPO / "bpf" / "include" / "vtl.h").read_text()


def _declarations(text: str) -> str:
    """The header without preprocessor lines and without its eBPF-only block."""
    out, depth = [], 0
    for line in text.splitlines():
        s = line.strip()
        if depth:
            if s.startswith("#if"):
                depth += 1
            elif s.startswith("#endif"):
                depth -= 1
            continue
        if s.startswith("#ifdef __bpf__"):
            depth = 1
            continue
        if s.startswith("#"):
            continue
        out.append(line)
    return "\n".join(out)


def _load_ffi() -> tuple[Any, Any]:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(
        "typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32;"
        "typedef uint64_t __u64; typedef uint16_t __be16; typedef uint32_t __be32;"
        "struct bpf_spin_lock { uint32_t val; };\n" + _declarations(header_text())
    )
    # No library: dlopen(None) only exposes the enum constants as attributes.
    return ffi, ffi.dlopen(None)


ffi, C = _load_ffi()

_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _struct_format(ctype: str) -> tuple[str, tuple[str, ...]]:
    """'!'-format and field names of a header struct made of unsigned integers."""
    fmt, names, offset = "!", [], 0
    for name, field in ffi.typeof(ctype).fields:
        size = ffi.sizeof(field.type)
        if field.offset != offset or size not in _CODES or field.type.kind != "primitive":
            raise VtlError(f"{ctype}.{name}: not a packed unsigned integer field")
        fmt += _CODES[size]
        names.append(name)
        offset += size
    if offset != ffi.sizeof(ctype):
        raise VtlError(f"{ctype} has trailing padding")
    return fmt, tuple(names)


_FMT, FIELDS = _struct_format("struct vtl_hdr")
_HDR = struct.Struct(_FMT)
HDR_LEN: int = C.VTL_HDR_LEN
if _HDR.size != HDR_LEN:
    raise VtlError(f"vtl.h: struct vtl_hdr is {_HDR.size} bytes, VTL_HDR_LEN says {HDR_LEN}")
_CSUM_OFF: int = ffi.offsetof("struct vtl_hdr", "csum")
MAX_PAYLOAD: int = C.VTL_MAX_PAYLOAD
IPPROTO: int = C.VTL_IPPROTO
UDP_PORT: int = C.VTL_UDP_PORT
VERSION: int = C.VTL_VERSION


def _enum(prefix: str, ctype: str) -> dict[int, str]:
    return {v: k[len(prefix):] for v, k in ffi.typeof(ctype).elements.items()}


TYPES: dict[int, str] = _enum("VTL_", "enum vtl_type")          # 1 -> "DATA"
GRAFT_IDS: dict[int, str] = _enum("VTL_GRAFT_", "enum vtl_graft_id")
COUNTERS: dict[int, str] = {
    i: n.lower() for i, n in _enum("VTL_C_", "enum vtl_counter").items() if n != "MAX"
}


def checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 Internet checksum of data (the VTL csum field must be zero in it)."""
    b = bytes(data)
    if len(b) & 1:
        b += b"\0"
    # Summing 16-bit words in native order and swapping at the end gives the same result
    # as big-endian words (RFC 1071, 2.(B)): one C-level sum instead of a Python loop.
    s = sum(memoryview(b).cast("H"))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    s = ~s & 0xFFFF
    if sys.byteorder == "little":
        s = ((s & 0xFF) << 8) | (s >> 8)
    return s


@dataclass(frozen=True)
class Header:
    """A parsed VTL header (host-order values); ``payload`` is what follows it."""

    type: int
    session: int
    seq: int = 0
    ack: int = 0
    bits: int = 0
    graft: int = 0
    flags: int = 0
    version: int = VERSION
    payload: bytes = b""

    @property
    def type_name(self) -> str:
        return TYPES.get(self.type, f"type {self.type}")


def pack(h: Header) -> bytes:
    """The packet for h (header + payload), checksummed."""
    if len(h.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(h.payload)} bytes: at most {MAX_PAYLOAD}")
    raw = bytearray(HDR_LEN + len(h.payload))
    raw[HDR_LEN:] = h.payload
    pack_into(raw, h, len(h.payload))
    return bytes(raw)


def pack_into(buf: bytearray | memoryview, h: Header, length: int) -> int:
    """Write h's header in front of the ``length`` payload bytes already at
    ``buf[HDR_LEN:]`` and checksum the packet, in place (``h.payload`` is not used);
    returns the packet's length. A packet kept in a frame is resent this way."""
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes: at most {MAX_PAYLOAD}")
    values = {name: getattr(h, name, 0) for name in FIELDS}
    values["len"] = length
    values["csum"] = 0
    _HDR.pack_into(buf, 0, *(values[n] for n in FIELDS))
    end = HDR_LEN + length
    struct.pack_into("!H", buf, _CSUM_OFF, checksum(buf[:end]))
    return end


def unpack(packet: bytes | bytearray | memoryview) -> Header:
    """Parse and validate one VTL packet (starting at the VTL header)."""
    packet = bytes(packet)
    if len(packet) < HDR_LEN:
        raise WireError(f"truncated: {len(packet)} bytes, the VTL header alone is {HDR_LEN}")
    values = dict(zip(FIELDS, _HDR.unpack_from(packet), strict=True))
    if values["version"] != VERSION:
        raise WireError(f"version {values['version']}: this stack speaks VTL {VERSION}")
    if values["len"] != len(packet) - HDR_LEN:
        raise WireError(f"truncated: header says {values['len']} payload bytes, "
                        f"{len(packet) - HDR_LEN} present")
    if checksum(packet) != 0:
        raise WireError("bad checksum")
    if values["type"] not in TYPES:
        raise WireError(f"unknown packet type {values['type']}")
    return Header(
        type=values["type"], session=values["session"], seq=values["seq"],
        ack=values["ack"], bits=values["bits"], graft=values["graft"],
        flags=values["flags"], version=values["version"], payload=packet[HDR_LEN:],
    )
