"""asyncio on the stack: transports, streams and servers over a `Stack`'s TCP sockets.

`open_connection()` and `start_server()` give the standard `asyncio.StreamReader` and
`asyncio.StreamWriter` (read, readline, readexactly, readuntil, at_eof; write, writelines,
drain, write_eof, close, wait_closed...), built on `StackTransport`, an asyncio Transport
whose socket is a non-blocking stack socket. `create_connection()`/`create_server()` take
a protocol factory, as the loop's methods of those names do.

How it is driven: one `_Driver` per Stack and loop watches `Stack.fileno()` with
`loop.add_reader`; when the network thread hands something over, it pumps the stack and
tells the transports and servers whose sockets changed. Before going back to the loop it
re-arms the eventfd (`Stack.arm()`), so no wakeup is lost. A Stack driven here belongs to
the loop's thread; close transports and servers before closing the Stack. Make the Stack
outside the running loop (it reads the interface through pyroute2, which runs a loop of
its own); the next-hop lookup of a connect runs in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import os
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from vtlstack.stack import Stack, TcpAny, TcpListener, TcpSocket

__all__ = ["open_connection", "start_server", "create_connection", "create_server",
           "StackTransport", "StackServer"]

_READ_CHUNK = 1 << 16
_READS_PER_ROUND = 16       # per transport and wakeup, so that one busy peer cannot starve
_ACCEPTS_PER_ROUND = 64
_HIGH_WATER = 64 * 1024     # asyncio's defaults for write buffers
_LOW_WATER = 16 * 1024


class _Handler(Protocol):
    def _on_ready(self) -> None: ...


class _Driver:
    """Watches a Stack's eventfd in one loop and calls the handlers of changed sockets."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.stack = stack
        self.loop = loop
        self.fd = stack.fileno()
        self.handlers: dict[TcpAny, _Handler] = {}
        self.again: set[TcpAny] = set()
        self.scheduled = False
        self.watching = False

    def add(self, sock: TcpAny, handler: _Handler) -> None:
        self.handlers[sock] = handler
        if not self.watching:
            self.loop.add_reader(self.fd, self._service)
            self.watching = True
        self.kick(sock)

    def remove(self, sock: TcpAny) -> None:
        self.handlers.pop(sock, None)
        self.again.discard(sock)
        if not self.handlers and self.watching:
            self.loop.remove_reader(self.fd)
            self.watching = False

    def kick(self, sock: TcpAny | None = None) -> None:
        """Run a round soon: after any call on the stack (it may have taken messages for
        other sockets, or slept on the fd itself and so disarmed it), and for a handler
        with more to do (`sock`)."""
        if sock is not None:
            self.again.add(sock)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._service)

    def _service(self) -> None:
        self.scheduled = False
        if self.stack._net is None:  # the stack was closed under us
            if self.watching:
                self.loop.remove_reader(self.fd)
                self.watching = False
            return
        ready = self.stack.pump()
        if self.again:
            ready |= self.again
            self.again = set()
        if ready:
            for sock in ready:
                handler = self.handlers.get(sock)
                if handler is None:
                    continue
                try:
                    handler._on_ready()
                except Exception as exc:  # one broken handler must not stop the others
                    self.loop.call_exception_handler({
                        "message": "vtlstack.aio: error in a socket handler",
                        "exception": exc, "handler": handler})
            # One more round, which finds nothing new and arms the fd (or goes on).
            self.kick()
        elif not self.stack.arm():
            self.kick()


_drivers: weakref.WeakKeyDictionary[Stack, _Driver] = weakref.WeakKeyDictionary()


def _driver(stack: Stack) -> _Driver:
    loop = asyncio.get_running_loop()
    driver = _drivers.get(stack)
    if driver is None or driver.loop is not loop:
        driver = _drivers[stack] = _Driver(stack, loop)
    return driver


class StackTransport(asyncio.Transport):
    """An asyncio Transport over a connected stack TcpSocket (made non-blocking).

    Received bytes are copied out of UMEM in chunks of up to 64 KiB while reading is not
    paused; a paused reader leaves them in the stack, whose window then closes. Writes go
    to the stack as far as the send credit allows, the rest waits in a buffer flushed
    when credit comes back (pause_writing/resume_writing at the usual water marks)."""

    def __init__(self, driver: _Driver, sock: TcpSocket, protocol: asyncio.BaseProtocol,
                 server: StackServer | None = None) -> None:
        super().__init__({"peername": sock.getpeername(), "sockname": sock.getsockname(),
                          "stack_socket": sock})
        self._driver = driver
        self._loop = driver.loop
        self._sock = sock
        self._protocol: Any = protocol
        self._server = server
        self._buffer: collections.deque[memoryview] = collections.deque()
        self._buffered = 0
        self._high = _HIGH_WATER
        self._low = _LOW_WATER
        self._reading = True
        self._eof_seen = False
        self._eof_wanted = False
        self._shut = False
        self._closing = False
        self._lost = False
        self._protocol_paused = False
        sock.setblocking(False)
        driver.add(sock, self)

    # ---- events from the driver ---------------------------------------------------------

    def _on_ready(self) -> None:
        if self._lost:
            return
        sock = self._sock
        if self._reading and not self._eof_seen and not self._closing:
            for _ in range(_READS_PER_ROUND):
                try:
                    data = sock.recv(_READ_CHUNK)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._fatal(exc)
                    return
                if not data:
                    self._eof_seen = True
                    if not self._protocol.eof_received():
                        self.close()
                    break
                self._protocol.data_received(data)
                if self._lost or not self._reading or self._closing:
                    break
            else:
                self._driver.kick(sock)  # more may be there: next round, after others
        if self._lost:
            return
        if self._buffer or self._eof_wanted or self._closing:
            self._flush()
        elif self._eof_seen and sock.error:
            # a reset after the peer's FIN: nothing more to read, so say it now
            self._fatal(OSError(sock.error, os.strerror(sock.error)))

    def _flush(self) -> None:
        sock = self._sock
        while self._buffer:
            chunk = self._buffer[0]
            try:
                n = sock.send(chunk)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fatal(exc)
                return
            self._buffered -= n
            if n == len(chunk):
                self._buffer.popleft()
            else:
                self._buffer[0] = chunk[n:]
        self._driver.kick()
        self._maybe_resume_protocol()
        if self._buffer:
            return
        if self._eof_wanted and not self._shut:
            self._shut = True
            sock.shutdown(socket.SHUT_WR)
        if self._closing:
            self._finish(None)

    def _fatal(self, exc: BaseException | None) -> None:
        self._buffer.clear()
        self._buffered = 0
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._driver.remove(self._sock)
        self._sock.close()
        self._driver.kick()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            if self._server is not None:
                self._server._detach(self)
                self._server = None

    # ---- asyncio.WriteTransport ---------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self._eof_wanted:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or not data:
            return  # as asyncio's transports: writes after close() are dropped
        # bytes are immutable (no copy); a bytearray or view the caller may reuse is copied
        view = memoryview(data if isinstance(data, bytes) else bytes(data)).cast("B")
        if not self._buffer:
            try:
                n = self._sock.send(view)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            finally:
                self._driver.kick()
            view = view[n:]
        if view:
            self._buffer.append(view)
            self._buffered += len(view)
            self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._closing or self._eof_wanted:
            return
        self._eof_wanted = True
        if not self._buffer:
            self._flush()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._buffered > self._high and not self._protocol_paused:
            self._protocol_paused = True
            self._call_protocol("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._buffered <= self._low:
            self._protocol_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except Exception as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed", "exception": exc,
                "transport": self, "protocol": self._protocol})

    # ---- asyncio.ReadTransport ----------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._driver.kick(self._sock)

    # ---- asyncio.BaseTransport ----------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Flush what is buffered, then close (a FIN; unread received bytes make it a
        RST, as with kernel sockets); connection_lost(None) follows."""
        if self._closing:
            return
        self._closing = True
        self._flush()

    def abort(self) -> None:
        self._fatal(None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class _Connecting:
    """Until a non-blocking connect ends: writable (connected) or an error."""

    def __init__(self, sock: TcpSocket, done: asyncio.Future[None]) -> None:
        self.sock = sock
        self.done = done

    def _on_ready(self) -> None:
        if self.done.done():
            return
        if self.sock.error:
            err = self.sock.error
            self.done.set_exception(OSError(err, f"connect to {self.sock.peer}: "
                                                 f"{os.strerror(err)}"))
        elif self.sock.connected:
            self.done.set_result(None)


async def _resolve(host: str, port: int) -> str:
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(errno.EHOSTUNREACH, f"no IPv4 address for {host!r}") from None
        return infos[0][4][0]


async def create_connection(stack: Stack, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: str, port: int) -> tuple[StackTransport, asyncio.BaseProtocol]:
    """Connect to (host, port) through the stack; (transport, protocol) as the loop's
    create_connection(). Cancel it (asyncio.timeout / wait_for) to give up."""
    driver = _driver(stack)
    ip = await _resolve(host, port)
    if ip not in stack._routes:
        # the interface, the kernel's routes and ARP, through pyroute2, which cannot run
        # on a running loop (and may wait for an ARP answer): in a worker thread
        index, mac = await driver.loop.run_in_executor(None, stack._locate, ip)
        with stack._lock:
            stack._add_neighbour(ip, mac, index)
    sock = stack.tcp_connect((ip, port), blocking=False)
    done: asyncio.Future[None] = driver.loop.create_future()
    try:
        driver.add(sock, _Connecting(sock, done))
        await done
    except BaseException:
        driver.remove(sock)
        sock.close()
        driver.kick()
        raise
    driver.remove(sock)
    protocol = protocol_factory()
    transport = StackTransport(driver, sock, protocol)
    protocol.connection_made(transport)
    return transport, protocol


async def open_connection(stack: Stack, host: str, port: int, *, limit: int = 1 << 16,
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """(reader, writer) for a TCP connection through the stack, as asyncio.open_connection."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(stack, lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class StackServer:
    """A listening stack socket that makes a transport and protocol per connection.
    Like asyncio.Server: close(), wait_closed() (until every connection has closed as
    well, as in Python 3.12+), serve_forever(), async with."""

    def __init__(self, driver: _Driver, listener: TcpListener,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._driver = driver
        self._loop = driver.loop
        self._listener: TcpListener | None = listener
        self._factory = protocol_factory
        self._serving = False
        self._transports: set[StackTransport] = set()
        self._closed = self._loop.create_future()
        self._serving_forever: asyncio.Future[None] | None = None
        self.port = listener.port
        listener.setblocking(False)

    def _on_ready(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                conn = listener.accept()
            except BlockingIOError:
                return
            finally:
                self._driver.kick()  # accept asks the network thread (it may disarm the fd)
            protocol = self._factory()
            transport = StackTransport(self._driver, conn, protocol, server=self)
            self._transports.add(transport)
            try:
                protocol.connection_made(transport)
            except Exception as exc:
                transport.abort()
                self._loop.call_exception_handler({
                    "message": "protocol.connection_made() failed", "exception": exc,
                    "transport": transport, "protocol": protocol})
        self._driver.kick(listener)

    def _detach(self, transport: StackTransport) -> None:
        self._transports.discard(transport)
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        if self._listener is None and not self._transports and not self._closed.done():
            self._closed.set_result(None)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._listener is None:
            raise RuntimeError("the server is closed")
        if not self._serving:
            self._serving = True
            self._driver.add(self._listener, self)

    async def serve_forever(self) -> None:
        """Serve until cancelled (then close the server), or until close()."""
        if self._serving_forever is not None:
            raise RuntimeError("serve_forever() is already running")
        await self.start_serving()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        finally:
            self._serving_forever = None
            self.close()

    def close(self) -> None:
        """Stop accepting (connections already made go on)."""
        listener = self._listener
        if listener is None:
            return
        self._listener = None
        self._serving = False
        self._driver.remove(listener)
        listener.close()
        self._driver.kick()
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.set_result(None)
        self._maybe_closed()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> StackServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def create_server(stack: Stack, protocol_factory: Callable[[], asyncio.BaseProtocol],
                        port: int, *, backlog: int = 128,
                        start_serving: bool = True) -> StackServer:
    """Listen on `port` of the stack's address; a protocol per connection."""
    driver = _driver(stack)
    listener = stack.tcp_listen(port, backlog)
    driver.kick()  # tcp_listen asked the network thread (it may disarm the fd)
    server = StackServer(driver, listener, protocol_factory)
    if start_serving:
        await server.start_serving()
    return server


ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                           Awaitable[None] | None]


async def start_server(stack: Stack, client_connected_cb: ClientConnected, port: int, *,
                       backlog: int = 128, limit: int = 1 << 16,
                       start_serving: bool = True) -> StackServer:
    """A stream server on the stack, as asyncio.start_server: client_connected_cb(reader,
    writer) is called (a coroutine becomes a task) for each connection."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(stack, factory, port, backlog=backlog,
                               start_serving=start_serving)
