"""TCP through the whole stack with real Linux peers: a kernel client into `vtl sink`
(1 GB over clean, lossy, reordering and rate-limited links), `vtl source` into a kernel
server (up to 1 GB), listeners and refusals. SHA-256 of what was sent and received must
be equal. Every run ends with every frame back in the pool (Stack.close() raises
otherwise, and the stats say so)."""

import hashlib
import json
import subprocess
import sys
import threading

import pytest
from vtlstack.apps._common import vtl_argv
from vtlstack.apps.source import stream_block

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

PORT = 5001

CLIENT = r"""
import hashlib, os, socket, sys, json
ip, port, size, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = []
for i in range(conns):
    data = os.urandom(size)
    s = socket.create_connection((ip, port), timeout=20)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(30)
    assert s.recv(1) == b"", "the sink sends nothing"
    s.close()
    out.append(hashlib.sha256(data).hexdigest())
print(json.dumps(out))
"""

SERVER = r"""
import hashlib, socket, json
srv = socket.create_server(("0.0.0.0", 6001))
print("up", flush=True)
c, _ = srv.accept()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
c.close()
print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)
"""


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def sink_transfer(tb: Testbed, size: int, conns: int, client_script: str = CLIENT,
                  sink_args: tuple[str, ...] = ()) -> tuple[list[str], list[dict]]:
    """`vtl sink` for `conns` connections, a Linux client script sending `size` bytes on
    each; the client's SHA-256 list and the sink's JSON lines."""
    server = tb.host("server").iface
    sink = tb.popen("server", vtl_argv("sink", "--iface", server.name, "--port", str(PORT),
                                       "--count", str(conns), *sink_args),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader = None
    try:
        assert json.loads(sink.stdout.readline())["event"] == "ready"
        # the sink's lines are read while the client runs: a line per connection would
        # otherwise fill the pipe and stall the sink
        said: list[tuple[str, str]] = []
        reader = threading.Thread(target=lambda: said.append(sink.communicate()))
        reader.start()
        client = tb.exec("client", [sys.executable, "-c", client_script, server.ip,
                                    str(PORT), str(size), str(conns)],
                         capture_output=True, text=True, timeout=300)
        reader.join(60)
        out, err = said[0] if said else ("", "(the sink did not exit)")
        assert client.returncode == 0, f"{client.stderr}\nsink said:\n{out}{err}"
    finally:
        if sink.poll() is None:
            sink.kill()
        if reader is not None:
            reader.join()
        else:
            sink.communicate()
    assert sink.returncode == 0, err
    return json.loads(client.stdout), lines(out)


def assert_clean(stats: dict) -> None:
    assert stats["port"]["held"] == 0 and stats["port"]["in_tx"] == 0, stats["port"]
    assert stats["net"]["tx_no_neigh"] == 0
    # every connection and listener was closed before the stack stopped (TIME-WAIT is
    # the active closer's normal end)
    assert set(stats["tcp_left"]) <= {"TIME-WAIT"}, stats["tcp_left"]


def test_linux_client_into_vtl_sink():
    with Testbed.up(topology="pair") as tb:
        sent, events = sink_transfer(tb, 8_000_000, 3)
    conns = [e for e in events if e["event"] == "connection"]
    assert [c["sha256"] for c in conns] == sent
    assert all(c["bytes"] == 8_000_000 for c in conns)
    assert_clean(events[-1])


MANY_CLIENT = r"""
import hashlib, json, resource, socket, struct, sys, time
ip, port, size, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = [socket.create_connection((ip, port), timeout=30) for _ in range(conns)]
out = []
for i, s in enumerate(socks):
    data = i.to_bytes(4, "big") * (size // 4)
    s.sendall(data)
    out.append(hashlib.sha256(data).hexdigest())
# No connection ends before the stack has acknowledged every byte on all of them, so it
# holds them all open at once. TCP_INFO: 8 bytes, then u32 rto, ato, snd_mss, rcv_mss,
# unacked.
deadline = time.monotonic() + 60
waiting = socks
while waiting:
    assert time.monotonic() < deadline, f"{len(waiting)} connections still unacknowledged"
    waiting = [s for s in waiting
               if struct.unpack_from("24xI", s.getsockopt(socket.IPPROTO_TCP,
                                                         socket.TCP_INFO, 104))[0]]
    if waiting:
        time.sleep(0.01)
for s in socks:
    s.shutdown(socket.SHUT_WR)
for s in socks:
    assert s.recv(1) == b"", "the sink sends nothing"
    s.close()
print(json.dumps(out))
"""


def test_ten_thousand_concurrent_connections_all_served():
    conns = 10_000
    with Testbed.up(topology="pair") as tb:
        sent, events = sink_transfer(tb, 400, conns, MANY_CLIENT,
                                     ("--max-conns", str(conns + 64)))
    got = [e for e in events if e["event"] == "connection"]
    assert len(got) == conns and all(c["bytes"] == 400 for c in got)
    # served concurrently, in whatever order they ended: each stream arrived whole
    assert sorted(c["sha256"] for c in got) == sorted(sent)
    stats = events[-1]
    assert stats["errors"] == 0
    # all of them established in the stack at once, and the listener
    assert stats["tcp"]["conns_peak"] >= conns + 1, stats["tcp"]
    assert_clean(stats)


GIGA_CLIENT = r"""
import hashlib, json, os, socket, sys
ip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = bytearray(os.urandom(1 << 20))
h, left, i = hashlib.sha256(), size, 0
s = socket.create_connection((ip, port), timeout=30)
while left:
    block[:8] = i.to_bytes(8, "big")     # every block differs: a lost or repeated one shows
    piece = memoryview(block)[:min(left, len(block))]
    s.sendall(piece)
    h.update(piece)
    left -= len(piece)
    i += 1
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
print(json.dumps([h.hexdigest()]))
"""


@pytest.mark.parametrize("impair", [{}, {"loss_pct": 1.0}, {"loss_pct": 5.0},
                                    {"delay_ms": 2, "reorder_pct": 2.0},
                                    {"rate_mbit": 1000, "delay_ms": 2}],
                         ids=["clean", "loss1", "loss5", "delay-reorder", "rate-delay"])
def test_one_gigabyte_from_a_linux_client_into_vtl_sink(impair):
    size = 1 << 30
    with Testbed.up(topology="pair", **impair) as tb:
        sent, events = sink_transfer(tb, size, 1, GIGA_CLIENT)
    conn = [e for e in events if e["event"] == "connection"]
    assert [c["sha256"] for c in conn] == sent and conn[0]["bytes"] == size
    assert_clean(events[-1])


@pytest.mark.parametrize("size, impair", [(6_000_000, {}), (1 << 30, {}),
                                          (32 << 20, {"loss_pct": 2.0}),
                                          (32 << 20, {"delay_ms": 2, "reorder_pct": 2.0})],
                         ids=["6MB", "1GB", "32MB-loss2", "32MB-delay-reorder"])
def test_vtl_source_into_a_linux_server(size, impair):
    # segments go out of the frames the app wrote them in: lost ones are resent from there
    with Testbed.up(topology="pair", **impair) as tb:
        server = tb.popen("client", [sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "up"
            out = tb.exec("server", vtl_argv("source", "--iface", tb.host("server").iface.name,
                                             "--connect", f"{tb.host('client').iface.ip}:6001",
                                             "--bytes", str(size)),
                          capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            got = json.loads(server.stdout.readline())
        finally:
            server.kill()
            server.communicate()
    sent = lines(out.stdout)
    block, digest = stream_block(0), hashlib.sha256()
    for at in range(0, size, len(block)):
        digest.update(block[:min(len(block), size - at)])
    expect = digest.hexdigest()
    assert sent[0]["sha256"] == expect == got["sha256"] and got["bytes"] == size
    tcp = sent[-1]["tcp"]
    assert tcp["send_inplace"] > 0.9 * size / 1448, tcp
    if impair.get("loss_pct"):
        assert tcp["retransmits"] > 0, tcp
    assert_clean(sent[-1])


def test_connection_refused_is_one_clear_line():
    with Testbed.up(topology="pair") as tb:
        out = tb.exec("server", vtl_argv("source", "--iface", tb.host("server").iface.name,
                                         "--connect", f"{tb.host('client').iface.ip}:6009",
                                         "--bytes", "10"),
                      capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0], err


LISTEN_ONCE = r"""
import json, sys
from vtlstack.stack import Stack
with Stack(sys.argv[1]) as stack:
    listener = stack.tcp_listen(int(sys.argv[2]))
    print("ready", flush=True)
    conn = listener.accept(timeout=20)
    peer = conn.getpeername()
    listener.close()
    conn.sendall(b"go")
    n = 0
    while data := conn.recv(1 << 16, timeout=20):
        n += len(data)
    conn.close()
print(json.dumps({"bytes": n, "peer": peer, **stack.final_stats}), flush=True)
"""

GO_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
print(s.getsockname()[1], flush=True)
assert s.recv(2) == b"go"
s.sendall(b"x" * 100_000)
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
"""


def test_accepted_connection_outlives_its_listener():
    """Closing the listener leaves the port steered to the stack: the connection accepted
    on it keeps receiving and closes cleanly (the kernel would answer it with a RST)."""
    with Testbed.up(topology="pair") as tb:
        server = tb.host("server").iface
        srv = tb.popen("server", [sys.executable, "-P", "-c", LISTEN_ONCE, server.name,
                                  str(PORT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
        try:
            assert srv.stdout.readline().strip() == "ready"
            client = tb.exec("client", [sys.executable, "-c", GO_CLIENT, server.ip, str(PORT)],
                             capture_output=True, text=True, timeout=60)
            out, err = srv.communicate(timeout=60)
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.communicate()
    assert client.returncode == 0, client.stderr
    assert srv.returncode == 0, err
    stats = json.loads(out)
    assert stats["bytes"] == 100_000
    # accept() knows who connected
    assert stats["peer"] == [tb.host("client").iface.ip, int(client.stdout)]
    assert stats["tcp_left"] == {} and stats["net"]["linger_expired"] == 0
    assert_clean(stats)
