"""Inspected splice (Stack.splice(..., inspect="http")) with real Linux peers: clients
(curl, raw sockets) on one host, the stack on the other splicing each connection to an
HTTP server next to the clients. Requests and responses are parsed in the network thread
from the frames themselves: each exchange is logged, a malformed or ambiguous request gets
a 400 and never reaches the server, a server that fails before answering gives a 502.
Every stack run ends with every frame back in the pool (Stack.close() raises if not)."""

import json
import subprocess
import sys

import pytest

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

PORT, UPSTREAM_PORT = 5201, 6201

# The server: HTTP/1.1 with keep-alive. GET /n/<size> answers <size> bytes; /rst resets
# the connection without answering; every request line it reads goes to a log file.
UPSTREAM = r"""
import http.server, socket, struct, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        with open(sys.argv[2], "a") as log:
            log.write(self.requestline + "\n")
        if self.path == "/rst":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if not self.path.startswith("/n/"):
            self.send_error(404)
            return
        n = int(self.path[3:])
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        block = bytes(range(256)) * 256
        while n:
            k = min(n, len(block))
            self.wfile.write(block[:k])
            n -= k
    do_HEAD = do_GET
srv = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H)
print("up", flush=True)
srv.serve_forever()
"""

# The stack: for each of `count` connections, connect upstream, splice with the inspector,
# wait for the end; one JSON line per connection with its exchanges and counters.
SPLICER = r"""
import json, sys
from vtlstack.stack import Stack
iface, port, upstream, uport, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], \
    int(sys.argv[4]), int(sys.argv[5])
with Stack(iface) as stack:
    lst = stack.tcp_listen(port)
    print(json.dumps({"event": "ready"}), flush=True)
    for _ in range(count):
        a = lst.accept(timeout=60)
        b = stack.tcp_connect((upstream, uport))
        sp = stack.splice(a, b, inspect="http")
        assert sp.wait(120), "the splice did not end"
        x = sp.exchanges()
        for e in x:
            e["method"] = e["method"].decode()
            e["target"] = e["target"].decode()
        print(json.dumps({"exchanges": x, "counters": sp.counters()}), flush=True)
"""


class Bed:
    def __init__(self, tb: Testbed, log) -> None:
        self.tb = tb
        self.log = log
        self.log.write_text("")
        self.read = 0
        self.client_ip = tb.host("client").iface.ip
        self.server = tb.host("server").iface
        self.upstream = tb.popen("client", [sys.executable, "-P", "-u", "-c", UPSTREAM,
                                            str(UPSTREAM_PORT), str(log)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.upstream.stdout.readline().strip() == "up"

    def splicer(self, count: int) -> subprocess.Popen:
        proc = self.tb.popen("server", [sys.executable, "-P", "-c", SPLICER, self.server.name,
                                        str(PORT), self.client_ip, str(UPSTREAM_PORT),
                                        str(count)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert json.loads(proc.stdout.readline())["event"] == "ready", proc.stderr.read()
        return proc

    def results(self, proc: subprocess.Popen) -> list[dict]:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return [json.loads(line) for line in out.splitlines()]

    def raw(self, payload: bytes, shut: bool = False) -> bytes:
        """Send payload from the client host on one connection (then a FIN, with shut),
        read until the other side closes."""
        script = ("import socket, sys\n"
                  f"s = socket.create_connection(({self.server.ip!r}, {PORT}), timeout=30)\n"
                  f"s.sendall({payload!r})\n"
                  + ("s.shutdown(socket.SHUT_WR)\n" if shut else "") +
                  "out = b''\n"
                  "while b := s.recv(65536):\n"
                  "    out += b\n"
                  "sys.stdout.buffer.write(out)\n")
        proc = self.tb.exec("client", [sys.executable, "-P", "-c", script], capture_output=True,
                            timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def seen_by_upstream(self) -> list[str]:
        """The request lines the server has read since the last call (it logs each one
        before it answers, so all the answered ones are there)."""
        lines = self.log.read_text().splitlines()
        new, self.read = lines[self.read:], len(lines)
        return new


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    with Testbed.up(topology="pair", prefix="vtltest") as tb:
        b = Bed(tb, tmp_path_factory.mktemp("inspect") / "requests.log")
        try:
            yield b
        finally:
            b.upstream.kill()
            b.upstream.communicate(timeout=10)


def test_each_exchange_of_a_keepalive_connection_is_logged(bed):
    proc = bed.splicer(1)
    base = f"http://{bed.server.ip}:{PORT}"
    urls = [f"{base}/n/100", f"{base}/n/300000", f"{base}/missing"]
    # one connection for all three (curl keeps it alive), each body to /dev/null
    curl = bed.tb.exec("client", ["curl", "-s", "-w", "%{http_code}\\n",
                                  *(arg for url in urls for arg in (url, "-o", "/dev/null"))],
                       capture_output=True, text=True, timeout=60)
    assert curl.stdout.split() == ["200", "200", "404"], curl.stderr
    (res,) = bed.results(proc)
    x = res["exchanges"]
    assert [(e["method"], e["target"], e["status"]) for e in x] == [
        ("GET", "/n/100", 200), ("GET", "/n/300000", 200), ("GET", "/missing", 404)]
    assert x[1]["response_bytes"] > 300000 and all(e["request_bytes"] > 30 for e in x)
    assert all(e["end_ns"] >= e["start_ns"] > 0 for e in x)
    http = res["counters"]["http"]
    assert http["requests"] == http["responses"] == 3
    assert http["status"]["2xx"] == 2 and http["status"]["4xx"] == 1
    assert http["parse_errors"] == 0
    assert bed.seen_by_upstream() == ["GET /n/100 HTTP/1.1", "GET /n/300000 HTTP/1.1",
                                      "GET /missing HTTP/1.1"]


def test_pipelined_requests_are_answered_in_order_and_logged(bed):
    bed.seen_by_upstream()
    proc = bed.splicer(1)
    req = b"GET /n/%d HTTP/1.1\r\nHost: x\r\n\r\n"
    head = b"HEAD /n/5000 HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /n/7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = bed.raw(req % 10 + head + req % 20000 + last)
    assert out.count(b"HTTP/1.1 200 OK") == 4
    (res,) = bed.results(proc)
    x = res["exchanges"]
    assert [(e["method"], e["target"]) for e in x] == [
        ("GET", "/n/10"), ("HEAD", "/n/5000"), ("GET", "/n/20000"), ("GET", "/n/7")]
    # the HEAD's response has no body though it says Content-Length: 5000
    assert x[1]["response_bytes"] < 300 and x[2]["response_bytes"] > 20000
    assert sum(e["response_bytes"] for e in x) == len(out)


@pytest.mark.parametrize("bad", [
    b"POST /n/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n0\r\n\r\n",
    b"GET /n/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET /n/1 HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n",
    b"GET /n/1 HTTP/1.1\r\nHost: x\rBad: cr\r\n\r\n",
], ids=["cl-and-te", "two-cl", "obs-fold", "bare-cr"])
def test_an_ambiguous_request_gets_400_and_never_reaches_the_server(bed, bad):
    proc = bed.splicer(1)
    bed.seen_by_upstream()
    out = bed.raw(b"GET /n/3 HTTP/1.1\r\nHost: x\r\n\r\n" + bad)
    # the good request before it is answered, then the 400, then the close
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"Bad Request"), out[-200:]
    assert b"400 Bad Request" in out
    (res,) = bed.results(proc)
    http = res["counters"]["http"]
    assert http["rejected"] == 1 and http["parse_errors"] == 1 and http["error"]
    assert [e["target"] for e in res["exchanges"]] == ["/n/3"]
    assert bed.seen_by_upstream() == ["GET /n/3 HTTP/1.1"]


def test_a_server_that_fails_before_answering_gives_502(bed):
    proc = bed.splicer(1)
    out = bed.raw(b"GET /rst HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway"), out
    (res,) = bed.results(proc)
    assert res["counters"]["http"]["bad_gateway"] == 1


def test_a_large_response_streams_through_the_inspector(bed):
    proc = bed.splicer(1)
    size = 64 << 20
    curl = bed.tb.exec("client", ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                                  f"http://{bed.server.ip}:{PORT}/n/{size}"],
                       capture_output=True, text=True, timeout=120)
    assert int(curl.stdout) == size, curl.stderr
    (res,) = bed.results(proc)
    (x,) = res["exchanges"]
    assert x["status"] == 200 and x["response_bytes"] > size
    assert res["counters"]["bytes_ba"] == x["response_bytes"]


def test_a_client_that_sends_nothing_ends_its_splice(bed):
    proc = bed.splicer(1)
    assert bed.raw(b"", shut=True) == b""
    (res,) = bed.results(proc)
    assert res["exchanges"] == [] and res["counters"]["http"]["requests"] == 0
