"""`vtl demo` end to end (UDP and TCP phases, JSON out, nothing left behind), and its TCP
client and child-process plumbing on their own."""

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading

import pytest
from vtlstack.apps._common import vtl_argv
from vtlstack.apps.demo import _Child, send

from vtlstack.errors import VtlError


@pytest.mark.root
def test_demo_json_has_udp_and_tcp_figures_and_leaves_nothing():
    out = subprocess.run(vtl_argv("demo", "--seconds", "0.5", "--tcp-bytes", "20000000",
                                  "--json"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for path in ("stack", "kernel"):
        assert result[path]["pps"] > 0 and result[path]["rtt_p50_us"] > 0, result[path]
        row = result["tcp"][path]
        assert row["mbit_per_s"] > 0 and row["sink_mbit_per_s"] > 0, row
        assert row["bytes"] == row["sink_bytes"] == 20_000_000, row
        assert row["sha256"] == row["sink_sha256"] and row["sha256_equal"], row
    assert result["tcp"]["sha256_equal"] and result["tcp"]["stack_vs_kernel"] > 0
    port = result["tcp"]["stack"]["server"]["port"]
    assert port["held"] == 0 and port["in_tx"] == 0, port
    assert "TCP into stack" in out.stderr  # the progress lines
    # Only this run's namespaces: other runs may have testbeds up at the same time.
    ns = re.search(r" in (vtl-[0-9a-f]+)-server", out.stderr).group(1)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert f"{ns}-" not in left.stdout


def test_send_hashes_what_the_receiver_got():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        got = hashlib.sha256()
        count = []

        def sink():
            conn, _ = srv.accept()
            with conn:
                total = 0
                while data := conn.recv(1 << 16):
                    got.update(data)
                    total += len(data)
                count.append(total)

        t = threading.Thread(target=sink)
        t.start()
        done = send(f"127.0.0.1:{srv.getsockname()[1]}", 3 * (1 << 20) + 123)
        t.join(10)
    assert done["event"] == "done" and done["bytes"] == count[0] == 3 * (1 << 20) + 123
    assert done["sha256"] == got.hexdigest() and done["unexpected_bytes_back"] == 0


def _child(code: str) -> _Child:
    return _Child(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE), "the test child")


def test_child_exiting_before_ready_is_one_clear_line():
    child = _child("import sys; print('{\"event\": \"starting\"}'); sys.exit('no such iface')")
    try:
        with pytest.raises(VtlError, match=r"the test child exited before it could become "
                                           r"ready \(exit 1\): no such iface$"):
            child.wait_for("ready", 10, "become ready")
    finally:
        child.kill()


def test_child_silent_past_its_deadline_is_one_clear_line():
    child = _child("import time; time.sleep(60)")
    try:
        with pytest.raises(VtlError, match=r"did not become ready within 0.3 s"):
            child.wait_for("ready", 0.3, "become ready")
    finally:
        child.kill()
    assert child.proc.returncode is not None  # killed and reaped


def test_child_lines_after_ready_are_kept():
    child = _child("print('{\"event\": \"ready\"}\\n{\"event\": \"connection\", \"bytes\": 5}')")
    try:
        assert child.wait_for("ready", 10, "become ready")["event"] == "ready"
        assert [e["event"] for e in child.events(10, "exit")] == ["connection"]
    finally:
        child.kill()
