"""The network thread's frame parsing and building, sans-IO: golden frames from scapy,
every truncation, corrupted fields. No root needed."""

import socket
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from vtlstack._fastpath import build_udp_frame, parse_udp_frame

A_MAC, B_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def ip_net(ip: str) -> int:
    return struct.unpack("=I", socket.inet_aton(ip))[0]


def golden(payload=b"hello", **ip_kw) -> bytes:
    return bytes(Ether(src=A_MAC, dst=B_MAC) / IP(src="10.0.0.1", dst="10.0.0.2", **ip_kw)
                 / UDP(sport=4000, dport=7) / payload)


def test_golden_frame_parses():
    verdict, v = parse_udp_frame(golden(b"payload!"))
    assert verdict == "ok"
    assert (v["sport"], v["dport"], v["payload_len"]) == (4000, 7, 8)
    assert v["src"] == ip_net("10.0.0.1") and v["dst"] == ip_net("10.0.0.2")
    assert golden(b"payload!")[v["payload_off"]:][:8] == b"payload!"


def test_ethernet_padding_is_not_payload():
    frame = golden(b"x") + bytes(20)  # short frames arrive padded to 60 bytes
    verdict, v = parse_udp_frame(frame)
    assert verdict == "ok" and v["payload_len"] == 1 and v["frame_len"] == len(golden(b"x"))


def test_every_truncation_is_rejected_not_read_past():
    frame = golden(b"0123456789")
    for cut in range(len(frame)):
        verdict, _ = parse_udp_frame(frame[:cut])
        assert verdict in ("malformed", "not_ours"), cut


def _set(offset: int, data: bytes):
    def mutate(frame: bytearray) -> None:
        frame[offset:offset + len(data)] = data
    return mutate


def _flip(offset: int):
    def mutate(frame: bytearray) -> None:
        frame[offset] ^= 0xFF
    return mutate


@pytest.mark.parametrize("mutate,expect", [
    (_set(14, b"\x65"), "malformed"),          # IP version 6 in an IPv4 ethertype
    (_set(14, b"\x44"), "malformed"),          # IHL 4: shorter than the minimum header
    (_set(16, b"\xff\xff"), "malformed"),      # IP total length beyond the frame
    (_flip(24), "bad_checksum"),               # IP header checksum broken
    (_set(38, b"\x00\x04"), "malformed"),      # UDP length < 8
    (_set(38, b"\x04\x00"), "malformed"),      # UDP length beyond the IP payload
    (_flip(41), "bad_checksum"),               # UDP checksum broken
    (_flip(49), "bad_checksum"),               # payload corrupted in flight
], ids=["ipv6-version", "short-ihl", "ip-len", "ip-csum", "udp-short", "udp-long",
        "udp-csum", "payload"])
def test_corrupted_fields(mutate, expect):
    frame = bytearray(golden(b"abcdefgh"))
    mutate(frame)
    assert parse_udp_frame(bytes(frame))[0] == expect


def test_zero_udp_checksum_means_not_computed():
    frame = bytearray(golden(b"abc"))
    frame[40:42] = b"\x00\x00"
    assert parse_udp_frame(bytes(frame))[0] == "ok"


def test_fragments_and_other_protocols_are_not_ours_or_rejected():
    assert parse_udp_frame(bytes(Ether() / ARP()))[0] == "not_ours"
    assert parse_udp_frame(bytes(Ether() / IP(proto=1) / b"icmp"))[0] == "not_ours"
    assert parse_udp_frame(golden(b"x" * 30, flags="MF"))[0] == "malformed"


def test_built_frame_matches_scapy_checksums():
    payload = b"odd-length payload"
    frame = build_udp_frame(bytes.fromhex(B_MAC.replace(":", "")),
                            bytes.fromhex(A_MAC.replace(":", "")),
                            ip_net("10.0.0.1"), ip_net("10.0.0.2"), 4000, 7, payload)
    pkt = Ether(frame)
    ip_sum, udp_sum = pkt[IP].chksum, pkt[UDP].chksum
    del pkt[IP].chksum, pkt[UDP].chksum
    again = Ether(bytes(pkt))
    assert (ip_sum, udp_sum) == (again[IP].chksum, again[UDP].chksum)
    assert pkt[UDP].load == payload and pkt[IP].flags == "DF" and pkt[IP].ttl == 64
    assert parse_udp_frame(frame)[0] == "ok"
