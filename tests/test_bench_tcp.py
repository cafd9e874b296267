"""`vtl echo --tcp` with a Linux client, and a quick run of `vtl bench tcp` so CI exercises
the harness (every figure present and positive; speed is not asserted)."""

import json
import subprocess
import sys

import pytest
from vtlstack.apps._common import vtl_argv

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

PORT = 7007
# Sizes around the MSS (1460) and a frame (2048), and one of many frames.
SIZES = [1, 64, 1460, 1461, 2048, 3000, 100_000]

CLIENT = r"""
import json, os, socket, sys
ip, port, sizes, conns = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
for c in range(conns):
    s = socket.create_connection((ip, port), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for size in sizes:
        data = os.urandom(size)
        s.sendall(data)
        got = bytearray()
        while len(got) < size:
            piece = s.recv(1 << 16)
            assert piece, f"EOF after {len(got)} of {size} bytes"
            got += piece
        assert got == data, f"connection {c}: {size} bytes came back different"
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b"", "the server sent more than it was given"
    s.close()
print("ok", flush=True)
"""


def events(out: str) -> dict[str, dict]:
    return {e["event"]: e for e in map(json.loads, out.splitlines()) if "event" in e}


@pytest.mark.parametrize("path", ["stack", "kernel"])
def test_tcp_echo_with_a_linux_client(path):
    conns = 3
    with Testbed.up(topology="pair", prefix="vtltest") as tb:
        server = tb.host("server").iface
        argv = vtl_argv("echo", "--tcp", "--iface", server.name, "--port", str(PORT))
        echo = tb.popen("server", argv + (["--kernel"] if path == "kernel" else []),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = json.loads(echo.stdout.readline())
            assert ready["event"] == "ready" and ready["path"] == path, ready
            client = tb.exec("client", [sys.executable, "-c", CLIENT, server.ip, str(PORT),
                                        json.dumps(SIZES), str(conns)],
                             capture_output=True, text=True, timeout=60)
            echo.terminate()
            out, err = echo.communicate(timeout=30)
        finally:
            if echo.poll() is None:
                echo.kill()
                echo.communicate()
    assert client.returncode == 0 and client.stdout.strip() == "ok", client.stderr
    assert echo.returncode == 0, err
    stats = events(out)["stats"]
    assert stats["connections"] == conns and stats["errors"] == 0, stats
    assert stats["echoed_bytes"] == conns * sum(SIZES)
    if path == "stack":
        # Every frame came back: received spans freed, sent frames completed.
        assert stats["port"]["held"] == 0 and stats["port"]["in_tx"] == 0, stats["port"]


def test_tcp_echo_refuses_app_with_tcp():
    out = subprocess.run(vtl_argv("echo", "--tcp", "--app", "--iface", "lo"),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "--app is for UDP" in out.stderr


def test_bench_tcp_quick_json():
    out = subprocess.run(vtl_argv("bench", "tcp", "--quick", "--json"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    figures = {
        "bulk_rx": ("stack_mbit_per_s", "kernel_mbit_per_s", "stack_vs_kernel"),
        "bulk_tx": ("stack_mbit_per_s", "kernel_mbit_per_s", "stack_vs_kernel"),
        "connections": ("stack_per_s", "kernel_per_s", "stack_vs_kernel"),
        "latency": ("stack_p50_us", "stack_p99_us", "kernel_p50_us", "kernel_p99_us",
                    "p50_stack_vs_kernel", "p99_stack_vs_kernel"),
        "ceiling": ("iperf3_offloads_off_mbit_per_s", "iperf3_offloads_on_mbit_per_s",
                    "stack_rx_vs_offloads_on", "stack_tx_vs_offloads_on"),
    }
    for section, keys in figures.items():
        for key in keys:
            value = result[section][key]
            assert isinstance(value, (int, float)) and value > 0, (section, key, value)
    for section in ("bulk_rx", "bulk_tx", "connections", "latency"):
        assert isinstance(result[section]["met"], bool), section
    assert result["bulk_rx"]["target_min"] == 1.0
    assert result["bulk_tx"]["target_min"] == 1.0
    assert result["connections"]["target_min"] == 1.5
    assert result["latency"]["target_p99_max"] == 1.2
    assert result["targets"]["met"] == all(result[s]["met"] for s in (
        "bulk_rx", "bulk_tx", "connections", "latency"))
    assert result["frames_back"] is True
    # A ratio is its two figures divided, as printed.
    rx = result["bulk_rx"]
    assert rx["stack_vs_kernel"] == pytest.approx(
        rx["stack_mbit_per_s"] / rx["kernel_mbit_per_s"], abs=1e-3)
