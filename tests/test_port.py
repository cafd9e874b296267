"""The device edge on a real pair testbed: steering, the AF_XDP port, and cleanup.

The server side runs in the server namespace as a child process (tests/_xsk_scenarios.py),
which also gives it a private mount namespace; the client side is the kernel's own UDP
and AF_PACKET sockets in the client namespace. Waits poll for a condition with a deadline.
"""

import json
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vtlstack._resources import bpf_path

pytestmark = pytest.mark.root

SCENARIOS = str(Path(__file__).with_name("_xsk_scenarios.py"))
PORT = 9000


@pytest.fixture(scope="module")
def tb():
    from vtlstack.testbed import Testbed

    bpf_path("steer")  # fail early, with the build hint, if the object is missing
    with Testbed.up(topology="pair") as bed:
        yield bed


class Server:
    """A scenario running in the server namespace; stdin tells it the client is done."""

    def __init__(self, tb, scenario: str, *args: str) -> None:
        # -P: the installed package, never a source checkout that happens to be the cwd.
        self.proc = tb.popen(
            "server",
            [sys.executable, "-P", SCENARIOS, scenario, tb.host("server").iface.name, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not r:
                break
            line = self.proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:
                break
        self.proc.kill()
        out, err = self.proc.communicate(timeout=10)
        pytest.fail(f"scenario not ready: {out}\n{err}")

    def finish(self, timeout: float = 30) -> dict:
        try:
            out, err = self.proc.communicate("\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            pytest.fail(f"scenario hung: {out}\n{err}")
        assert self.proc.returncode == 0, f"scenario failed:\n{out}\n{err}"
        return json.loads(out.strip().splitlines()[-1])


def run(tb, scenario: str, *args: str) -> dict:
    """A scenario that needs nothing from the client side: its result."""
    return Server(tb, scenario, *args).finish()


def client_py(tb, code: str, *args: str, timeout: float = 30) -> str:
    proc = tb.exec("client", [sys.executable, "-c", code, *args], capture_output=True,
                   text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def xdp_prog_ids(tb, host: str) -> list[int]:
    ifname = tb.host(host).iface.name
    out = tb.exec(host, ["ip", "-j", "-d", "link", "show", "dev", ifname],
                  capture_output=True, text=True, check=True).stdout
    xdp = json.loads(out)[0].get("xdp", {})
    ids = [p["id"] for p in xdp.get("attached", []) if "id" in p]
    if "prog" in xdp:
        ids.append(xdp["prog"]["id"])
    return ids


def ipv4_csum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src_mac, dst_mac, src_ip, dst_ip, sport, dport, payload: bytes) -> bytes:
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 1, 0x4000,
                               64, 17, 0, socket.inet_aton(src_ip), socket.inet_aton(dst_ip)))
    struct.pack_into("!H", ip, 10, ipv4_csum(bytes(ip)))
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)  # no UDP checksum (IPv4)
    return (bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
            + b"\x08\x00" + bytes(ip) + udp + payload)


UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port, payload in zip(sys.argv[2::2], sys.argv[3::2]):
    s.sendto(payload.encode(), (sys.argv[1], int(port)))
"""


def test_owned_port_to_xsk_everything_else_to_kernel(tb):
    srv = tb.host("server").iface
    server = Server(tb, "steer_split", "3")
    server.wait_ready()
    client_py(tb, UDP_SEND, srv.ip, str(PORT), "a", str(PORT), "b", str(PORT), "c",
              str(PORT + 1), "to-kernel")
    # ICMP (and the ARP before it) still reach the kernel while steering is attached.
    rtts = tb.ping("client", srv.ip, count=5, timeout=1.0)
    res = server.finish()
    assert all(r is not None for r in rtts), rtts
    assert sorted(res["payloads"]) == ["a", "b", "c"]
    assert set(res["xsk_ports"]) == {PORT}
    assert res["kernel"] == "to-kernel"
    assert res["counters"]["redirected"] == 3
    assert res["counters"]["passed"] >= 1
    assert res["counters"]["malformed"] == 0
    assert res["stats"]["rx_packets"] == 3
    assert res["left"] == []


def test_disown_gives_the_port_back_to_the_kernel(tb):
    srv = tb.host("server").iface
    server = Server(tb, "disown")
    server.wait_ready()
    client_py(tb, UDP_SEND, srv.ip, str(PORT), "owned")
    server.wait_ready()  # disowned now
    client_py(tb, UDP_SEND, srv.ip, str(PORT), "disowned")
    res = server.finish()
    assert res["xsk"] == ["owned"]
    assert res["kernel"] == "disowned"
    assert res["late"] == 0 and res["owned"] == []


def test_rx_burst_leaves_frames_for_tx(tb):
    srv = tb.host("server").iface
    server = Server(tb, "fill_cap")
    server.wait_ready()
    client_py(tb, """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3000):
    s.sendto(b"burst", (sys.argv[1], int(sys.argv[2])))
""", srv.ip, str(PORT))
    res = server.finish()
    assert res["after_refill"]["k_fill_empty"] > 0  # the burst really ran the ring dry
    assert res["refilled"] == 0
    assert res["after_refill"]["free"] >= 4096 - 2048
    assert res["got"] > 0
    assert res["max_fill"] <= 2048
    assert res["stats"]["free"] >= 4096 - 2048
    assert res["stats"]["held"] == 0


def test_send_reaches_client_kernel_socket(tb):
    srv, cli = tb.host("server").iface, tb.host("client").iface
    frame = udp_frame(srv.mac, cli.mac, srv.ip, cli.ip, PORT, 7000, b"from-xsk")
    receiver = tb.popen(
        "client",
        [sys.executable, "-c", """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7000)); s.settimeout(5)
print("ready", flush=True)
got = []
deadline = time.monotonic() + 5
while len(got) < 3 and time.monotonic() < deadline:
    try:
        got.append(s.recv(2048).decode())
    except TimeoutError:
        break
print(",".join(got), flush=True)
"""],
        stdout=subprocess.PIPE, text=True,
    )
    assert receiver.stdout.readline().strip() == "ready"
    server = Server(tb, "send_frames", frame.hex(), "3")
    server.wait_ready()
    res = server.finish()
    out, _ = receiver.communicate(timeout=15)
    assert res["sent"] == 3
    assert res["stats"]["tx_packets"] == 3
    assert out.strip().split(",") == ["from-xsk"] * 3
    # The kernel writes this UMEM too: its pool refuses to export the area.
    assert "AF_XDP socket shares this UMEM" in res["exported"]


def test_echo_loop_answers_kernel_udp_client(tb):
    srv = tb.host("server").iface
    server = Server(tb, "echo", "4")
    server.wait_ready()
    out = client_py(tb, """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
ok = 0
deadline = time.monotonic() + 3
for i in range(20):
    msg = f"ping-{i}".encode()
    s.sendto(msg, (sys.argv[1], int(sys.argv[2])))
    try:
        data, addr = s.recvfrom(2048)
    except TimeoutError:
        continue
    ok += data == msg and addr == (sys.argv[1], int(sys.argv[2]))
    if time.monotonic() > deadline:
        break
print(ok)
""", srv.ip, str(PORT))
    res = server.finish()
    assert int(out) == 20
    assert res["echoed"] >= 20


def test_steering_detached_after_close_and_exception(tb):
    res = run(tb, "lifecycle")
    assert res["during"] == ["vtl_steer"]
    assert res["during2"] == ["vtl_steer"]
    assert res["after_close"] == []
    assert res["after_exception"] == []
    assert xdp_prog_ids(tb, "server") == []


def test_errors_name_cause_and_fix(tb):
    res = run(tb, "errors")
    assert res["no_iface_port"][0] == "InterfaceError"
    assert res["no_iface_steer"][0] == "InterfaceError"
    assert res["zerocopy"][0] == "KernelFeatureError"
    assert "zerocopy=False" in res["zerocopy"][1]
    assert res["bad_queue"][0] == "InterfaceError"
    for _kind, msg in (v for v in res.values() if v):
        assert "\n" not in msg


FOREIGN = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int foreign_pass(struct xdp_md *ctx) { return XDP_PASS; }
char _license[] SEC("license") = "GPL";
"""


def test_foreign_xdp_program_is_not_clobbered(tb, tmp_path):
    src = tmp_path / "foreign.bpf.c"
    src.write_text(FOREIGN)
    obj = tmp_path / "foreign.bpf.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I",
                    "/usr/include/x86_64-linux-gnu", "-c", str(src), "-o", str(obj)],
                   check=True)
    ifname = tb.host("server").iface.name
    tb.exec("server", ["ip", "link", "set", "dev", ifname, "xdpgeneric", "obj", str(obj),
                       "sec", "xdp"], check=True)
    try:
        before = xdp_prog_ids(tb, "server")
        assert before
        res = run(tb, "foreign")
        assert res["raised"][0] == "XdpBusyError"
        assert ifname in res["raised"][1] and "xdp off" in res["raised"][1]
        assert xdp_prog_ids(tb, "server") == before
    finally:
        tb.exec("server", ["ip", "link", "set", "dev", ifname, "xdpgeneric", "off"])
    assert xdp_prog_ids(tb, "server") == []


MALFORMED = """
import socket, struct, sys
ifname, dst, src, frames = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
for f in frames:
    s.send(bytes.fromhex(f))
"""


def test_malformed_frames_are_passed_and_counted(tb):
    srv, cli = tb.host("server").iface, tb.host("client").iface
    good = udp_frame(cli.mac, srv.mac, cli.ip, srv.ip, 4000, PORT, b"marker")
    eth = good[:14]
    ip = good[14:34]
    junk = [
        eth,                                        # IPv4 ethertype, no IP header
        eth + ip[:7],                               # truncated IP header
        eth + bytes([0x4F]) + ip[1:],               # IHL says 60 bytes, 20 present
        eth + bytes([0x65]) + ip[1:] + good[34:],   # version 6 in an IPv4 frame
        eth + ip + good[34:36],                     # UDP header cut before the dst port
        eth[:12] + b"\x86\xdd" + b"\x60" * 10,      # truncated IPv6
    ]
    server = Server(tb, "malformed")
    server.wait_ready()
    client_py(tb, MALFORMED, cli.name, srv.mac, cli.mac, *(f.hex() for f in junk + [good]))
    res = server.finish()
    assert res["marker"]
    assert res["counters"]["malformed"] >= len(junk)
    assert res["counters"]["redirected"] == res["frames"] == 1
    assert res["stats"]["bad_ops"] == 0
