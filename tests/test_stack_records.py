"""Zero-copy reads and records on the stack, with real Linux peers on a `pair` testbed:
recv_zc() views and their release rules, and records parsed in the network thread (or the
application thread) equal to the offline parser's on the same bytes. Every stack script ends
with every frame back in the pool and no connection left but in TIME-WAIT."""

import hashlib
import json
import subprocess
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



# Record connections served together with Stack.wait(): each read to its end or its
# ParseError; the records of each as the sha256 of their repr, keyed by the peer's port.
RECORD_SERVER = r"""
import hashlib, json, sys
from vtlstack.errors import ParseError
from vtlstack.stack import Stack
iface, port, fmt, parse_in, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], \
    int(sys.argv[5])
results = {}
with Stack(iface) as stack:
    lst = stack.listen(port, parser=fmt, parse_in=parse_in)
    print("ready", flush=True)
    conns = {}
    while len(results) < n:
        ready = stack.wait([lst, *conns], timeout=20)
        assert ready, f"nothing for 20 s with {len(results)} of {n} done"
        for sock, ev in ready:
            if sock is lst:
                while True:
                    try:
                        conns[lst.accept(timeout=0)] = []
                    except BlockingIOError:
                        break
                continue
            rows, done = conns[sock], None
            while done is None:
                try:
                    batch = sock.read_records(max=300, timeout=0)
                except BlockingIOError:
                    break
                except ParseError as e:
                    done = [e.offset, e.reason]
                    break
                if not len(batch):
                    done = "eof"
                    break
                with batch:
                    got = batch.to_python()
                    if fmt == "csv":
                        # columns and views read the same bytes as to_python()
                        assert list(batch.column(0)) == [r["fields"][0] for r in got]
                        offs, lens = batch.spans(1)
                        for o, n_, r in zip(offs, lens, got):
                            if n_ >= 0 and b'"' not in r["fields"][1]:
                                assert b"".join(map(bytes, batch.view(o, n_))) == \
                                    r["fields"][1]
                    rows.extend(got)
            if done is not None:
                results[sock.peer[1]] = {
                    "records": len(rows), "end": done,
                    "sha": hashlib.sha256(repr(rows).encode()).hexdigest()}
                sock.close()
                del conns[sock]
    lst.close()
print(json.dumps({"results": results, **stack.final_stats}), flush=True)
"""

# Opens one connection per file, then sends them `chunk` bytes at a time in turn (Nagle
# off: small segments, fields across frames); a connection the stack resets is left.
RECORD_CLIENT = r"""
import json, socket, sys
ip, port, chunk, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
socks = []
for f in files:
    s = socket.create_connection((ip, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    socks.append([s, open(f, "rb").read(), 0])
ports = {s.getsockname()[1]: i for i, (s, _, _) in enumerate(socks)}
while any(at < len(data) for _, data, at in socks):
    for st in socks:
        s, data, at = st
        if at < len(data):
            try:
                s.sendall(data[at:at + chunk])
                st[2] = at + chunk
            except OSError:
                st[2] = len(data)
for s, _, _ in socks:
    try:
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    except OSError:
        pass
    s.close()
print(json.dumps(ports))
"""


def _csv(seed: int, rows: int) -> bytes:
    return b"".join(b'%d,k%d,"a ""quoted"", field",%s\r\n' % (i, seed, b"v" * (i % 23))
                    for i in range(rows))


PAYLOADS = {
    "csv": lambda i: _csv(i, 3000),
    "http_request": lambda i: b"".join(
        b"POST /up/%d HTTP/1.1\r\nHost: t\r\nX-Seq: %d\r\nContent-Length: %d\r\n\r\n%s"
        % (i, k, k % 300, b"b" * (k % 300)) for k in range(400)),
    "resp": lambda i: b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n:%d\r\n" %
                               (len(b"key%d" % k), b"key%d" % k, k) for k in range(2000)),
}
# a malformed record in the middle, and a record longer than max_record (half the 256 KB
# receive buffer): each fails its own connection only
BAD = {"csv": _csv(7, 500) + b'1,"unterminated"x\r\n' + _csv(8, 500),
       "http_request": PAYLOADS["http_request"](0)[:5000] + b"GET / HTTP/1.1\r\nHost: a\r\n"
       b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       "resp": b"*1\r\n$3\r\nabc\r\n" * 100 + b"?bad\r\n"}
HUGE = _csv(9, 100) + b"x" * 300_000 + b"\r\n"


def expected(fmt: str, data: bytes) -> dict:
    """What the offline parser makes of the same bytes, in the server's terms."""
    from vtlstack import parsers
    from vtlstack.errors import ParseError
    s = parsers.load(fmt).stream()
    rows = []
    try:
        rows += [r.as_dict() for r in s.feed(data)]
        last = s.close()
        rows += [last.as_dict()] if last else []
        end = "eof"
    except ParseError as e:
        rows += [r.as_dict() for r in getattr(e, "records", [])]
        end = [e.offset, e.reason]
    return {"records": len(rows), "end": end,
            "sha": hashlib.sha256(repr(rows).encode()).hexdigest()}


@pytest.mark.parametrize("fmt, parse_in, chunk", [
    ("csv", "net", 7), ("csv", "app", 1000), ("http_request", "net", 50),
    ("resp", "net", 5), ("http_request", "app", 333)])
def test_linux_client_records_equal_the_offline_parser(tb, tmp_path, fmt, parse_in, chunk):
    payloads = [PAYLOADS[fmt](0), BAD[fmt], PAYLOADS[fmt](1)]
    if fmt == "csv" and parse_in == "net":
        payloads.append(HUGE)
    files = []
    for i, data in enumerate(payloads):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(data)
    stats, said = run_pair(tb, RECORD_SERVER, (PORT, fmt, parse_in, len(payloads)),
                           RECORD_CLIENT, (PORT, chunk, *files))
    ports = json.loads(said)
    got = {ports[port]: r for port, r in stats["results"].items()}
    for i, data in enumerate(payloads):
        if data is HUGE:
            # whichever limit it meets first: 128 KB, or (in tiny segments) the 256
            # fragments a receive queue holds
            want = {**expected(fmt, _csv(9, 100)), "end": got[i]["end"]}
            assert got[i]["end"][0] == len(_csv(9, 100))
            assert got[i]["end"][1] in ("record larger than max_record (131072 bytes)",
                                        "record larger than the receive queue can hold")
        else:
            want = expected(fmt, data)
        assert got[i] == want, (i, got[i], want)
    assert got[0]["records"] > 100 and got[1]["end"] != "eof"
    errors = len(payloads) - 2
    if parse_in == "net":
        assert stats["net"]["parse_errors"] == errors
    else:
        assert stats["app_parse_errors"] == errors
    assert_clean(stats)


def test_vtl_sink_format_counts_records_and_ends_bad_connections(tb, tmp_path):
    """`vtl sink --format csv`: per connection the stream's bytes and SHA-256 as before,
    plus its records; a connection that does not parse ends with its error."""
    from vtlstack.apps._common import vtl_argv

    good, bad = _csv(3, 20000), BAD["csv"]
    files = [tmp_path / "good.bin", tmp_path / "bad.bin"]
    files[0].write_bytes(good)
    files[1].write_bytes(bad)
    server = tb.host("server").iface
    sink = tb.popen("server", vtl_argv("sink", "--iface", server.name, "--port", str(PORT),
                                       "--count", "2", "--format", "csv"),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(sink.stdout.readline())["event"] == "ready"
        cli = tb.exec("client", [sys.executable, "-c", RECORD_CLIENT, server.ip, str(PORT),
                                 "1400", *map(str, files)],
                      capture_output=True, text=True, timeout=120)
        out, err = sink.communicate(timeout=60)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.communicate()
    assert cli.returncode == 0 and sink.returncode == 0, cli.stderr + err
    lines = [json.loads(line) for line in out.splitlines()]
    conns = sorted((e for e in lines if e["event"] == "connection"),
                   key=lambda e: e["bytes"])
    want_bad = expected("csv", bad)
    assert conns[1]["records"] == 20000 and conns[1]["bytes"] == len(good)
    assert conns[1]["sha256"] == hashlib.sha256(good).hexdigest()
    assert "error" not in conns[1]
    assert conns[0]["records"] == want_bad["records"]
    assert conns[0]["error"].endswith(want_bad["end"][1])
    assert lines[-1]["event"] == "stats" and lines[-1]["net"]["parse_errors"] == 1
    assert_clean(lines[-1])
