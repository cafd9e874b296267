"""Zero-copy reads and records on the stack, with real Linux peers on a `pair` testbed:
recv_zc() views and their release rules, and records parsed in the network thread (or the
application thread) equal to the offline parser's on the same bytes. Every stack script ends
with every frame back in the pool and no connection left but in TIME-WAIT."""

import json
import sys

import pytest
from test_stack_wait import finish, stack_script

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

PORT = 5003

# Phase 1: hold every chain of the first 200 KB: the frames stay held and the engine counts
# every byte as unconsumed (the window shrinks by them); the release rules; release in
# reverse order. Phase 2: recv() and recv_zc() mixed to the end of the stream.
ZC_SERVER = r"""
import json, hashlib, sys
from vtlstack.stack import Stack
from vtlstack.errors import ReleasedError
iface, port, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {}
def raises(call, exc):
    try:
        call()
    except exc as e:
        return str(e)
    raise AssertionError(f"{call} did not raise {exc.__name__}")

with Stack(iface, frame_count=1024) as stack:
    lst = stack.tcp_listen(port)
    print("ready", flush=True)
    c = lst.accept(timeout=20)
    pool = stack._port.pool
    chains, got = [], bytearray()
    while len(got) < first:
        ch = c.recv_zc(max_frames=7, timeout=20)
        assert 1 <= len(ch) <= 7 and ch.nbytes == sum(len(v) for v in ch)
        assert ch.offset == len(got)
        got += b"".join(bytes(v) for v in ch)
        chains.append(ch)
    views = [v for ch in chains for v in ch]
    out["held_states"] = sorted({pool.state_of(v.addr) for v in views})
    out["rq_bytes"] = stack._net.tcp.info(c.cid)["rq_bytes"]
    out["rcv_wnd"] = stack._net.tcp.info(c.cid)["rcv_wnd"]
    out["first_sha"] = hashlib.sha256(got).hexdigest()
    out["chains"] = len(chains)
    # a live memoryview pins its chain; then use after release and release twice
    ch = chains[0]
    mv = memoryview(ch[0])
    out["busy"] = raises(ch.release, BufferError)
    assert mv.tobytes() == got[:len(mv)]
    mv.release()
    out["writable"] = raises(lambda: memoryview(chains[1][0]).cast("B").__setitem__(0, 1),
                             TypeError)
    for ch in reversed(chains):
        with ch:
            pass
    out["again"] = raises(ch.release, ReleasedError)
    out["use_after"] = raises(lambda: bytes(ch[0]), ReleasedError)
    out["view_after"] = raises(lambda: memoryview(ch[0]), ReleasedError)
    out["tobytes_after"] = raises(ch.tobytes, ReleasedError)
    c.send(b"g")
    # phase 2: recv() while a chain is held, release it afterwards
    h = hashlib.sha256()
    total = 0
    held = None
    while True:
        if held is None:
            held = c.recv_zc(max_frames=3, timeout=20)
            if not held:
                break
            h.update(held.tobytes())
            total += held.nbytes
        else:
            data = c.recv(5000, timeout=20)
            if data:
                h.update(data)
                total += len(data)
            held.release()
            held = None
            if not data:
                break
    out["second_sha"] = h.hexdigest()
    out["second_bytes"] = total
    out["eof_chain"] = len(c.recv_zc(timeout=5))
    c.close()
    lst.close()
print(json.dumps({**out, **stack.final_stats}), flush=True)
"""

ZC_CLIENT = r"""
import hashlib, json, os, socket, sys
ip, port, first, second = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
a, b = os.urandom(first), os.urandom(second)
s = socket.create_connection((ip, port), timeout=20)
s.sendall(a)
assert s.recv(1) == b"g"
s.sendall(b)
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
s.close()
print(json.dumps([hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()]))
"""


@pytest.fixture(scope="module")
def tb():
    with Testbed.up(topology="pair", prefix="vtltest") as bed:
        yield bed


def run_pair(tb: Testbed, server: str, server_args: tuple, client: str,
             client_args: tuple) -> tuple[dict, str]:
    """A stack script in the server namespace, a Linux client script against it: the
    server's JSON and the client's stdout."""
    srv = stack_script(tb, server, *server_args)
    try:
        ready = srv.stdout.readline().strip()
        assert ready == "ready", ready + srv.stderr.read()
        cli = tb.exec("client", [sys.executable, "-c", client, tb.host("server").iface.ip,
                                 *map(str, client_args)],
                      capture_output=True, text=True, timeout=120)
        stats = finish(srv)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.communicate()
    assert cli.returncode == 0, cli.stderr
    return stats, cli.stdout


def assert_clean(stats: dict) -> None:
    assert stats["port"]["held"] == 0 and stats["port"]["in_tx"] == 0, stats["port"]
    assert stats["port"]["bad_ops"] == 0, stats["port"]
    assert set(stats["tcp_left"]) <= {"TIME-WAIT"}, stats["tcp_left"]


def test_recv_zc_views_hold_frames_until_released(tb):
    first, second = 200_000, 300_000
    stats, said = run_pair(tb, ZC_SERVER, (PORT, first), ZC_CLIENT, (PORT, first, second))
    sha_a, sha_b = json.loads(said)
    assert stats["first_sha"] == sha_a and stats["chains"] > 1
    assert stats["second_sha"] == sha_b and stats["second_bytes"] == second
    # held by the app: not in the fill ring, and all unconsumed in the engine's view
    assert stats["held_states"] == ["held"]
    assert stats["rq_bytes"] == first
    assert stats["rcv_wnd"] <= 262144 - first
    assert "still alive" in stats["busy"]
    assert "already released" in stats["again"]
    for key in ("use_after", "view_after", "tobytes_after"):
        assert "released" in stats[key], key
    assert stats["eof_chain"] == 0
    assert_clean(stats)

