"""The VTL wire format (vtlstack.vtl.wire): no root, no kernel."""

import struct

import pytest

from vtlstack.vtl import wire
from vtlstack.vtl.wire import C, Header, WireError, checksum, pack, unpack


def test_layout_comes_from_the_header():
    assert wire.HDR_LEN == 24 == wire.ffi.sizeof("struct vtl_hdr")
    assert wire.FIELDS == ("version", "type", "graft", "flags", "session", "seq", "ack",
                           "bits", "len", "csum")
    assert wire.IPPROTO == 253
    assert wire.TYPES[C.VTL_NEGO_NACK] == "NEGO_NACK"
    assert wire.COUNTERS[C.VTL_C_DROP_CSUM] == "drop_csum"


def test_rfc1071_example():
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF   # odd length: zero-padded


def test_golden_bytes():
    pkt = pack(Header(type=C.VTL_DATA, session=0x01020304, seq=5, ack=6, bits=7,
                      graft=C.VTL_GRAFT_SR, flags=C.VTL_F_RETX, payload=b"hi"))
    assert pkt[:22] == bytes.fromhex("0101020201020304000000050000000600000007") + b"\0\x02"
    assert checksum(pkt) == 0                      # a valid packet sums to zero
    assert pkt[-2:] == b"hi"


@pytest.mark.parametrize("payload", [b"", b"x", b"abc", bytes(range(256)) * 5,
                                     b"\xff" * wire.MAX_PAYLOAD])
def test_roundtrip(payload):
    h = Header(type=C.VTL_DATA, session=0xDEADBEEF, seq=2**32 - 1, graft=C.VTL_GRAFT_PR,
               payload=payload)
    assert unpack(pack(h)) == h


def test_truncated():
    pkt = pack(Header(type=C.VTL_DATA, session=1, payload=b"payload"))
    for cut in (0, 1, 23):
        with pytest.raises(WireError, match="truncated"):
            unpack(pkt[:cut])
    with pytest.raises(WireError, match="truncated"):
        unpack(pkt[:-1])                           # len field says more than is there
    with pytest.raises(WireError, match="truncated"):
        unpack(pkt + b"\0")                        # or less


def test_bad_version():
    pkt = bytearray(pack(Header(type=C.VTL_ACK, session=1)))
    pkt[0] = 2
    with pytest.raises(WireError, match="version 2"):
        unpack(pkt)


def test_bad_checksum_every_bit():
    pkt = pack(Header(type=C.VTL_DATA, session=9, seq=3, payload=b"integrity"))
    for i in range(len(pkt) * 8):
        bad = bytearray(pkt)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(WireError):
            unpack(bad)


def test_unknown_type():
    raw = bytearray(pack(Header(type=C.VTL_ACK, session=1)))
    raw[1] = 99
    struct.pack_into("!H", raw, 22, 0)
    struct.pack_into("!H", raw, 22, checksum(raw))
    with pytest.raises(WireError, match="unknown packet type 99"):
        unpack(raw)


def test_oversized_payload_refused():
    with pytest.raises(ValueError, match="at most"):
        pack(Header(type=C.VTL_DATA, session=1, payload=bytes(wire.MAX_PAYLOAD + 1)))
