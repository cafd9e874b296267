"""The stack on a real testbed: the network thread answers a Linux UDP client through
AF_XDP, the application path works through the handoff channels, bad frames are counted,
the thread sleeps when idle, and every exit path leaves the interface clean."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from vtlstack.apps._common import vtl_argv

from vtlstack._resources import bpf_path
from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

PORT = 7777

CLIENT = r"""
import json, socket, sys
peer = (sys.argv[1], int(sys.argv[2]))
sizes = [1, 7, 8, 64, 100, 512, 1000, 1400, 1472]
bad = 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(2)
    for i in range(int(sys.argv[3])):
        data = bytes([i & 0xFF]) * sizes[i % len(sizes)]
        s.sendto(data, peer)
        answer, src = s.recvfrom(2048)
        bad += answer != data or src != peer
print(json.dumps({"bad": bad}))
"""

GARBAGE = r"""
import sys
from scapy.all import Ether, IP, UDP, Raw, sendp, conf
conf.verb = 0
iface, dmac, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
good = Ether(dst=dmac) / IP(dst=dst) / UDP(sport=5555, dport=port) / b"payload"
frames = []
raw = bytes(good)
for cut in range(14, len(raw)):
    frames.append(raw[:cut])                       # every truncation
b = bytearray(raw); b[-1] ^= 0xFF; frames.append(bytes(b))            # bad UDP checksum
b = bytearray(raw); b[24] ^= 0xFF; frames.append(bytes(b))            # bad IP checksum
b = bytearray(raw); b[38:40] = b"\xff\xff"; frames.append(bytes(b))   # UDP length too big
b = bytearray(raw); b[14] = 0x4F; frames.append(bytes(b))             # options beyond packet
sendp([Raw(f) for f in frames], iface=iface)
print(len(frames))
"""


def read_event(proc: subprocess.Popen, name: str, timeout: float = 20.0) -> dict:
    """The next JSON line with event == name from a process we started (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"process exited before {name!r}: {proc.stderr.read()}")
        event = json.loads(line)
        if event.get("event") == name:
            return event
    pytest.fail(f"no {name!r} event within {timeout} s")


def xdp_attached(tb: Testbed, host: str) -> bool:
    out = tb.exec(host, ["ip", "-j", "link", "show", tb.host(host).iface.name],
                  capture_output=True, text=True, check=True)
    return "xdp" in json.loads(out.stdout)[0]


@pytest.fixture
def tb():
    with Testbed.up(topology="pair") as testbed:
        yield testbed


def start_echo(tb: Testbed, *extra: str) -> subprocess.Popen:
    proc = tb.popen("server", vtl_argv("echo", "--iface", tb.host("server").iface.name,
                                  "--port", str(PORT), *extra),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_event(proc, "ready")
    return proc


def stop_echo(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    stats = read_event(proc, "stats")
    assert proc.wait(20) == 0, proc.stderr.read()
    return stats


def run_client(tb: Testbed, count: int) -> dict:
    out = tb.exec("client", [sys.executable, "-c", CLIENT, tb.host("server").iface.ip,
                             str(PORT), str(count)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_frames_home(port_stats: dict) -> None:
    """Every frame is back in the fill ring or the free list: none held, none in TX."""
    assert port_stats["held"] == 0 and port_stats["in_tx"] == 0, port_stats
    assert port_stats["free"] + port_stats["in_fill"] == port_stats["total"], port_stats


@pytest.mark.parametrize("path", ["stack", "app"])
def test_echo_answers_a_linux_client(tb, path):
    proc = start_echo(tb, *(["--app"] if path == "app" else []))
    try:
        assert xdp_attached(tb, "server")
        assert run_client(tb, 450) == {"bad": 0}
    finally:
        stats = stop_echo(proc)
    net = stats["net"]
    assert net["echoed" if path == "stack" else "sent"] >= 450
    assert net["malformed"] == net["bad_checksum"] == 0
    assert_frames_home(stats["port"])
    assert not xdp_attached(tb, "server"), "SIGTERM must detach the XDP program"


def test_app_path_routes_through_a_gateway():
    # On a chain the client is off-link for the server: replies must go to the middle
    # host's MAC, found through the kernel's route and neighbour tables.
    with Testbed.up(topology="chain") as chain:
        proc = start_echo(chain, "--app")
        try:
            assert run_client(chain, 50) == {"bad": 0}
        finally:
            stats = stop_echo(proc)
        assert stats["net"]["sent"] >= 50 and stats["net"]["tx_no_neigh"] == 0
        assert_frames_home(stats["port"])


def test_the_kernel_keeps_arp_icmp_and_other_ports(tb):
    proc = start_echo(tb)
    try:
        rtts = tb.ping("client", tb.host("server").iface.ip, count=3)
        assert all(r is not None for r in rtts), "ARP and ICMP must still reach the kernel"
        # A kernel UDP socket on another port of the server still gets its datagram.
        listener = tb.popen("server", [sys.executable, "-c",
                                       "import socket; s = socket.socket(2, 2); "
                                       "s.bind(('0.0.0.0', 7778)); print('up', flush=True); "
                                       "s.settimeout(10); print(s.recv(100).decode())"],
                            stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "up"
        tb.exec("client", [sys.executable, "-c",
                           "import socket, sys; socket.socket(2, 2).sendto(b'kernel', "
                           f"('{tb.host('server').iface.ip}', 7778))"], check=True)
        assert listener.stdout.readline().strip() == "kernel"
        assert listener.wait(10) == 0
    finally:
        stats = stop_echo(proc)
    assert stats["net"]["no_listener"] == 0, "the stack saw a port it does not own"


def test_malformed_frames_are_counted_and_survived(tb):
    proc = start_echo(tb)
    server = tb.host("server")
    try:
        out = tb.exec("client", [sys.executable, "-c", GARBAGE, tb.host("client").iface.name,
                                 server.iface.mac, server.iface.ip, str(PORT)],
                      capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert run_client(tb, 50) == {"bad": 0}, "the echo must still work afterwards"
    finally:
        stats = stop_echo(proc)
    net, steering = stats["net"], stats["steering"]
    # Frames the steering program cannot parse go to the kernel; the ones it redirects
    # and that fail validation in the network thread are counted there.
    assert net["bad_checksum"] >= 2
    assert net["malformed"] + steering["passed"] + steering["malformed"] >= 10
    assert net["echoed"] >= 50
    assert_frames_home(stats["port"])


def test_network_thread_sleeps_when_idle(tb):
    proc = tb.popen("server", vtl_argv("echo", "--iface", tb.host("server").iface.name,
                                  "--port", str(PORT), "--duration", "3"),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_event(proc, "ready")
    stats = read_event(proc, "stats", timeout=30)
    assert proc.wait(20) == 0
    # Three idle seconds: the thread sleeps in poll(), so it used a small share of a core.
    assert stats["net_cpu_seconds"] < 0.15, stats
    assert stats["net"]["polls"] >= 1


def test_sigkill_leaves_nothing_attached(tb):
    """Steering is a bpf_link: the kernel detaches it when the killed process's fds close,
    so the next run on the interface starts (a netlink attach would stay and block it)."""
    server = tb.host("server").iface.name
    proc = start_echo(tb)
    proc.kill()
    proc.wait(10)
    assert not xdp_attached(tb, "server"), "an XDP program outlived the process"
    out = tb.exec("server", vtl_argv("echo", "--iface", server, "--port", str(PORT),
                                "--duration", "0.5"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_a_program_attached_by_someone_else_is_reported_not_clobbered(tb):
    server = tb.host("server").iface.name
    tb.exec("server", ["ip", "link", "set", "dev", server, "xdp", "obj",
                       str(bpf_path("steer")), "sec", "xdp"], check=True)
    out = tb.exec("server", vtl_argv("echo", "--iface", server, "--port", str(PORT),
                                "--duration", "1"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and server in err[0] and "xdp" in err[0].lower(), err
    assert xdp_attached(tb, "server"), "the program left there must not be clobbered"
    tb.exec("server", ["ip", "link", "set", "dev", server, "xdp", "off"], check=True)


def test_missing_interface_is_one_clear_line(tb):
    out = tb.exec("server", vtl_argv("echo", "--iface", "nosuch0", "--port", str(PORT)),
                  capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "nosuch0" in err[0], err


def test_not_root_is_one_clear_line(tb):
    out = tb.exec("server", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "--inh-caps=-all", *vtl_argv("echo", "--iface",
                                                     tb.host("server").iface.name)],
                  capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/"})
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "root" in err[0], err
