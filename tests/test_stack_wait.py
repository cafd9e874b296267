"""Readiness on the stack: Stack.wait() over many sockets, non-blocking sockets, and the
asyncio adapter (vtlstack.aio), each with real Linux peers. Every stack script ends with
every frame back in the pool and no connection left but in TIME-WAIT."""

import json
import select
import subprocess
import sys
import time

import pytest
from vtlstack._handoff import Channel

from vtlstack.testbed import Testbed

PORT = 5002
CLOSED_PORT = 6009  # nothing listens there on the Linux side

# A stack echo server driven by Stack.wait() alone: non-blocking sockets, EPOLLIN only while
# the connection's pending output is small, EPOLLOUT only while there is some.
WAIT_ECHO = r"""
import json, sys, time
from select import EPOLLIN, EPOLLOUT
from vtlstack.stack import Stack
iface, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
served, most, rounds = [], 0, 0
with Stack(iface) as stack:
    lst = stack.tcp_listen(port)
    lst.setblocking(False)
    print("ready", flush=True)
    conns = {}  # socket -> [output, peer closed, bytes echoed]
    deadline = time.monotonic() + 30
    while len(served) < n:
        assert time.monotonic() < deadline, f"served {len(served)} of {n} in 30 s"
        interest = {lst: EPOLLIN}
        for c, (out, eof, _) in conns.items():
            interest[c] = (0 if eof or len(out) >= 1 << 16 else EPOLLIN) | \
                (EPOLLOUT if out else 0)
        ready = stack.wait(interest, timeout=10)
        assert ready, "nothing happened for 10 s"
        rounds += 1
        most = max(most, len(ready))
        for sock, ev in ready:
            if sock is lst:
                while True:
                    try:
                        c = lst.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    conns[c] = [bytearray(), False, 0]
                continue
            st = conns[sock]
            if ev & EPOLLIN:
                data = sock.recv(1 << 16)
                st[0] += data
                st[2] += len(data)
                st[1] = not data
            if ev & EPOLLOUT and st[0]:
                del st[0][:sock.send(st[0])]
            if st[1] and not st[0]:
                sock.close()
                served.append(st[2])
                del conns[sock]
    lst.close()
print(json.dumps({"served": served, "most_ready": most, "rounds": rounds,
                  **stack.final_stats}), flush=True)
"""

# n concurrent Linux connections in one thread: each sends its own random bytes, shuts
# down its sending side and reads the echo to the end.
ECHO_CLIENTS = r"""
import json, os, selectors, socket, sys, time
ip, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sel = selectors.DefaultSelector()
conns = {}
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((ip, port))
    data = os.urandom(size + 997 * i)
    conns[s] = [memoryview(data), bytearray(), data]
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
left, good = n, 0
deadline = time.monotonic() + 30
while left:
    assert time.monotonic() < deadline, f"{left} connections unfinished after 30 s"
    for key, ev in sel.select(1):
        s = key.fileobj
        st = conns[s]
        if ev & selectors.EVENT_WRITE:
            st[0] = st[0][s.send(st[0][:1 << 16]):]
            if not st[0]:
                s.shutdown(socket.SHUT_WR)
                sel.modify(s, selectors.EVENT_READ)
        if ev & selectors.EVENT_READ:
            b = s.recv(1 << 16)
            st[1] += b
            if not b:
                sel.unregister(s)
                s.close()
                left -= 1
                good += st[1] == st[2]
print(json.dumps({"good": good, "sizes": sorted(len(st[2]) for st in conns.values())}))
"""

# Non-blocking calls on the stack, each where it must (not) raise BlockingIOError.
NONBLOCKING = r"""
import errno, json, sys
from select import EPOLLERR, EPOLLIN, EPOLLOUT
from vtlstack.stack import Stack
iface, port, peer, closed_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def blocks(call):
    try:
        call()
    except BlockingIOError:
        return True
    return False

with Stack(iface) as stack:
    lst = stack.tcp_listen(port)
    lst.setblocking(False)
    assert blocks(lst.accept), "accept with nothing pending"
    print("ready", flush=True)
    assert stack.wait([lst], timeout=20) == [(lst, EPOLLIN)]
    conn = lst.accept()
    assert blocks(lst.accept), "a second accept with one client"
    conn.settimeout(0.2)
    try:
        conn.recv()
        raise AssertionError("recv with a timeout and nothing sent")
    except TimeoutError:
        pass
    conn.setblocking(False)
    assert not conn.getblocking() and conn.gettimeout() == 0.0
    assert blocks(conn.recv), "recv before the peer sent anything"
    assert stack.wait({conn: EPOLLIN}, timeout=0) == []
    assert stack.wait({conn: EPOLLIN | EPOLLOUT}, timeout=0) == [(conn, EPOLLOUT)]
    # The peer does not read and its receive buffer is small: the credit runs out.
    block = bytes(range(256)) * 256
    stream = memoryview(block * 2)  # a send may take part of a block: go on from there
    total = 0
    while True:
        assert total < 256 << 20, "the credit never ran out"
        at = total % len(block)
        try:
            total += conn.send(stream[at:at + len(block)])
        except BlockingIOError:
            if not stack.wait({conn: EPOLLOUT}, timeout=1.0):
                break
    assert blocks(lambda: conn.send(b"x")), "send without credit"
    print(json.dumps({"full": total, "snd_buf": stack.snd_buf}), flush=True)
    got = b""
    while True:
        assert stack.wait([conn], timeout=20), "no data from the peer"
        data = conn.recv()
        if not data:
            break
        got += data
    assert got == b"done", got
    assert conn.recv() == b"" and conn.recv() == b"", "EOF stays EOF"
    conn.close()
    # A non-blocking connect returns at once; a refusal shows as EPOLLERR and .error.
    c2 = stack.tcp_connect((peer, closed_port), blocking=False)
    assert not c2.connected
    ready = stack.wait({c2: EPOLLOUT}, timeout=10)
    assert ready and ready[0][1] & EPOLLERR and c2.error == errno.ECONNREFUSED, ready
    try:
        c2.send(b"x")
        raise AssertionError("send on a refused connection")
    except ConnectionRefusedError:
        pass
    c2.close()
    lst.close()
print(json.dumps({"sent": total, **stack.final_stats}), flush=True)
"""

SLOW_READER = r"""
import json, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.settimeout(20)
s.connect((sys.argv[1], int(sys.argv[2])))
total = int(sys.stdin.readline().split()[1])
got = bytearray()
while len(got) < total:
    b = s.recv(1 << 16)
    assert b, f"EOF after {len(got)} of {total} bytes"
    got += b
block = bytes(range(256)) * 256
ok = got == (block * (total // len(block) + 1))[:total]
s.sendall(b"done")
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
print(json.dumps({"ok": ok, "bytes": len(got)}))
"""

AIO_ECHO = r"""
import asyncio, json, sys
from vtlstack import aio
from vtlstack.stack import Stack
iface, port, n, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

async def main(stack):
    sizes, finished = [], asyncio.Event()

    async def echo(reader, writer):
        total = 0
        while data := await reader.read(1 << 16):
            writer.write(data)
            total += len(data)
            await writer.drain()
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        sizes.append(total)
        if len(sizes) == n:
            finished.set()

    async with await aio.start_server(stack, echo, port) as server:
        assert server.is_serving()
        print("ready", flush=True)
        await asyncio.wait_for(finished.wait(), 30)
    assert not server.is_serving()
    return sizes

# the pool is smaller than n * (snd_buf + rcv_buf): sends wait in the network thread for
# room, receive windows are bounded by the pool, nothing is lost
with Stack(iface, frame_count=frames) as stack:
    sizes = asyncio.run(main(stack))
print(json.dumps({"sizes": sorted(sizes), **stack.final_stats}), flush=True)
"""

LINUX_SERVER = r"""
import hashlib, json, socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
srv.settimeout(20)
print("up", flush=True)
c, _ = srv.accept()
c.settimeout(20)
c.sendall(b"hello vtl\r\nkey: value;")
data = bytearray()
while b := c.recv(1 << 20):
    data += b
c.sendall(data)
c.close()
print(json.dumps({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}), flush=True)
"""

AIO_CLIENT = r"""
import asyncio, hashlib, json, os, sys
from vtlstack import aio
from vtlstack.stack import Stack
iface, ip, port, closed_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

async def main(stack):
    try:
        await asyncio.wait_for(aio.open_connection(stack, ip, closed_port), 10)
        raise AssertionError("connected to a closed port")
    except ConnectionRefusedError:
        pass
    reader, writer = await asyncio.wait_for(aio.open_connection(stack, ip, port), 10)
    assert writer.get_extra_info("peername") == (ip, port)
    assert writer.get_extra_info("sockname")[0] == stack.ip
    assert await asyncio.wait_for(reader.readline(), 10) == b"hello vtl\r\n"
    assert await asyncio.wait_for(reader.readuntil(b";"), 10) == b"key: value;"
    data = os.urandom(3_000_000)
    writer.writelines([data[:1000], data[1000:]])
    await asyncio.wait_for(writer.drain(), 20)
    assert writer.can_write_eof()
    writer.write_eof()
    back = await asyncio.wait_for(reader.readexactly(len(data)), 20)
    assert await asyncio.wait_for(reader.read(), 10) == b"" and reader.at_eof()
    writer.close()
    assert writer.is_closing()
    await asyncio.wait_for(writer.wait_closed(), 10)
    return {"echoed": back == data, "sha256": hashlib.sha256(data).hexdigest()}

with Stack(iface) as stack:
    result = asyncio.run(main(stack))
print(json.dumps({**result, **stack.final_stats}), flush=True)
"""


def readline(proc: subprocess.Popen, timeout: float = 20.0) -> str:
    """The next line of a child's stdout, or fail after `timeout` (never hang the run)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from the child in {timeout} s"
    return proc.stdout.readline()


def finish(proc: subprocess.Popen, timeout: float = 40.0) -> dict:
    """Wait for a child; its last stdout line as JSON (after a check of its exit code)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def assert_clean(stats: dict) -> None:
    assert stats["port"]["held"] == 0 and stats["port"]["in_tx"] == 0, stats["port"]
    assert stats["net"]["tcp_send_refused"] == 0, "bytes sent on a connection that was gone"
    assert set(stats["tcp_left"]) <= {"TIME-WAIT"}, stats["tcp_left"]


def pipes(**kw) -> dict:
    return {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kw}


@pytest.fixture(scope="module")
def tb():
    with Testbed.up(topology="pair", prefix="vtltest") as bed:
        yield bed


def stack_script(tb: Testbed, script: str, *args: object, **kw) -> subprocess.Popen:
    return tb.popen("server", [sys.executable, "-P", "-c", script,
                               tb.host("server").iface.name, *map(str, args)], **pipes(**kw))


def test_channel_arm_for_an_external_loop():
    """arm() is Channel.wait()'s first half: armed, a message signals the eventfd; with a
    message pending it does not arm (the caller pops first); disarm() clears the fd."""
    ch = Channel(8)
    assert ch.arm()
    assert ch.push(1)
    assert select.select([ch.efd], [], [], 1.0)[0], "the armed fd did not turn readable"
    ch.disarm()
    assert not select.select([ch.efd], [], [], 0)[0], "disarm() left the fd readable"
    assert not ch.arm(), "armed with a message pending"
    assert ch.push(2)
    assert not select.select([ch.efd], [], [], 0)[0], "a wakeup while not armed"
    assert [ch.pop()[0], ch.pop()[0], ch.pop()] == [1, 2, None]
    assert ch.arm()
    ch.disarm()


def echo_run(tb, script: str, n: int, size: int, *args: str) -> tuple[dict, dict]:
    """A stack echo script against n concurrent Linux clients of `size` bytes each."""
    srv = stack_script(tb, script, PORT, n, *args)
    try:
        assert readline(srv).strip() == "ready"
        client = tb.exec("client", [sys.executable, "-c", ECHO_CLIENTS,
                                    tb.host("server").iface.ip, str(PORT), str(n), str(size)],
                         capture_output=True, text=True, timeout=40)
        stats = finish(srv)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.communicate()
    assert client.returncode == 0, client.stderr
    got = json.loads(client.stdout)
    assert got["good"] == n, got
    return got, stats


@pytest.mark.root
def test_wait_serves_50_concurrent_linux_clients(tb):
    n = 50
    got, stats = echo_run(tb, WAIT_ECHO, n, 20000)
    assert sorted(stats["served"]) == got["sizes"]
    # several connections were ready in one wait(): it does multiplex
    assert stats["most_ready"] > 1 and stats["rounds"] < 100 * n, stats
    assert_clean(stats)


@pytest.mark.root
def test_nonblocking_accept_recv_send_connect(tb):
    srv = stack_script(tb, NONBLOCKING, PORT, tb.host("client").iface.ip, CLOSED_PORT)
    reader = None
    try:
        assert readline(srv).strip() == "ready"
        reader = tb.popen("client", [sys.executable, "-c", SLOW_READER,
                                     tb.host("server").iface.ip, str(PORT)],
                          **pipes(stdin=subprocess.PIPE))
        full = json.loads(readline(srv))
        # the stack queued what its credit allows (snd_buf), and the peer holds some
        assert full["snd_buf"] <= full["full"] < full["snd_buf"] + (8 << 20), full
        reader.stdin.write(f"go {full['full']}\n")
        reader.stdin.flush()
        got = finish(reader)
        stats = finish(srv)
    finally:
        for proc in (srv, reader):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert got == {"ok": True, "bytes": full["full"]}
    assert stats["sent"] == full["full"]
    assert_clean(stats)


@pytest.mark.root
@pytest.mark.parametrize("n, frames", [(20, 4096), (10, 1024)], ids=["pool4096", "pool1024"])
def test_asyncio_echo_server_on_the_stack(tb, n, frames):
    # 1024 frames (2 MB) back 10 connections whose buffers add up to 5 MB: the pool, not
    # the buffers, is the limit. Sends, receive windows and the fill ring each keep a
    # share, so no side waits on frames that only another's progress would free.
    got, stats = echo_run(tb, AIO_ECHO, n, 400000, str(frames))
    assert stats["sizes"] == got["sizes"]
    assert_clean(stats)


@pytest.mark.root
def test_asyncio_open_connection_to_a_linux_server(tb):
    port = 6002
    server = tb.popen("client", [sys.executable, "-c", LINUX_SERVER, str(port)], **pipes())
    try:
        assert readline(server).strip() == "up"
        started = time.monotonic()
        out = stack_script(tb, AIO_CLIENT, tb.host("client").iface.ip, port, CLOSED_PORT)
        stats = finish(out)
        linux = finish(server)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert stats["echoed"] is True
    assert linux == {"bytes": 3_000_000, "sha256": stats["sha256"]}
    assert time.monotonic() - started < 30
    assert_clean(stats)
