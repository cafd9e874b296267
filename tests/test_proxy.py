"""`vtl proxy --mode forward` between real Linux peers, on one interface.

A pair testbed: the clients (curl, Python) and the upstream servers (nginx, a small Python
server) are all on the "client" host; the proxy runs on the "server" host and joins each
client connection to an upstream connection back to the client host. Every run must end
with every frame back in the pool and exit 0.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _peers import ProxyBed, kill_left, sha256_file
from vtlstack.apps._common import json_line, vtl_argv
from vtlstack.apps._peers import start_nginx, wait_listening

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

NGINX_PORT = 8080   # upstream: nginx
SHA_PORT = 8090     # upstream: answers the SHA-256 of what it read, after the client's EOF
ECHO_PORT = 8091    # upstream: echoes
RESET_PORT = 8092   # upstream: answers a line with RESET_BYTES, resets on the next line
RESET_BYTES = 300_000
CLOSED_PORT = 8099  # upstream: nothing listens
PROXY_PORT = 9080
BIG = 100_000_000

# The Python upstreams, one thread per connection.
UPSTREAM = r"""
import hashlib, socket, struct, sys, threading
ip, sha_port, echo_port, reset_port, reset_bytes = sys.argv[1], *map(int, sys.argv[2:])

def sha(conn):
    digest, n = hashlib.sha256(), 0
    while data := conn.recv(1 << 20):
        digest.update(data)
        n += len(data)
    conn.sendall(f"{digest.hexdigest()} {n}\n".encode())
    conn.close()

def echo(conn):
    while data := conn.recv(1 << 16):
        conn.sendall(data)
    conn.close()

def reset(conn):
    conn.recv(4096)
    conn.sendall(b"x" * reset_bytes)
    conn.recv(4096)     # the client has it all: nothing is left in our send queue to drop
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()

def serve(port, handler):
    srv = socket.create_server((ip, port), backlog=64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()

threading.Thread(target=serve, args=(sha_port, sha), daemon=True).start()
threading.Thread(target=serve, args=(echo_port, echo), daemon=True).start()
threading.Thread(target=serve, args=(reset_port, reset), daemon=True).start()
threading.Event().wait()
"""

# Sends a file through the proxy to the SHA upstream, half-closes, prints the answer.
UPLOAD = r"""
import socket, sys
ip, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((ip, port), timeout=60)
with open(path, "rb") as f:
    while block := f.read(1 << 20):
        s.sendall(block)
s.shutdown(socket.SHUT_WR)
answer = b""
while data := s.recv(4096):
    answer += data
print(answer.decode().strip())
"""

# Sends a line, reads `want` bytes, sends another line, then reads until the end: how many
# bytes came, and how it ended.
READ_ALL = r"""
import json, socket, sys
ip, port, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((ip, port), timeout=20)
s.sendall(b"hello\r\n")
n, end = 0, "eof"
try:
    while n < want and (data := s.recv(want - n)):
        n += len(data)
    s.sendall(b"done\r\n")
    while data := s.recv(1 << 16):
        n += len(data)
except ConnectionResetError:
    end = "reset"
print(json.dumps([n, end]), flush=True)
"""

# Opens connections one by one: how each ends up (echoed, eof, reset), as JSON.
CONNECT = r"""
import json, socket, sys
ip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, results = [], []
for i in range(count):
    s = socket.create_connection((ip, port), timeout=20)
    held.append(s)
    try:
        s.sendall(b"ping %d\r\n" % i)
        data = s.recv(4096)
        results.append("echoed" if data == b"ping %d\r\n" % i else "eof" if not data
                       else repr(data))
    except ConnectionResetError:
        results.append("reset")
print(json.dumps(results), flush=True)
"""


def events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def accesses(lines: list[dict]) -> list[dict]:
    return [e for e in lines if e["event"] == "access"]


def entries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def assert_clean(stats: dict) -> None:
    assert stats["event"] == "stats"
    assert stats["port"]["held"] == 0 and stats["port"]["in_tx"] == 0, stats["port"]
    assert stats["active"] == 0


class Bed(ProxyBed):
    """The testbed, the upstream servers on its client host, and the files they serve."""

    def __init__(self, tb: Testbed, d: Path) -> None:
        self.a = tb.host("client").iface     # clients and upstreams
        self.b = tb.host("server").iface     # the proxy
        super().__init__(tb, "server", self.b.ip, PROXY_PORT, timeout=120)
        self.dir = d
        self.big = d / "www" / "big.bin"

    def proxy(self, *extra: str, upstream_port: int = NGINX_PORT,
              mode: str = "forward") -> subprocess.Popen:
        """`vtl proxy` on host b, once it said it listens."""
        proc, line = self.start_proxy(vtl_argv(
            "proxy", "--iface", self.b.name, "--listen", f"{self.b.ip}:{PROXY_PORT}",
            "--upstream", f"{self.a.ip}:{upstream_port}", "--mode", mode, *extra))
        assert line["mode"] == mode, line
        return proc


def finish(proc: subprocess.Popen, term: bool = True) -> tuple[list[dict], str]:
    """SIGTERM the proxy (unless it was); its JSON lines and stderr once it exited 0."""
    if term:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return events(out), err


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    d = tmp_path_factory.mktemp("proxy")
    (d / "www").mkdir()
    with open(d / "www" / "big.bin", "wb") as f:
        for _ in range(BIG // 10_000_000):
            f.write(os.urandom(10_000_000))
    for name in ("a", "b", "c"):
        (d / "www" / f"{name}.txt").write_bytes(os.urandom(3000 + ord(name)))
    with Testbed.up(topology="pair", prefix="vtltest") as tb:
        b = Bed(tb, d)
        start_nginx(tb, "client", d, b.a.ip, NGINX_PORT)
        upstream = tb.popen("client", [sys.executable, "-c", UPSTREAM, b.a.ip, str(SHA_PORT),
                                       str(ECHO_PORT), str(RESET_PORT), str(RESET_BYTES)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_listening(tb, "client", b.a.ip, SHA_PORT, upstream)
        wait_listening(tb, "client", b.a.ip, ECHO_PORT, upstream)
        yield b


@pytest.fixture(autouse=True)
def _no_proxy_left(request):
    """A failed test leaves no proxy behind: it would hold the interface for the next."""
    yield
    if "bed" in request.fixturenames:
        kill_left(request.getfixturevalue("bed").started)


def test_download_and_upload_100mb(bed, tmp_path):
    log = tmp_path / "access.log"
    proxy = bed.proxy("--access-log", str(log))
    got = tmp_path / "got.bin"
    curl = bed.client(["curl", "-sS", "-o", str(got), bed.url("/big.bin")])
    assert curl.returncode == 0, curl.stderr
    assert sha256_file(got) == sha256_file(bed.big)
    lines, _ = finish(proxy)
    assert_clean(lines[-1])
    assert (lines[-1]["connections"], lines[-1]["bytes_down"]) == (1, entries(log)[0][
        "bytes_down"])

    proxy = bed.proxy("--access-log", str(log), upstream_port=SHA_PORT)
    up = bed.client([sys.executable, "-c", UPLOAD, bed.b.ip, str(PROXY_PORT), str(bed.big)])
    assert up.returncode == 0, up.stderr
    # the upstream saw every byte, and its answer came back after our half-close
    assert up.stdout.split() == [sha256_file(bed.big), str(BIG)]
    lines, _ = finish(proxy)
    stats = lines[-1]
    assert_clean(stats)
    assert (stats["connections"], stats["bytes_up"], stats["upstream_errors"]) == (1, BIG, 0)
    down, up = entries(log)
    assert (down["end"], up["end"]) == ("closed", "closed")
    assert down["bytes_down"] > BIG and up["bytes_up"] == BIG
    assert up["upstream"] == f"{bed.a.ip}:{SHA_PORT}"
    assert up["client"].startswith(f"{bed.a.ip}:")


def test_keep_alive_requests_share_one_connection(bed, tmp_path):
    proxy = bed.proxy("--access-log", "-")
    argv = ["curl", "-sS", "-w", "%{num_connects} %{http_code}\n"]
    for name in ("a", "b", "c", "a"):
        argv += ["-o", str(tmp_path / f"{name}.out"), bed.url(f"/{name}.txt")]
    curl = bed.client(argv)
    assert curl.returncode == 0, curl.stderr
    # one connection for all four requests: the proxy kept it joined between them
    assert curl.stdout.split("\n")[:4] == ["1 200", "0 200", "0 200", "0 200"]
    for name in ("a", "b", "c"):
        assert (tmp_path / f"{name}.out").read_bytes() == \
            (bed.dir / "www" / f"{name}.txt").read_bytes()
    lines, _ = finish(proxy)
    (access,) = accesses(lines)
    assert access["end"] == "closed"
    assert access["bytes_down"] > sum((bed.dir / "www" / f"{n}.txt").stat().st_size
                                         for n in ("a", "b", "c", "a"))
    assert lines[-1]["connections"] == 1
    assert_clean(lines[-1])


def test_upstream_refusing_gives_a_clean_close(bed):
    proxy = bed.proxy(upstream_port=CLOSED_PORT)
    got = bed.client([sys.executable, "-c", CONNECT, bed.b.ip, str(PROXY_PORT), "2"])
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == ["eof", "eof"]     # a FIN, not a reset
    curl = bed.client(["curl", "-sS", bed.url("/")])
    assert curl.returncode == 52, curl.stderr           # "Empty reply from server"
    lines, _ = finish(proxy)
    stats = lines[-1]
    assert (stats["connections"], stats["upstream_errors"]) == (3, 3)
    assert_clean(stats)


@pytest.mark.parametrize("mode", ["forward", "splice"])
def test_upstream_reset_mid_response(bed, mode):
    proxy = bed.proxy("--access-log", "-", upstream_port=RESET_PORT, mode=mode)
    got = bed.client([sys.executable, "-c", READ_ALL, bed.b.ip, str(PROXY_PORT),
                      str(RESET_BYTES)])
    assert got.returncode == 0, got.stderr
    # what the upstream sent before its reset, then a FIN
    assert json.loads(got.stdout) == [RESET_BYTES, "eof"]
    lines, _ = finish(proxy)
    (access,), stats = accesses(lines), lines[-1]
    assert (access["end"], access["bytes_down"]) == ("upstream_econnreset", RESET_BYTES)
    assert stats["upstream_errors"] == 1
    assert_clean(stats)


def test_idle_timeout(bed):
    proxy = bed.proxy("--access-log", "-", "--idle-timeout", "0.5", upstream_port=ECHO_PORT)
    # the echo comes back, then nothing moves: the proxy closes both ends
    hello = len(b"hello\r\n")
    got = bed.client([sys.executable, "-c", READ_ALL, bed.b.ip, str(PROXY_PORT), str(hello)])
    assert json.loads(got.stdout) == [hello + len(b"done\r\n"), "eof"], got.stderr
    lines, _ = finish(proxy)
    (access,), stats = accesses(lines), lines[-1]
    assert access["end"] == "idle" and access["duration_s"] >= 0.5
    assert stats["idle_closed"] == 1
    assert_clean(stats)


def test_max_conns(bed):
    proxy = bed.proxy("--max-conns", "2", upstream_port=ECHO_PORT)
    got = bed.client([sys.executable, "-c", CONNECT, bed.b.ip, str(PROXY_PORT), "3"])
    assert got.returncode == 0, got.stderr
    # the third one was closed at once (a FIN, or a reset if its ping had arrived first)
    first, second, third = json.loads(got.stdout)
    assert (first, second) == ("echoed", "echoed") and third in ("eof", "reset")
    lines, _ = finish(proxy)
    stats = lines[-1]
    assert (stats["connections"], stats["rejected"], stats["peak_active"]) == (2, 1, 2)
    assert_clean(stats)


def _transfer_started(path: Path, curl: subprocess.Popen) -> None:
    """Until curl has written some of the download (it is in flight), bounded."""
    deadline = time.monotonic() + 30
    while not (path.exists() and path.stat().st_size > 0):
        assert curl.poll() is None and time.monotonic() < deadline, "no download started"
        time.sleep(0.01)    # polling interval of a file size


@pytest.mark.parametrize("mode", ["forward", "splice"])
@pytest.mark.parametrize("stop_timeout, finishes", [(60, True), (1, False)],
                         ids=["finishes", "bounded"])
def test_sigterm_during_a_transfer(bed, tmp_path, stop_timeout, finishes, mode):
    proxy = bed.proxy("--stop-timeout", str(stop_timeout), mode=mode)
    got = tmp_path / "got.bin"
    # rate-limited so the download lasts about 4 s (or, bounded, far beyond the stop)
    rate = "25M" if finishes else "5M"
    curl = bed.tb.popen("client", ["curl", "-sS", "--limit-rate", rate, "-o", str(got),
                                   bed.url("/big.bin")],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _transfer_started(got, curl)
    proxy.send_signal(signal.SIGTERM)
    stopping = json_line(proxy, 10, "vtl proxy")
    assert stopping == {"event": "stopping", "active": 1}
    # no new connection once stopping
    refused = bed.client(["curl", "-sS", bed.url("/a.txt")])
    assert refused.returncode == 7, refused.stderr      # "Couldn't connect"
    _, err = curl.communicate(timeout=120)
    lines, _ = finish(proxy, term=False)
    stats = lines[-1]
    assert_clean(stats)
    if finishes:
        assert curl.returncode == 0, err
        assert sha256_file(got) == sha256_file(bed.big)
        assert stats["stop_closed"] == 0
    else:
        assert curl.returncode != 0
        assert stats["stop_closed"] == 1
    if mode == "splice":
        # a client reading at 5 or 25 MB/s from a fast upstream: the proxy held at most
        # the per-pair cap (2 MiB a direction) and what was in flight when it closed
        assert stats["tcp"]["splice_held_peak"] <= 2 * (2 << 20) + (64 << 10), stats["tcp"]


def test_sigusr1_prints_counters(bed):
    proxy = bed.proxy(upstream_port=ECHO_PORT)
    got = bed.client([sys.executable, "-c", CONNECT, bed.b.ip, str(PROXY_PORT), "1"])
    assert json.loads(got.stdout) == ["echoed"], got.stderr
    proxy.send_signal(signal.SIGUSR1)
    counters = json_line(proxy, 10, "vtl proxy")
    assert counters["event"] == "counters" and counters["connections"] == 1
    assert counters["bytes_up"] == counters["bytes_down"] == len(b"ping 0\r\n")
    lines, _ = finish(proxy)
    assert_clean(lines[-1])


def test_listen_on_an_address_not_ours(bed):
    proc = bed.tb.exec("server", vtl_argv("proxy", "--iface", bed.b.name, "--listen",
                                          "10.9.9.9:80", "--upstream", f"{bed.a.ip}:80",
                                          "--mode", "forward"),
                       capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"vtl proxy: error: --listen 10.9.9.9: the stack listens "
                                   f"on its interfaces' addresses ({bed.b.ip}) or 0.0.0.0")


@pytest.mark.parametrize("args, code, says", [
    (["--listen", "nowhere"], 2, "argument --listen: 'nowhere' is not IPv4:PORT"),
    (["--listen", "10.0.0.1:70000"], 2, "argument --listen: '10.0.0.1:70000' is not IPv4:PORT"),
    (["--max-conns", "0"], 2, "argument --max-conns: '0' is not a positive number"),
    (["--inspect", "http", "--mode", "forward"], 1,
     "vtl proxy: error: --inspect parses in the network thread: it needs --mode splice"),
    (["--inspect", "smtp"], 2, "argument --inspect: invalid choice: 'smtp'"),
    (["--transparent"], 1, "vtl proxy: error: --transparent intercepts the connections "
                           "to --upstream's port: no --listen"),
])
def test_cli_errors_are_clear(args, code, says):
    # the flags given last win: each case spoils one of a good command line
    proc = subprocess.run(vtl_argv("proxy", "--iface", "lo", "--listen", "127.0.0.1:9",
                                   "--upstream", "127.0.0.1:80", *args),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == code
    assert says in proc.stderr
