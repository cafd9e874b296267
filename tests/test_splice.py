"""Splice through the whole stack with real Linux peers: a kernel client connects to the
stack, the stack connects to a kernel server, and Stack.splice() joins the two. Bytes go
both ways at once and must arrive whole (SHA-256 equal); the frames go out as they came
in (counted); every frame is back in the pool at the end (Stack.close() raises if not)."""

import json
import subprocess
import sys

import pytest

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

PORT, UPSTREAM_PORT = 5101, 6101

# Both kernel peers, on the client host: each sends random bytes while it reads all the
# other sends, then prints what it sent and got (SHA-256). The client tells the server,
# in its first 8 bytes, how much to send; "slow" makes the client a reader of about
# 16 MB/s behind a small socket buffer.
PEER = r"""
import hashlib, json, os, socket, sys, threading, time
role, ip, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
slow, head = False, b""
if role == "server":
    srv = socket.create_server((ip, port))
    print("up", flush=True)
    s, _ = srv.accept()
    want = b""
    while len(want) < 8:
        want += s.recv(8 - len(want))
    size = int.from_bytes(want, "big")
else:
    head, slow = int(sys.argv[5]).to_bytes(8, "big"), sys.argv[6] == "slow"
    s = socket.socket()
    if slow:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.settimeout(60)
    s.connect((ip, port))
sent = hashlib.sha256()
def send():
    s.sendall(head)
    left = size
    while left:
        block = os.urandom(min(left, 1 << 20))
        sent.update(block)
        s.sendall(block)
        left -= len(block)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
got, n = hashlib.sha256(), 0
while b := s.recv(8192 if slow else 1 << 20):
    got.update(b)
    n += len(b)
    if slow:
        time.sleep(0.0005)
t.join()
s.close()
print(json.dumps({"got": n, "got_sha256": got.hexdigest(), "sent_sha256": sent.hexdigest()}),
      flush=True)
"""

# The stack on the server host: accept, connect upstream, splice, wait for the end.
SPLICER = r"""
import json, sys
from vtlstack.stack import Stack
iface, port, upstream, uport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
opts = json.loads(sys.argv[5])
with Stack(iface, tcp_options=opts) as stack:
    lst = stack.tcp_listen(port)
    print(json.dumps({"event": "ready"}), flush=True)
    a = lst.accept(timeout=60)
    b = stack.tcp_connect((upstream, uport))
    sp = stack.splice(a, b)
    assert sp.wait(300), "the splice did not end"
    counters = sp.counters()
print(json.dumps({"splice": counters, "tcp": stack.final_stats["tcp"]}), flush=True)
"""


def run_splice(tb: Testbed, down: int, up: int, opts: dict | None = None,
               slow: bool = False) -> tuple:
    client_ip = tb.host("client").iface.ip
    server = tb.host("server").iface
    upstream = tb.popen("client", [sys.executable, "-P", "-c", PEER, "server", "0.0.0.0",
                                   str(UPSTREAM_PORT), "0"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    splicer = tb.popen("server", [sys.executable, "-P", "-c", SPLICER, server.name, str(PORT),
                                  client_ip, str(UPSTREAM_PORT), json.dumps(opts or {})],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert upstream.stdout.readline().strip() == "up"
        assert json.loads(splicer.stdout.readline())["event"] == "ready"
        client = tb.exec("client", [sys.executable, "-P", "-c", PEER, "client", server.ip,
                                    str(PORT), str(up), str(down),
                                    "slow" if slow else "fast"],
                         capture_output=True, text=True, timeout=600)
        assert client.returncode == 0, client.stderr
        u_out, u_err = upstream.communicate(timeout=60)
        assert upstream.returncode == 0, u_err
        s_out, s_err = splicer.communicate(timeout=60)
        assert splicer.returncode == 0, s_err
    finally:
        for proc in (upstream, splicer):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return (json.loads(client.stdout), json.loads(u_out.splitlines()[-1]),
            json.loads(s_out.splitlines()[-1]))


def test_splice_carries_both_ways_at_once_without_copying(testbed):
    tb = testbed(topology="pair")
    down, up = 256 << 20, 128 << 20
    client, upstream, spliced = run_splice(tb, down, up)
    assert client["got"] == down and client["got_sha256"] == upstream["sent_sha256"]
    assert upstream["got"] == up and upstream["got_sha256"] == client["sent_sha256"]
    counters, tcp = spliced["splice"], spliced["tcp"]
    assert counters["bytes_ab"] == up + 8 and counters["bytes_ba"] == down
    # the two sides' segments have headers of one size: nearly all go out in place,
    # copies are the retransmissions and segments sent while their frame was busy
    assert tcp["splice_inplace"] > 0.9 * (down + up) / 1448, tcp
    assert tcp["splice_held"] == 0


def test_slow_client_throttles_the_upstream_and_memory_stays_bounded(testbed):
    # The client reads about 16 MB/s through a small socket buffer. The upstream may fill
    # the window it was offered before the splice began (64 KB here), then the window
    # follows the client's: what the stack holds stays near the cap, and nothing is lost.
    # Unthrottled, the upstream would fill the whole send queue (256 segments, 370 KB).
    tb = testbed(topology="pair")
    cap = 64 << 10
    client, upstream, spliced = run_splice(
        tb, 16 << 20, 1 << 20,
        {"splice_pair_cap": cap, "splice_b0": cap, "rcv_buf": 64 << 10}, slow=True)
    assert client["got"] == 16 << 20 and client["got_sha256"] == upstream["sent_sha256"]
    assert spliced["splice"]["bytes_ba"] == 16 << 20
    assert spliced["tcp"]["splice_held_peak"] <= 2 * cap + (16 << 10), spliced["tcp"]
