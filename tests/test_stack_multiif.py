"""One Stack over two interfaces: the middle host of a `chain` testbed runs a Stack on its
client-side and server-side interfaces (two AF_XDP sockets over one UMEM, one network
thread). A Linux client connects to the stack's client-side address, the stack connects
to a Linux server through the server-side interface, and an app relays the bytes both
ways (recv on one connection, sendall on the other); SHA-256 of what each end sent and
what the other received must be equal, and every frame is back in the pool at close.
Listening takes connections on both addresses; a peer no interface reaches is refused
with a clear error."""

import errno
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

PORT = 5301
SERVER_PORT = 6301

# The stack on the middle host: accept one client, connect upstream, relay both ways:
# "app" in one app thread (non-blocking sockets and Stack.wait; recv copies out, send
# copies in), half-closing each way at its EOF; "splice" in the network thread
# (Stack.splice: each frame received on one interface goes out the other, no copy).
RELAY = r"""
import json, sys, time
from select import EPOLLERR, EPOLLIN, EPOLLOUT
from vtlstack.stack import Stack

ifaces, port, server, mode = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], sys.argv[4]
server_ip, server_port = server.split(":")
splice = None
with Stack(ifaces) as st:
    pool = st._port.pool
    lst = st.tcp_listen(port)
    print(json.dumps({"event": "ready", "ips": st.ips}), flush=True)
    down = lst.accept(timeout=30)
    up = st.tcp_connect((server_ip, int(server_port)), timeout=10)
    names = {down: "down", up: "up"}
    other = {down: up, up: down}
    pend = {down: bytearray(), up: bytearray()}     # bytes waiting to go out on a socket
    eof = {down: False, up: False}
    shut = {down: False, up: False}
    moved = {down: 0, up: 0}                        # bytes received on each
    local = {"down": down.getsockname()[0], "up": up.getsockname()[0]}
    for s in (down, up):
        s.setblocking(False)
    start = time.monotonic()
    if mode == "splice":
        sp = st.splice(down, up)
        assert sp.wait(120), "the splice did not end"
        splice = sp.counters()
        shut = {down: True, up: True}
    while not all(shut.values()):
        interest = {}
        for s in (down, up):
            ev = EPOLLIN if not eof[s] and len(pend[other[s]]) < (1 << 20) else 0
            interest[s] = ev | (EPOLLOUT if pend[s] else 0)
        ready = st.wait(interest, timeout=30)
        assert ready, "the relay stalled"
        for s, ev in ready:
            assert not ev & EPOLLERR, (names[s], s.error)
            if ev & EPOLLIN and not eof[s]:
                try:
                    data = s.recv(1 << 20, timeout=0)
                except BlockingIOError:
                    data = None
                if data == b"":
                    eof[s] = True
                elif data:
                    pend[other[s]] += data
                    moved[s] += len(data)
            if ev & EPOLLOUT and pend[s]:
                view = memoryview(pend[s])
                try:
                    n = s.send(view, timeout=0)
                except BlockingIOError:
                    n = 0
                view.release()
                del pend[s][:n]
        for s in (down, up):
            if eof[other[s]] and not pend[s] and not shut[s]:
                s.shutdown()
                shut[s] = True
    seconds = time.monotonic() - start
    if splice is None:
        down.close()
        up.close()
    lst.close()
stats = st.final_stats
pool.check_frames(expect_idle=True)
print(json.dumps({"event": "done", "seconds": seconds, "down_bytes": moved[down],
                  "up_bytes": moved[up], "local": local, "pool": pool.stats(),
                  "splice": splice,
                  "port": stats["port"], "ports": stats["ports"], "net": stats["net"],
                  "tcp_left": stats["tcp_left"]}), flush=True)
"""

# Both ends are Linux sockets: send `size` random bytes while receiving, then half-close.
ENDPOINT = r"""
import hashlib, json, os, socket, sys, threading
role, addr, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
ip, port = addr.split(":")
if role == "server":
    srv = socket.create_server(("0.0.0.0", int(port)))
    print("up", flush=True)
    conn, _ = srv.accept()
else:
    conn = socket.create_connection((ip, int(port)), timeout=30)
conn.settimeout(60)
data = os.urandom(size)
def send():
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
sender = threading.Thread(target=send)
sender.start()
h, n = hashlib.sha256(), 0
while b := conn.recv(1 << 20):
    h.update(b)
    n += len(b)
sender.join()
conn.close()
print(json.dumps({"sent": hashlib.sha256(data).hexdigest(), "received": h.hexdigest(),
                  "bytes": n}), flush=True)
"""


# Two AF_XDP sockets over one UMEM, on the two interfaces of the middle host: each gets
# its own fill ring (the pool's fill budget split between them), each receives, frames
# cross over, and the owner of the UMEM may close first.
SHARED_PORTS = r"""
import json, socket, sys
from vtlstack._port import XskPort
from vtlstack.xdp import Steering

a, b = sys.argv[1], sys.argv[2]
with Steering(a) as sa, Steering(b) as sb:
    for st in (sa, sb):
        st.own(socket.IPPROTO_UDP, 9999)
    p0 = XskPort(a, xsks_map_fd=sa.xsks_map_fd, frame_count=1024, fill=False)
    p1 = XskPort(b, xsks_map_fd=sb.xsks_map_fd, share_umem=p0)
    p0._refill()
    out = {"same_pool": p0.pool is p1.pool, "modes": [p0.bind_mode, p1.bind_mode],
           "fill": [p0.stats()["socket_in_fill"], p1.stats()["socket_in_fill"]]}
    print(json.dumps({"event": "ready"}), flush=True)
    got0, got1 = p0.recv(10.0), p1.recv(10.0)
    out["got"] = [[f[-5:].decode() for f in got0], [f[-5:].decode() for f in got1]]
    # what came in on one interface goes out on the other (the Ethernet header is kept:
    # the peers' kernels drop it as not theirs, which is all right here)
    out["sent"] = [p1.send(got0), p0.send(got1)]
    p0.close()
    p1.check_frames(expect_idle=True)
    p1.close()
    p0.pool.check_frames(expect_idle=True)
    out["pool"] = p0.pool.stats()
print(json.dumps(out), flush=True)
"""

UDP = r"""
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[2].encode(),
                                                        (sys.argv[1], 9999))
"""


def test_two_ports_share_one_umem(testbed):
    tb = testbed(topology="chain")
    client_side, server_side = tb.host("middle").ifaces
    proc = stack_proc(tb, SHARED_PORTS, client_side.name, server_side.name)
    assert proc.stdout.readline(), proc.stderr.read()
    tb.exec("client", [sys.executable, "-P", "-c", UDP, client_side.ip, "hello"], check=True)
    tb.exec("server", [sys.executable, "-P", "-c", UDP, server_side.ip, "world"], check=True)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    r = last_json(out)
    assert r["same_pool"] and r["modes"] == ["copy", "copy"]
    # half the pool goes to receiving, split evenly between the two sockets
    assert r["fill"] == [256, 256]
    assert r["got"] == [["hello"], ["world"]] and r["sent"] == [1, 1]
    assert r["pool"]["free"] == r["pool"]["total"] == 1024 and r["pool"]["bad_ops"] == 0


def stack_proc(tb, script: str, *args: str) -> subprocess.Popen:
    return tb.popen("middle", [sys.executable, "-P", "-c", script, *args],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.parametrize("mode", ["app", "splice"])
def test_relay_between_two_interfaces(testbed, mode):
    size = 50_000_000
    tb = testbed(topology="chain")
    mid = tb.host("middle")
    client_side, server_side = mid.ifaces
    server = tb.popen("server", [sys.executable, "-P", "-c", ENDPOINT, "server",
                                 f"0.0.0.0:{SERVER_PORT}", str(size)],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "up"
    relay = stack_proc(tb, RELAY, f"{client_side.name},{server_side.name}", str(PORT),
                       f"{tb.host('server').iface.ip}:{SERVER_PORT}", mode)
    ready = relay.stdout.readline()
    assert ready, relay.stderr.read()
    assert json.loads(ready)["ips"] == [client_side.ip, server_side.ip]
    client = tb.exec("client", [sys.executable, "-P", "-c", ENDPOINT, "client",
                                f"{client_side.ip}:{PORT}", str(size)],
                     capture_output=True, text=True, timeout=240)
    out, err = relay.communicate(timeout=60)
    s_out, s_err = server.communicate(timeout=30)
    assert client.returncode == 0, f"{client.stderr}\nrelay: {err}"
    assert relay.returncode == 0, err
    assert server.returncode == 0, s_err
    c, s, r = last_json(client.stdout), last_json(s_out), last_json(out)
    # client -> stack -> server and back, byte for byte
    assert c["sent"] == s["received"] and s["bytes"] == size
    assert s["sent"] == c["received"] and c["bytes"] == size
    if mode == "app":
        assert r["down_bytes"] == size and r["up_bytes"] == size
    else:
        assert r["splice"]["bytes_ab"] == size and r["splice"]["bytes_ba"] == size
    # each connection is on its interface's address
    assert r["local"] == {"down": client_side.ip, "up": server_side.ip}
    # both ports moved frames; all frames came back (check_frames passed in the relay)
    ports = r["ports"]
    assert ports[client_side.name]["rx_packets"] > size // 1500
    assert ports[server_side.name]["rx_packets"] > size // 1500
    assert r["port"]["held"] == 0 and r["port"]["in_tx"] == 0 and r["port"]["bad_ops"] == 0
    assert r["pool"]["free"] == r["pool"]["total"]
    assert r["net"]["tx_no_neigh"] == 0 and r["net"]["tx_no_port"] == 0
    assert set(r["tcp_left"]) <= {"TIME-WAIT"}, r["tcp_left"]
    print(f"{mode}: relayed {size} B each way in {r['seconds']:.2f} s: "
          f"{2 * size * 8 / r['seconds'] / 1e9:.2f} Gbit/s both ways together")


# Listen on both addresses (a Linux client on each side connects), then connect to
# addresses no interface of the stack reaches.
BOTH = r"""
import errno, json, sys
from vtlstack.stack import Stack

ifaces, port = sys.argv[1].split(","), int(sys.argv[2])
out = {}
with Stack(ifaces) as st:
    pool = st._port.pool
    lst = st.tcp_listen(port)
    out["listener"] = lst.getsockname()[0]
    print(json.dumps({"event": "ready"}), flush=True)
    for _ in range(2):
        conn = lst.accept(timeout=30)
        data = b""
        while len(data) < 5:
            chunk = conn.recv(5, timeout=10)
            assert chunk, "EOF before 5 bytes"
            data += chunk
        conn.sendall(data.upper())
        out[data.decode()] = [conn.getsockname()[0], conn.getpeername()[0]]
        conn.close()
    for ip in sys.argv[3:]:
        try:
            st.tcp_connect((ip, 80), timeout=5)
            out[ip] = "connected"
        except OSError as exc:
            out[ip] = [exc.errno, str(exc)]
pool.check_frames(expect_idle=True)
out["free"], out["total"] = pool.stats()["free"], pool.stats()["total"]
print(json.dumps(out), flush=True)
"""

HELLO = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(sys.argv[3].encode())
print(s.recv(5).decode())
"""


def test_listen_on_both_addresses_and_unreachable_peers(testbed):
    tb = testbed(topology="chain")
    mid = tb.host("middle")
    client_side, server_side = mid.ifaces
    proc = stack_proc(tb, BOTH, f"{client_side.name},{server_side.name}", str(PORT),
                      "198.51.100.7")
    assert proc.stdout.readline(), proc.stderr.read()
    for host, ip, word in (("client", client_side.ip, "hello"),
                           ("server", server_side.ip, "world")):
        hello = tb.exec(host, [sys.executable, "-P", "-c", HELLO, ip, str(PORT), word],
                        capture_output=True, text=True)
        assert hello.stdout.strip() == word.upper(), hello.stderr
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    r = last_json(out)
    assert r["listener"] == "0.0.0.0"
    assert r["hello"] == [client_side.ip, tb.host("client").iface.ip]
    assert r["world"] == [server_side.ip, tb.host("server").iface.ip]
    code, message = r["198.51.100.7"]
    assert code == errno.ENETUNREACH and "no route to 198.51.100.7" in message, message
    assert r["free"] == r["total"]


def test_connect_routed_through_an_interface_the_stack_does_not_have(testbed):
    # a stack on the client-side interface only: the server's subnet is the kernel's
    # route through the other interface
    tb = testbed(topology="chain")
    mid = tb.host("middle")
    client_side, server_side = mid.ifaces
    proc = stack_proc(tb, BOTH, client_side.name, str(PORT), tb.host("server").iface.ip)
    assert proc.stdout.readline(), proc.stderr.read()
    for word in ("hello", "world"):
        hello = tb.exec("client", [sys.executable, "-P", "-c", HELLO, client_side.ip, str(PORT),
                                   word], capture_output=True, text=True)
        assert hello.stdout.strip() == word.upper(), hello.stderr
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    r = last_json(out)
    assert r["listener"] == client_side.ip
    code, message = r[tb.host("server").iface.ip]
    assert code == errno.ENETUNREACH, message
    assert f"through {server_side.name}" in message and client_side.name in message, message
