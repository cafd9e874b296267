"""The steering program itself, on golden frames, through BPF_PROG_TEST_RUN (no namespace,
nothing attached). Each frame names the counter it must bump; with no AF_XDP socket in the
XSKMAP a frame the program would redirect shows up as "no_socket"."""

import socket
import struct

import pytest

from vtlstack.xdp import dry_run

pytestmark = pytest.mark.root

TCP, UDP, VTL = 6, 17, 253
OWNED = {(UDP, 9000), (TCP, 8080), (VTL, 7000)}
ETH = bytes.fromhex("020000000002" "020000000001")


def ipv4(proto: int, l4: bytes, *, ihl: int = 5, version: int = 4, frag: int = 0x4000,
         tot_len: int | None = None) -> bytes:
    opts = b"\x01" * (ihl * 4 - 20) if ihl >= 5 else b""
    hdr = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0,
                      tot_len or 20 + len(opts) + len(l4), 1, frag, 64, proto, 0,
                      socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"))
    return ETH + b"\x08\x00" + hdr + opts + l4


def udp(dport: int, payload: bytes = b"x" * 18) -> bytes:
    return struct.pack("!HHHH", 4000, dport, 8 + len(payload), 0) + payload


def tcp(dport: int, sport: int = 4000) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


CASES = [
    ("udp to owned port", ipv4(UDP, udp(9000)), "no_socket"),
    ("udp to another port", ipv4(UDP, udp(9001)), "passed"),
    ("tcp to owned port", ipv4(TCP, tcp(8080)), "no_socket"),
    ("tcp to a port owned for udp only", ipv4(TCP, tcp(9000)), "passed"),
    ("vtl protocol 253 to owned port", ipv4(VTL, udp(7000)), "no_socket"),
    ("icmp echo", ipv4(1, b"\x08\x00\xf7\xff\x00\x00\x00\x00"), "passed"),
    ("arp", ETH + b"\x08\x06" + bytes(28), "passed"),
    ("vlan tagged (the kernel's)", ETH + b"\x81\x00\x00\x01\x08\x00" + bytes(40), "passed"),
    ("ipv6", ETH + b"\x86\xdd" + b"\x60" + bytes(39) + udp(9000), "passed"),
    ("ipv6 truncated", ETH + b"\x86\xdd" + b"\x60" + bytes(9), "malformed"),
    ("ipv4 ethertype, no header", ETH + b"\x08\x00", "malformed"),
    ("ipv4 header cut at 10 bytes", ipv4(UDP, udp(9000))[:24], "malformed"),
    ("ipv4 version 6", ipv4(UDP, udp(9000), version=6), "malformed"),
    ("ihl below 5", ipv4(UDP, udp(9000), ihl=4), "malformed"),
    ("ihl past the frame end", ipv4(UDP, b"", ihl=15)[:34], "malformed"),
    ("ip options, udp to owned port", ipv4(UDP, udp(9000), ihl=8), "no_socket"),
    ("first fragment (MF) to owned port", ipv4(UDP, udp(9000), frag=0x2000), "passed"),
    ("later fragment", ipv4(UDP, udp(9000), frag=0x0010), "passed"),
    ("udp header cut before dst port", ipv4(UDP, udp(9000))[:36], "malformed"),
    ("udp header cut after dst port", ipv4(UDP, udp(9000))[:38], "no_socket"),
]


def test_golden_frames():
    got = dry_run([frame for _, frame, _ in CASES], OWNED)
    wrong = [(name, want, g) for (name, _, want), g in zip(CASES, got, strict=True)
             if g != want]
    assert not wrong, wrong


def test_every_truncation_of_an_owned_frame_is_safe():
    # Cut an owned datagram at every length: the program never crashes, never redirects a
    # frame too short to hold the destination port, and redirects once the port is there.
    frame = ipv4(UDP, udp(9000))
    lengths = list(range(14, len(frame) + 1))
    got = dry_run([frame[:n] for n in lengths], OWNED)
    for n, g in zip(lengths, got, strict=True):
        assert g == ("no_socket" if n >= 14 + 20 + 4 else "malformed"), (n, g)


def test_source_ports_owned_for_a_transparent_proxy():
    # A server's answers to connections made in a client's name carry only the server's
    # port as ours: owned as a source port, for its protocol only.
    frames = [ipv4(TCP, tcp(41000, sport=80)), ipv4(TCP, tcp(41000, sport=81)),
              ipv4(UDP, udp(41000)), ipv4(TCP, tcp(80, sport=41000))]
    assert dry_run(frames, set(), {(TCP, 80)}) == ["no_socket", "passed", "passed", "passed"]
