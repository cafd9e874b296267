"""`vtl proxy` on the middle host of a chain testbed, between its two links: clients (curl,
Python) on the client host, nginx and a SHA-256 server on the server host. Each mode
(forward, splice, splice with --inspect http) carries 1 GB down and 1 GB up with equal
SHA-256; inspection logs each exchange and answers malformed requests itself. Every run
ends with every frame back in the pool and exit 0.
"""

import os
import subprocess
import sys

import pytest
from _peers import ProxyBed, kill_left, sha256_file
from test_proxy import UPLOAD, UPSTREAM, assert_clean, entries, finish
from vtlstack.apps._common import vtl_argv
from vtlstack.apps._peers import start_nginx, wait_listening

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

NGINX_PORT = 8080
SHA_PORT = 8090
HTTP_SHA_PORT = 8091
PROXY_PORT = 9080
BIG = 1 << 30

# A POST's body (Content-Length, "Expect: 100-continue" honoured) is answered with its
# SHA-256 and length, over HTTP/1.1; a GET with the address the request came from.
HTTP_SHA = r"""
import hashlib, http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_POST(self):
        left = n = int(self.headers["Content-Length"])
        digest = hashlib.sha256()
        while left:
            data = self.rfile.read(min(left, 1 << 20))
            digest.update(data)
            left -= len(data)
        body = f"{digest.hexdigest()} {n}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        body = "{}:{}".format(*self.client_address).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

MODES = {"forward": ("--mode", "forward"), "splice": ("--mode", "splice"),
         "inspect": ("--mode", "splice", "--inspect", "http")}


class Chain(ProxyBed):
    def __init__(self, tb: Testbed, d) -> None:
        self.middle = tb.host("middle")
        self.front = self.middle.ifaces[0]      # the clients' side
        super().__init__(tb, "middle", self.front.ip, PROXY_PORT, timeout=300)
        self.dir = d
        self.server = tb.host("server").iface
        self.big = d / "www" / "big.bin"

    def proxy(self, mode: str, *extra: str, port: int = NGINX_PORT,
              transparent: bool = False) -> subprocess.Popen:
        where = ("--transparent",) if transparent else \
            ("--listen", f"{self.front.ip}:{PROXY_PORT}")
        return self.start_proxy(vtl_argv(
            "proxy", *(a for i in self.middle.ifaces for a in ("--iface", i.name)), *where,
            "--upstream", f"{self.server.ip}:{port}", *MODES[mode], *extra))[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    (d / "www").mkdir()
    with open(d / "www" / "big.bin", "wb") as f:
        for _ in range(BIG // (64 << 20)):
            f.write(os.urandom(64 << 20))
    (d / "www" / "small.txt").write_bytes(os.urandom(2048))
    try:
        with Testbed.up(topology="chain", prefix="vtltest") as tb:
            c = Chain(tb, d)
            start_nginx(tb, "server", d, c.server.ip, NGINX_PORT)
            # test_proxy's upstreams: SHA_PORT answers the SHA-256 of what it read
            servers = [tb.popen("server", [sys.executable, "-c", UPSTREAM, c.server.ip,
                                           str(SHA_PORT), str(SHA_PORT + 2),
                                           str(SHA_PORT + 3), "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
                       tb.popen("server", [sys.executable, "-c", HTTP_SHA, c.server.ip,
                                           str(HTTP_SHA_PORT)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
            wait_listening(tb, "server", c.server.ip, SHA_PORT, servers[0])
            wait_listening(tb, "server", c.server.ip, HTTP_SHA_PORT, servers[1])
            yield c
            kill_left(servers)
    finally:
        (d / "www" / "big.bin").unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _no_proxy_left(request):
    yield
    if "chain" in request.fixturenames:
        kill_left(request.getfixturevalue("chain").started)


@pytest.mark.parametrize("mode", list(MODES))
def test_one_gigabyte_down_and_up(chain, mode, tmp_path):
    log = tmp_path / "access.log"
    proxy = chain.proxy(mode, "--access-log", str(log))
    got = tmp_path / "got.bin"
    curl = chain.client(["curl", "-sS", "-o", str(got), chain.url("/big.bin")])
    assert curl.returncode == 0, curl.stderr
    assert sha256_file(got) == sha256_file(chain.big)
    got.unlink()
    lines, _ = finish(proxy)
    assert_clean(lines[-1])
    (entry,) = entries(log)
    if mode == "inspect":
        assert (entry["method"], entry["target"], entry["status"]) == ("GET", "/big.bin", 200)
        assert lines[-1]["http"]["requests"] == lines[-1]["http"]["status"]["2xx"] == 1
    assert entry["bytes_down"] > BIG and lines[-1]["bytes_down"] == entry["bytes_down"]

    if mode == "inspect":
        # an HTTP upload: curl streams the file as a POST body (after "100 Continue")
        proxy = chain.proxy(mode, port=HTTP_SHA_PORT)
        up = chain.client(["curl", "-sS", "-T", str(chain.big), "-X", "POST",
                           chain.url("/upload")])
        assert up.returncode == 0, up.stderr
        assert up.stdout.split() == [sha256_file(chain.big), str(BIG)]
        lines, _ = finish(proxy)
        assert_clean(lines[-1])
        assert lines[-1]["http"]["requests"] == 1 and lines[-1]["bytes_up"] > BIG
        return
    proxy = chain.proxy(mode, port=SHA_PORT)
    up = chain.client([sys.executable, "-c", UPLOAD, chain.front.ip, str(PROXY_PORT),
                       str(chain.big)])
    assert up.returncode == 0, up.stderr
    assert up.stdout.split() == [sha256_file(chain.big), str(BIG)]
    lines, _ = finish(proxy)
    assert_clean(lines[-1])
    assert lines[-1]["bytes_up"] == BIG


def test_inspect_logs_every_exchange_and_answers_a_smuggling_attempt(chain, tmp_path):
    log = tmp_path / "access.log"
    proxy = chain.proxy("inspect", "--access-log", str(log))
    urls = [chain.url("/small.txt"), chain.url("/none"), chain.url("/small.txt")]
    curl = chain.client(["curl", "-sS", "-w", "%{http_code}\\n",
                         *(a for url in urls for a in (url, "-o", "/dev/null"))])
    assert curl.stdout.split() == ["200", "404", "200"], curl.stderr
    bad = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    raw = chain.client([sys.executable, "-c",
                        "import socket, sys\n"
                        f"s = socket.create_connection(({chain.front.ip!r}, {PROXY_PORT}))\n"
                        f"s.sendall({bad!r})\n"
                        "print(s.recv(4096).decode().splitlines()[0])\n"])
    assert raw.stdout.strip() == "HTTP/1.1 400 Bad Request", raw.stderr
    lines, _ = finish(proxy)
    stats = lines[-1]
    assert_clean(stats)
    assert stats["http"]["requests"] == 3 and stats["http"]["rejected"] == 1
    assert stats["http"]["status"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 0}
    assert [(e["method"], e["target"], e["status"]) for e in entries(log)] == [
        ("GET", "/small.txt", 200), ("GET", "/none", 404), ("GET", "/small.txt", 200)]


def test_transparent_proxy_takes_routed_connections_in_the_client_s_name(chain, tmp_path):
    # nginx's port intercepted: a gigabyte down, while another port is routed as before
    proxy = chain.proxy("splice", port=NGINX_PORT, transparent=True)
    got = tmp_path / "got.bin"
    curl = chain.client(["curl", "-sS", "-o", str(got), "-w", "%{remote_ip}",
                         f"http://{chain.server.ip}:{NGINX_PORT}/big.bin"])
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout == chain.server.ip             # the client sees the server
    assert sha256_file(got) == sha256_file(chain.big)
    got.unlink()
    routed = chain.client(["curl", "-sS", f"http://{chain.server.ip}:{HTTP_SHA_PORT}/who"])
    assert routed.stdout.startswith(chain.tb.host("client").iface.ip + ":"), routed.stderr
    lines, _ = finish(proxy)
    assert_clean(lines[-1])
    assert lines[-1]["connections"] == 1 and lines[-1]["bytes_down"] > BIG

    # the other port intercepted and inspected: the server sees the client's address
    log = tmp_path / "access.log"
    proxy = chain.proxy("inspect", "--access-log", str(log), port=HTTP_SHA_PORT,
                        transparent=True)
    client_ip = chain.tb.host("client").iface.ip
    who = chain.client(["curl", "-sS", f"http://{chain.server.ip}:{HTTP_SHA_PORT}/who"])
    assert who.stdout.split(":")[0] == client_ip, (who.stdout, who.stderr)
    up = chain.client(["curl", "-sS", "-T", str(chain.big), "-X", "POST",
                       f"http://{chain.server.ip}:{HTTP_SHA_PORT}/upload"])
    assert up.stdout.split() == [sha256_file(chain.big), str(BIG)], up.stderr
    lines, _ = finish(proxy)
    assert_clean(lines[-1])
    assert [(e["method"], e["target"], e["status"]) for e in entries(log)] == [
        ("GET", "/who", 200), ("POST", "/upload", 200)]
    assert all(e["client"].startswith(client_ip + ":") for e in entries(log))
