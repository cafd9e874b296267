"""`vtl echo`: an echo service in the stack, answering plain Linux clients.

UDP by default: the network thread answers each datagram in place (the frame is turned
around and re-sent: no copy, no application round trip). `--app` answers from the
application thread through the handoff channels and the socket API instead; `--kernel` runs
the same service on a kernel UDP socket, for comparison.

`--tcp`: a TCP echo served from the application thread, one connection after another
(accept, echo until EOF, close, next), with Nagle off. `--kernel --tcp` runs the very same
serving loop over kernel sockets, so a comparison measures the transport, not the code.
"""

from __future__ import annotations

import argparse
import resource
import select
import socket
import time
from typing import Any, Protocol

from vtlstack.apps._common import RunUntil, emit

from vtlstack.errors import VtlError

# What one recv() asks for, on both transports.
TCP_RECV_BYTES = 65536


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("echo", help="UDP (or --tcp) echo service on an interface (AF_XDP)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", required=True, help="interface to attach to (in this netns)")
    p.add_argument("--port", type=int, default=7, help="port to answer (default 7)")
    p.add_argument("--mode", choices=("auto", "skb", "drv"), default="auto",
                   help="XDP attach mode (veth supports skb and drv, copy mode)")
    p.add_argument("--batch", type=int, default=64, help="RX/TX batch size (default 64)")
    p.add_argument("--busy-poll-us", type=int, default=None,
                   help="microseconds the idle network thread (and a waiting app thread) "
                        "polls, yielding, before sleeping (default: the stack's, 20; 0: at "
                        "once)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--app", action="store_true",
                     help="echo from the application thread via the socket API")
    how.add_argument("--kernel", action="store_true",
                     help="echo on a kernel socket instead (the comparison)")
    p.add_argument("--tcp", action="store_true",
                   help="TCP echo (accept, echo until EOF, close), Nagle off; with --kernel "
                        "the same loop on kernel sockets")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.tcp:
        if args.app:
            raise VtlError("--app is for UDP: a TCP echo always answers from the app thread")
        return _tcp_kernel_echo(args) if args.kernel else _tcp_stack_echo(args)
    if args.kernel:
        return _kernel_echo(args)
    from vtlstack.stack import Stack

    stack = Stack(args.iface, mode=args.mode, batch=args.batch, busy_poll_us=args.busy_poll_us)
    with stack:
        if args.app:
            sock = stack.udp_socket(args.port)
            emit({"event": "ready", "iface": args.iface, "ip": stack.ip, "port": args.port,
                  "path": "app"})
            with RunUntil(args.duration) as running:
                while running:
                    try:
                        data, peer = sock.recvfrom(timeout=0.2)
                    except TimeoutError:
                        continue
                    sock.sendto(data, peer)
        else:
            stack.echo(args.port)
            emit({"event": "ready", "iface": args.iface, "ip": stack.ip, "port": args.port,
                  "path": "stack"})
            with RunUntil(args.duration) as running:
                running.wait()
    # After close(): every frame is back (close() raises otherwise), counters are final.
    emit({"event": "stats", **stack.final_stats})
    return 0


def _kernel_echo(args: argparse.Namespace) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
        s.bind(("0.0.0.0", args.port))
        s.settimeout(0.2)
        emit({"event": "ready", "iface": args.iface, "port": args.port, "path": "kernel"})
        echoed = 0
        with RunUntil(args.duration) as running:
            while running:
                try:
                    data, peer = s.recvfrom(65535)
                except TimeoutError:
                    continue
                s.sendto(data, peer)
                echoed += 1
        emit({"event": "stats", "echoed": echoed})
    return 0


# ---- TCP -----------------------------------------------------------------------------------

class TcpConn(Protocol):
    """What the serving loop needs of a connection (a stack TcpSocket has it as is)."""

    def recv(self, bufsize: int, timeout: float | None = None) -> bytes: ...
    def sendall(self, data: bytes, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...


class TcpListen(Protocol):
    def accept(self, timeout: float | None = None) -> TcpConn: ...


class KernelConn:
    """A kernel TCP socket behind the stack's connection API (a timeout per call).

    The socket stays non-blocking and poll() runs only when a call would block: Python's
    own socket timeouts poll before every call, syscalls the stack's side does not pay.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._mask = select.POLLIN

    def _wait(self, mask: int, deadline: float | None, what: str) -> None:
        if mask != self._mask:
            self._poll.modify(self.sock, mask)
            self._mask = mask
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._poll.poll(None if left is None else left * 1000):
            raise TimeoutError(f"TCP {what} timed out")

    def recv(self, bufsize: int, timeout: float | None = None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.sock.recv(bufsize)
            except BlockingIOError:
                self._wait(select.POLLIN, deadline, "recv")

    def send(self, data: bytes, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.sock.send(data)
            except BlockingIOError:
                self._wait(select.POLLOUT, deadline, "send")

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view, timeout):]

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> KernelConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KernelListener:
    """A listening kernel TCP socket behind the stack's listener API."""

    def __init__(self, port: int, iface: str | None = None, nodelay: bool = False,
                 backlog: int = 128) -> None:
        self.nodelay = nodelay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if iface:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
            self.sock.bind(("0.0.0.0", port))
            self.sock.listen(backlog)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def accept(self, timeout: float | None = None) -> KernelConn:
        while True:
            try:
                conn, _ = self.sock.accept()
                break
            except BlockingIOError:
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if not ready:
                    raise TimeoutError("no connection to accept") from None
        if self.nodelay:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return KernelConn(conn)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> KernelListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_echo(listener: TcpListen, running: RunUntil) -> dict[str, int]:
    """The TCP serving loop, for both transports: accept, echo until EOF, close, next."""
    served = echoed = errors = 0
    while running:
        try:
            conn = listener.accept(timeout=0.2)
        except TimeoutError:
            continue
        try:
            while running:
                try:
                    data = conn.recv(TCP_RECV_BYTES, timeout=0.5)
                except TimeoutError:
                    continue
                if not data:
                    break
                conn.sendall(data, timeout=5.0)
                echoed += len(data)
            served += 1
        except OSError:
            # A reset or a stuck peer ends that connection, not the service.
            errors += 1
        finally:
            conn.close()
    return {"connections": served, "echoed_bytes": echoed, "errors": errors}


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _tcp_stack_echo(args: argparse.Namespace) -> int:
    from vtlstack.stack import Stack

    served: dict[str, Any] = {}
    stack = Stack(args.iface, mode=args.mode, batch=args.batch, busy_poll_us=args.busy_poll_us,
                  tcp_options={"nodelay": True})
    with stack:
        listener = stack.tcp_listen(args.port)
        emit({"event": "ready", "iface": args.iface, "ip": stack.ip, "port": args.port,
              "path": "stack", "proto": "tcp"})
        cpu0 = _cpu_seconds()
        with RunUntil(args.duration) as running:
            served = serve_echo(listener, running)
        served["cpu_seconds"] = round(_cpu_seconds() - cpu0, 4)
        listener.close()
    # After close(): every frame is back (close() raises otherwise), counters are final.
    emit({"event": "stats", **served, **stack.final_stats})
    return 0


def _tcp_kernel_echo(args: argparse.Namespace) -> int:
    with KernelListener(args.port, args.iface, nodelay=True) as listener:
        emit({"event": "ready", "iface": args.iface, "port": args.port, "path": "kernel",
              "proto": "tcp"})
        cpu0 = _cpu_seconds()
        with RunUntil(args.duration) as running:
            served = serve_echo(listener, running)
        served["cpu_seconds"] = round(_cpu_seconds() - cpu0, 4)
    emit({"event": "stats", **served})
    return 0
