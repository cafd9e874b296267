"""`vtl fetch` and `vtl sink` against real Linux peers: nginx (a file by Content-Length, the
same file chunked through sub_filter, a 404), a small raw HTTP server for the corners
(trailers, body to EOF, redirect, truncation, garbage), and socat sending into `vtl sink`.

The stack runs in the "server" namespace, the peers in "client". One testbed and one set
of servers serve the whole module. Every run must end with every frame back in the pool."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from _peers import sha256_file
from vtlstack.apps._common import vtl_argv
from vtlstack.apps._peers import start_nginx

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

NGINX_PORT = 8080
RAW_PORT = 8081
SINK_PORT = 5002
BIG = 20_000_000

# A filter that changes nothing but makes the length unknown up front: nginx then sends
# the file with chunked transfer coding.
CHUNKED_LOCATION = """
        location /chunked/ {{
            alias {d}/www/;
            sub_filter_types *;
            sub_filter "vtl-fetch-no-such-text" "";
        }}"""

# Answers each GET by its path with canned bytes, then closes. The chunked body comes from
# a file, cut into irregular chunks, some with extensions, ended by trailers.
RAW_SERVER = r"""
import random, socket, sys
ip, port, body_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = open(body_path, "rb").read()
rng = random.Random(1)
chunks, pos = [], 0
while pos < len(body):
    n = rng.choice([1, 2, 15, 16, 17, 1400, 4095, 65536, 100_003])
    ext = b";ext=1" if rng.random() < 0.3 else b""
    chunks.append(b"%x%s\r\n%s\r\n" % (min(n, len(body) - pos), ext, body[pos:pos + n]))
    pos += n
chunked = b"".join(chunks) + b"0\r\nX-Checksum: none\r\nX-More: 1\r\n\r\n"
head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
answers = {
    b"/trailers": head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked,
    b"/eof": b"HTTP/1.0 200 OK\r\n\r\n" + body,
    b"/redirect": b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://" + ip.encode()
                  + b"/elsewhere\r\nContent-Length: 0\r\n\r\n",
    b"/truncated": head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:len(body) // 2],
    b"/truncated-chunked": head + b"Transfer-Encoding: chunked\r\n\r\n"
                           + chunked[:len(chunked) // 2],
    b"/garbage": b"SSH-2.0-OpenSSH_9.2\r\n",
}
srv = socket.create_server((ip, port))
print("up", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            data = conn.recv(4096)
            if not data:
                break
            request += data
        parts = request.split(b" ", 2)
        if len(parts) == 3:
            conn.sendall(answers.get(parts[1], b"HTTP/1.1 404 Not Found\r\n\r\n"))
"""


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def assert_clean(stats: dict) -> None:
    assert stats["event"] == "stats"
    assert stats["port"]["held"] == 0 and stats["port"]["in_tx"] == 0, stats["port"]
    assert stats["net"]["tx_no_neigh"] == 0


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


class Peers:
    """The testbed and the servers in its client namespace."""

    def __init__(self, tb: Testbed, d: Path) -> None:
        self.tb = tb
        self.dir = d
        self.iface = tb.host("server").iface.name
        self.ip = tb.host("client").iface.ip
        self.big = d / "www" / "big.bin"
        self.small = d / "small.bin"

    def fetch(self, url: str, out: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
        proc = self.tb.exec("server", vtl_argv("fetch", url, "--iface", self.iface,
                                               "-o", str(out), "--timeout", "20"),
                            capture_output=True, text=True, timeout=60)
        return proc, lines(proc.stdout)

    def logged(self, request: str) -> bool:
        """nginx logged this request line and status with our User-Agent: it took our
        request as well formed. (It writes each access log line at once.)"""
        log = (self.dir / "access.log").read_text().splitlines()
        return any(request in line and line.endswith('"vtl-fetch"') for line in log)


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    d = tmp_path_factory.mktemp("fetch")
    (d / "www").mkdir()
    rng = random.Random(7)
    (d / "www" / "big.bin").write_bytes(rng.randbytes(BIG))
    (d / "small.bin").write_bytes(rng.randbytes(300_000))
    servers: list[subprocess.Popen] = []
    with Testbed.up(topology="pair") as tb:
        p = Peers(tb, d)
        try:
            servers.append(start_nginx(tb, "client", d, p.ip, NGINX_PORT, access_log=True,
                                       extra=CHUNKED_LOCATION.format(d=d)))
            raw = tb.popen("client", [sys.executable, "-c", RAW_SERVER, p.ip, str(RAW_PORT),
                                      str(p.small)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            servers.append(raw)
            if raw.stdout.readline().strip() != "up":
                stop(raw)
                pytest.fail(f"the raw HTTP server did not start: {raw.stderr.read()}")
            yield p
        finally:
            for proc in servers:
                stop(proc)


def no_leftovers(out: Path) -> None:
    """No output file and no temporary file beside it."""
    assert not out.exists()
    assert not [f for f in out.parent.iterdir() if f.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("path, framing", [("/big.bin", "length"),
                                           ("/chunked/big.bin", "chunked")],
                         ids=["content-length", "chunked"])
def test_fetch_from_nginx(peers, tmp_path, path, framing):
    out = tmp_path / "got.bin"
    url = f"http://{peers.ip}:{NGINX_PORT}{path}"
    proc, events = peers.fetch(url, out)
    assert proc.returncode == 0, proc.stderr
    report, stats = events
    want = sha256_file(peers.big)
    assert report == {**report, "event": "fetch", "url": url, "status": 200,
                      "framing": framing, "bytes": BIG, "sha256": want}
    assert sha256_file(out) == want
    assert [f.name for f in tmp_path.iterdir()] == ["got.bin"]
    assert peers.logged(f'"GET {path} HTTP/1.1" 200 ')
    assert_clean(stats)


def test_fetch_404_from_nginx(peers, tmp_path):
    out = tmp_path / "missing.bin"
    proc, events = peers.fetch(f"http://{peers.ip}:{NGINX_PORT}/no/such/file", out)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["vtl fetch: error: HTTP 404 Not Found"]
    no_leftovers(out)
    assert peers.logged('"GET /no/such/file HTTP/1.1" 404 ')
    assert [e["event"] for e in events] == ["stats"]
    assert_clean(events[0])


def test_fetch_chunked_with_trailers_and_to_eof(peers, tmp_path):
    want = sha256_file(peers.small)
    for path, framing in (("/trailers", "chunked"), ("/eof", "eof")):
        out = tmp_path / f"{framing}.bin"
        proc, events = peers.fetch(f"http://{peers.ip}:{RAW_PORT}{path}", out)
        assert proc.returncode == 0, proc.stderr
        report, stats = events
        assert (report["framing"], report["bytes"], report["sha256"]) == \
            (framing, 300_000, want)
        assert sha256_file(out) == want
        assert_clean(stats)


@pytest.mark.parametrize("path, says", [
    ("/redirect", "HTTP 301 Moved Permanently (redirect to http://{ip}/elsewhere: "
                  "not followed)"),
    ("/truncated", "truncated body: the connection closed after 150000 of 300000 bytes"),
    ("/truncated-chunked", "truncated body: the connection closed in the middle of the "
                           "chunked body"),
    ("/garbage", "not an HTTP/1.x status line: b'SSH-2.0-OpenSSH_9.2'"),
])
def test_fetch_failures_are_one_line_and_no_file(peers, tmp_path, path, says):
    out = tmp_path / "out.bin"
    proc, events = peers.fetch(f"http://{peers.ip}:{RAW_PORT}{path}", out)
    assert proc.returncode == 1
    err = proc.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("vtl fetch: error: "), proc.stderr
    assert says.format(ip=peers.ip) in err[0]
    no_leftovers(out)
    assert_clean(events[-1])


def test_fetch_refused(peers, tmp_path):
    out = tmp_path / "out.bin"
    proc, events = peers.fetch(f"http://{peers.ip}:8089/", out)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"vtl fetch: error: {peers.ip}:8089 refused the "
                                        "connection"]
    no_leftovers(out)
    assert_clean(events[-1])


def test_socat_into_vtl_sink(peers):
    sink = peers.tb.popen("server", vtl_argv("sink", "--iface", peers.iface,
                                             "--port", str(SINK_PORT), "--count", "1"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(sink.stdout.readline())
        assert ready["event"] == "ready"
        socat = peers.tb.exec("client", ["socat", "-u", f"FILE:{peers.big}",
                                         f"TCP:{ready['ip']}:{SINK_PORT}"],
                              capture_output=True, text=True, timeout=60)
        out, err = sink.communicate(timeout=60)
    finally:
        if sink.poll() is None:
            stop(sink)
    assert socat.returncode == 0, socat.stderr
    assert sink.returncode == 0, err
    conn, stats = lines(out)
    assert (conn["event"], conn["bytes"], conn["sha256"]) == \
        ("connection", BIG, sha256_file(peers.big))
    assert_clean(stats)
