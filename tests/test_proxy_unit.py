"""`vtl proxy`'s joining logic against fake sockets (no root, no stack): backpressure,
half-close, failures, and the splice path coded against `Stack.splice()` before the stack
has it."""

import errno
import socket
from select import EPOLLIN, EPOLLOUT

import pytest
from vtlstack.apps.proxy import CHUNK, Direction, Pair, SplicedPair, address


class FakeSocket:
    """A TcpSocket as the proxy uses it: bytes to hand out, room to take them."""

    def __init__(self, incoming: bytes = b"", eof: bool = False, room: int = 1 << 30) -> None:
        self.incoming = bytearray(incoming)
        self.eof = eof
        self.room = room            # bytes send() takes before it would block
        self.sent = bytearray()
        self.shut = 0
        self.closed = False
        self.error = 0
        self.connected = True
        self.reads = 0

    def recv(self, bufsize: int, timeout: float | None = None) -> bytes:
        if self.incoming:
            self.reads += 1
            data = bytes(self.incoming[:bufsize])
            del self.incoming[:bufsize]
            return data
        if self.error:
            raise OSError(self.error, "fake")
        if self.eof:
            return b""
        raise BlockingIOError(errno.EAGAIN, "fake")

    def send(self, data: bytes, timeout: float | None = None) -> int:
        if self.error:
            raise OSError(self.error, "fake")
        if not self.room:
            raise BlockingIOError(errno.EAGAIN, "fake")
        n = min(len(data), self.room)
        self.room -= n
        self.sent += data[:n]
        return n

    def shutdown(self, how: int) -> None:
        assert how == socket.SHUT_WR
        self.shut += 1

    def close(self) -> None:
        self.closed = True

    def getpeername(self) -> tuple[str, int]:
        return "10.0.0.1", 40000


def test_a_direction_reads_one_chunk_ahead_of_a_slow_receiver():
    src, dst = FakeSocket(b"x" * (10 * CHUNK)), FakeSocket(room=100)
    d = Direction(src, dst)
    assert d.pump() == 100
    # one read held, no more: the rest stays in src (its window closes)
    assert src.reads == 1 and len(d.pending) == CHUNK - 100
    interest = {src: 0, dst: 0}
    d.want(interest)
    assert interest == {src: 0, dst: EPOLLOUT}
    dst.room = 1 << 30
    assert d.pump() == 10 * CHUNK - 100
    assert bytes(dst.sent) == b"x" * (10 * CHUNK) and d.pending is None


def test_eof_one_way_is_a_shutdown_the_other_way_and_the_other_direction_goes_on():
    client, upstream = FakeSocket(b"request", eof=True), FakeSocket(b"resp")
    pair = Pair(client, upstream, now=0.0)
    assert not pair.advance(1.0, stack=None)
    assert upstream.sent == b"request" and upstream.shut == 1 and client.shut == 0
    assert client.sent == b"resp" and not client.closed
    upstream.incoming += b"onse"
    upstream.eof = True
    assert pair.advance(2.0, stack=None)
    assert client.sent == b"response" and client.shut == 1
    assert client.closed and upstream.closed and pair.end == "closed"
    assert pair.byte_counts() == (len(b"request"), len(b"response"))


def test_upstream_refused_gives_the_client_a_fin_and_drops_its_bytes():
    client, upstream = FakeSocket(b"GET / HTTP/1.1\r\n\r\n"), FakeSocket()
    upstream.connected, upstream.error = False, errno.ECONNREFUSED
    pair = Pair(client, upstream, now=0.0)
    assert pair.want() == {client: 0, upstream: EPOLLOUT}
    assert not pair.advance(1.0, stack=None)
    assert client.shut == 1 and not client.incoming and upstream.sent == b""
    assert pair.end == "upstream_refused" and pair.upstream_error == errno.ECONNREFUSED
    # the failed upstream is left out of the wait: it would report its error every pass
    assert pair.want() == {client: EPOLLIN}
    # a client that goes on sending is cut after DRAIN_S; this one closes
    assert not pair.overdue(2.0, idle_timeout=100) and pair.overdue(7.0, idle_timeout=100)
    client.eof = True
    assert pair.advance(2.0, stack=None) and client.closed


def test_upstream_reset_mid_response_delivers_what_came_then_a_fin():
    client, upstream = FakeSocket(), FakeSocket(b"partial")
    upstream.error = errno.ECONNRESET
    pair = Pair(client, upstream, now=0.0)
    assert not pair.advance(1.0, stack=None)
    assert client.sent == b"partial" and client.shut == 1
    assert pair.end == "upstream_econnreset"


def test_client_reset_ends_the_pair():
    client, upstream = FakeSocket(), FakeSocket(b"data")
    client.error = errno.ECONNRESET
    pair = Pair(client, upstream, now=0.0)
    assert pair.advance(1.0, stack=None)
    assert pair.end == "client_reset" and client.closed and upstream.closed


class FakeSplice:
    def __init__(self) -> None:
        self.done = False
        self.aborted = False
        self.moved = (0, 0)

    def counters(self) -> dict[str, int]:
        return {"bytes_ab": self.moved[0], "bytes_ba": self.moved[1]}

    def abort(self) -> None:
        self.aborted = True


class FakeStack:
    def __init__(self) -> None:
        self.spliced: list[tuple] = []

    def splice(self, a: FakeSocket, b: FakeSocket, inspect: str | None = None) -> FakeSplice:
        self.spliced.append((a, b, inspect))
        return FakeSplice()


def test_spliced_pair_hands_both_sockets_to_the_stack_once_connected():
    stack = FakeStack()
    client, upstream = FakeSocket(b"early bytes"), FakeSocket()
    upstream.connected = False
    pair = SplicedPair(client, upstream, now=0.0)
    assert not pair.advance(0.5, stack)
    assert stack.spliced == []
    upstream.connected = True
    assert not pair.advance(1.0, stack)
    assert stack.spliced == [(client, upstream, None)]
    # the app reads nothing once spliced: the early bytes are the splice's; it only
    # waits for the sockets' EPOLLHUP, the splice's end
    assert client.incoming == b"early bytes" and pair.want() == {client: 0, upstream: 0}
    pair.splice.moved = (11, 5000)
    assert pair.idle_for(2.0) == 0 and pair.idle_for(3.0) == 1.0
    assert pair.byte_counts() == (11, 5000)
    pair.splice.done = True
    assert pair.advance(4.0, stack) and pair.end == "closed"
    assert not client.closed and not pair.splice.aborted   # the splice closed them


def test_spliced_pair_cut_by_the_proxy_is_aborted():
    stack = FakeStack()
    pair = SplicedPair(FakeSocket(), FakeSocket(), now=0.0)
    pair.advance(1.0, stack)
    pair.close()
    assert pair.splice.aborted


@pytest.mark.parametrize("text, want", [("10.0.0.1:80", ("10.0.0.1", 80)),
                                        ("0.0.0.0:65535", ("0.0.0.0", 65535))])
def test_address(text, want):
    assert address(text) == want
