"""The TCP wire format (vtlstack/proto/tcp.pxd): option parsing and emitting with golden
bytes, the layout compared with scapy, malformed lists, and the segments the engine writes
(header fields and checksums as scapy reads them)."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from vtlstack._port import FramePool
from vtlstack._tcp import TcpEngine, emit_options, parse_options, siphash

A, B = "10.0.0.1", "10.0.0.2"

# The SYN option block Linux sends: MSS, SACK-permitted, timestamps, NOP, window scale.
LINUX_SYN = bytes.fromhex("020405b4" "0402" "080a" "00000001" "00000002" "01" "030307")


def header(opts: bytes, dataofs=None) -> bytes:
    """A 20-byte TCP header followed by `opts` (padded with EOL to a multiple of 4)."""
    opts = opts + b"\0" * (-len(opts) % 4)
    t = TCP(sport=1, dport=2, dataofs=dataofs if dataofs is not None else 5 + len(opts) // 4)
    return bytes(t)[:20] + opts


def test_emit_syn_options_golden():
    d = {"mss": 1460, "sack_perm": True, "ts": (1, 2), "wscale": 7}
    assert emit_options(d) == LINUX_SYN
    assert parse_options(header(LINUX_SYN)) == d


def test_emit_layouts_are_nop_padded_multiples_of_four():
    cases = {
        "mss only": ({"mss": 536}, "02040218"),
        "ts only": ({"ts": (7, 9)}, "0101080a0000000700000009"),
        "sack_perm without ts": ({"mss": 1000, "sack_perm": True}, "020403e8" "04020101"),
        "wscale": ({"wscale": 14}, "0103030e"),
        "sack one block": ({"sack": [(10, 20)]}, "0101050a" "0000000a00000014"),
    }
    for name, (d, golden) in cases.items():
        raw = emit_options(d)
        assert raw.hex() == golden, name
        assert len(raw) % 4 == 0
        assert parse_options(header(raw)) == d, name


def test_sack_blocks_limited_by_option_space():
    blocks = [(i * 100, i * 100 + 50) for i in range(1, 5)]
    raw = emit_options({"ts": (1, 2), "sack": blocks})
    assert len(raw) <= 40
    d = parse_options(header(raw))
    assert d["sack"] == blocks[:3]            # with timestamps, 3 blocks fit
    raw = emit_options({"sack": blocks})
    assert parse_options(header(raw))["sack"] == blocks


def test_parse_agrees_with_scapy_for_any_order():
    t = TCP(options=[("WScale", 3), ("Timestamp", (123, 456)), ("NOP", None),
                     ("SAckOK", b""), ("MSS", 9000), ("SAck", (5, 10, 20, 30))])
    raw = bytes(t)
    assert parse_options(raw) == {"wscale": 3, "ts": (123, 456), "sack_perm": True,
                                  "mss": 9000, "sack": [(5, 10), (20, 30)]}


def test_emitted_options_read_back_by_scapy():
    raw = emit_options({"mss": 1400, "sack_perm": True, "ts": (5, 6), "wscale": 9})
    t = TCP(header(raw))
    got = {k: v for k, v in t.options if k != "NOP"}
    assert got == {"MSS": 1400, "SAckOK": b"", "Timestamp": (5, 6), "WScale": 9}


def test_eol_ends_the_list_and_unknown_kinds_are_skipped():
    raw = bytes.fromhex("fe04abcd" "020405b4" "00" "030307")   # unknown(254), MSS, EOL, junk
    assert parse_options(header(raw)) == {"mss": 1460}


def test_known_option_with_wrong_length_is_ignored():
    raw = bytes.fromhex("020305" "0402" "080600000001")      # MSS len 3, TS len 6
    assert parse_options(header(raw)) == {"sack_perm": True}


def test_wscale_above_14_is_clamped():
    # RFC 7323 2.3: "MUST use 14 instead"
    assert parse_options(header(bytes.fromhex("01030320")))["wscale"] == 14


@pytest.mark.parametrize("raw", [
    "0200",                  # length 0
    "0201",                  # length 1
    "01010208" "05b4",       # MSS claims 8 bytes, runs past the header
    "010101" "03",           # a kind with no room for its length
    "080a00000001",          # timestamps cut short
])
def test_malformed_option_lists_are_rejected(raw):
    assert parse_options(header(bytes.fromhex(raw))) is None


@given(st.binary(max_size=40))
def test_any_option_bytes_parse_or_reject_without_crash(raw):
    raw = raw + b"\0" * (-len(raw) % 4)
    d = parse_options(header(raw))
    assert d is None or isinstance(d, dict)
    if d is not None:
        # what parsed re-emits and parses to the same thing (the emitter is canonical)
        again = dict(d)
        if "sack" in again:
            again["sack"] = again["sack"][:4]
        assert parse_options(header(emit_options(again))) == again


def test_engine_segments_are_valid_ipv4_tcp_with_checksums():
    pool = FramePool(64)
    eng = TcpEngine(pool, 4, seed=3)
    eng.connect(A, 1234, B, 80, 10**9)
    (raw,) = eng.segments()
    ip = IP(raw)
    assert ip.src == A and ip.dst == B and ip.proto == 6 and ip.len == len(raw)
    assert ip.flags == "DF" and ip.ttl == 64
    ip_ck, tcp_ck = ip.chksum, ip[TCP].chksum
    del ip.chksum
    del ip[TCP].chksum
    again = IP(bytes(ip))
    assert (again.chksum, again[TCP].chksum) == (ip_ck, tcp_ck)
    assert ip[TCP].sport == 1234 and ip[TCP].dport == 80 and ip[TCP].flags == "S"
    assert ip[TCP].dataofs * 4 == 20 + len(LINUX_SYN)


def test_payload_checksums_of_every_alignment():
    pool = FramePool(64)
    a = TcpEngine(pool, 4, seed=1, timestamps=False)
    b = TcpEngine(pool, 4, seed=2, timestamps=False)
    now = 10**9
    lid = b.listen(B, 80)
    ca = a.connect(A, 1234, B, 80, now)
    for _ in range(3):
        for s in a.segments():
            assert b.feed(s, now)
        for s in b.segments():
            assert a.feed(s, now)
    cb = b.accept(lid)
    assert cb is not None
    a.set_nodelay(ca, True, now)               # each send goes out at once
    rng = random.Random(5)
    for n in (3, 1, 7, 8, 9, 31, 32, 33, 64, 1001, 1447, 1448):
        data = rng.randbytes(n)
        a.send(ca, data, now)
        out = a.segments()
        got = b""
        for raw in out:         # one segment, or two where the send queue's frame fills
            ip = IP(raw)
            got += bytes(ip[TCP].payload)
            sent = ip[TCP].chksum
            del ip[TCP].chksum
            assert IP(bytes(ip))[TCP].chksum == sent, n   # scapy agrees
        assert got == data
        for s in out:
            assert b.feed(s, now), n               # and our own check verifies it
        assert b.recv(cb, now) == data
        for s in b.segments():
            a.feed(s, now)
    bad = bytearray(raw)
    bad[-1] ^= 1
    assert not b.feed(bytes(bad), now)
    assert b.counters()["bad_checksum"] == 1
    a.abort(ca, now)
    b.abort(cb, now)
    a.close(ca, now)
    b.close(cb, now)
    b.close(lid, now)
    a.segments()
    b.segments()
    pool.check_frames(expect_idle=True)


def test_pending_output_keeps_its_payload_frame_until_popped():
    pool = FramePool(64)
    a = TcpEngine(pool, 4, seed=1, timestamps=False)
    b = TcpEngine(pool, 4, seed=2, timestamps=False)
    now = 10**9
    b.listen(B, 80)
    ca = a.connect(A, 1234, B, 80, now)
    for _ in range(3):
        for s in a.segments():
            b.feed(s, now)
        for s in b.segments():
            a.feed(s, now)
    held = pool.stats()["held"]
    a.send(ca, bytes(1000), now)
    assert pool.stats()["held"] == held + 1      # one send-queue frame
    assert a.counters()["pending_out"] == 1      # its segment, not yet written out
    a.abort(ca, now)
    a.close(ca, now)                             # the send queue lets go ...
    assert pool.stats()["held"] == held + 1      # ... but the pending segment holds it
    out = a.segments()
    assert [IP(s)[TCP].flags for s in out] == ["PA", "R"]
    assert len(IP(out[0])[TCP].payload) == 1000
    assert pool.stats()["held"] == held          # written out: the frame is free
    for cid in range(4):
        if b.exists(cid):
            b.abort(cid, now)
            b.close(cid, now)
    b.segments()
    pool.check_frames(expect_idle=True)


def test_siphash_reference_vector():
    # SipHash-2-4 paper, appendix A: key 00..0f, message 00..0e
    assert siphash(bytes(range(16)), bytes(range(15))) == 0xA129CA6149BE45E5
    assert siphash(bytes(range(16)), b"") == 0x726FDB47DD0E0E31


def test_isn_differs_per_engine_key_and_per_tuple():
    def syn_seq(seed, lport):
        eng = TcpEngine(FramePool(16), 4, seed=seed)
        eng.connect(A, lport, B, 80, 10**9)
        return IP(eng.segments()[0])[TCP].seq

    assert syn_seq(1, 1000) == syn_seq(1, 1000)          # a seed makes runs repeatable
    assert syn_seq(1, 1000) != syn_seq(2, 1000)          # the key changes F()
    assert syn_seq(1, 1000) != syn_seq(1, 1001)          # so does the 4-tuple
    assert syn_seq(None, 1000) != syn_seq(None, 1000)    # unseeded: a random key
