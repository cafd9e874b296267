"""The application's side of the stack: `Stack` owns the ports and the network thread.

The application thread never touches protocol state: it asks the network thread for
things (bind a port, send a datagram, return a frame) through the `to_net` channel and
reads what the network thread hands it from `to_app`. Calls on one Stack may come from
several application threads; a lock keeps the channels single-producer/single-consumer.

Readiness: sockets can be non-blocking (`setblocking(False)`: BlockingIOError instead of
waiting), `Stack.wait()` is an epoll-like wait over many sockets (select.EPOLL* bits), and
an external event loop can watch `Stack.fileno()` with `arm()`/`pump()` (see vtlstack.aio).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from select import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, POLLNVAL
from typing import Any

from vtlstack import _fastpath
from vtlstack._port import XskPort
from vtlstack._tcp import EVENT_NAMES
from vtlstack._zc import FrameQueue, FrameSet, ZcChain
from vtlstack.errors import InterfaceError, VtlError, require_root
from vtlstack.splice import Splice
from vtlstack.xdp import Steering

# Message kinds, defined once beside the network thread that handles them (_fastpath.pxd).
_MSG = _fastpath.MsgKind
_GRANT_BATCH = 128      # frames the app keeps for sending (a send returns its frame), at
                        # most a sixteenth of the pool: frames the app holds idle are
                        # frames that cannot open receive windows
_WANT_AGAIN = 0.001     # seconds before frames are asked for again
_NB_FRAME_WAIT = 0.01   # how long a non-blocking send waits for the network thread's grant
_WAIT_STEP = 0.05
# Event bits of the TCP engine, by name (defined once, in vtlstack._tcp).
_EV = {name: bit for bit, name in EVENT_NAMES.items()}
# Local ports for active opens: above the kernel's ephemeral range (32768-60999), so the
# kernel never hands one of them out and never answers for our flows.
EPHEMERAL_PORTS = range(61000, 65536)
# Microseconds an idle thread polls (yielding) before it sleeps: see Stack.
BUSY_POLL_US = 20
# Stack.wait() reports these whether asked for or not, as epoll does (POLLNVAL: closed).
_ALWAYS = EPOLLERR | EPOLLHUP | POLLNVAL


def _iface_addresses(ifname: str) -> tuple[bytes, str, int, int]:
    """MAC, first IPv4 address, its prefix length and the MTU of an interface in the
    current namespace (pyroute2)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise InterfaceError(
                f"no interface {ifname!r} in this network namespace (see `ip link`)")
        link = ipr.get_links(found[0])[0]
        mac = bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))
        addrs = ipr.get_addr(index=found[0], family=socket.AF_INET)
        if not addrs:
            raise InterfaceError(f"interface {ifname!r} has no IPv4 address: the stack "
                                 "shares the interface's address, so give it one")
        return (mac, addrs[0].get_attr("IFA_ADDRESS"), addrs[0]["prefixlen"],
                link.get_attr("IFLA_MTU"))


def _ip_to_net(ip: str) -> int:
    """An IPv4 address as the integer whose memory layout is network byte order."""
    return struct.unpack("=I", socket.inet_aton(ip))[0]


def _ip_from_net(value: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", value))


class Stack:
    """A userspace transport stack on one interface (AF_XDP port + network thread), or on
    several: `Stack(["eth0", "eth1"])` drives one AF_XDP port per interface over one UMEM
    (a frame received on one can be sent on another without a copy) from one network
    thread, so connections on every interface live in one TCP engine. `ip`, `mac`,
    `iface` are the first interface's; `ips`, `macs`, `ifaces` all of them. Listeners
    take connections on every interface's address; `tcp_connect` goes out the interface
    whose subnet holds the peer, else the one the kernel routes it through. UDP sockets
    and the echo service are on the first interface only.

    Use as a context manager; `close()` detaches everything, also after an error.
    `busy_poll_us`: how long the idle network thread keeps polling before it sleeps in
    poll(), and the application thread checks for news before it sleeps too; both yield
    the CPU between checks (sched_yield), so a thread on the same core gets it meanwhile.
    0 sleeps at once. A sleep and a wakeup cost tens of microseconds in a VM: the default
    (None: BUSY_POLL_US, 20) lifted `vtl echo --tcp`'s connections/s from 5.5 to 8.9
    thousand on 2 cores.
    `net_cpu` pins the network thread to one CPU (default: it runs where the process may);
    the application thread stays where the process was put.
    """

    def __init__(self, iface: str | Sequence[str], *, mode: str = "auto", queue: int = 0,
                 frame_count: int = 4096, frame_size: int = 2048, batch: int = 64,
                 busy_poll_us: int | None = None, max_conns: int = 1024,
                 tcp_options: dict[str, Any] | None = None,
                 net_cpu: int | None = None) -> None:
        require_root("vtlstack.Stack")
        ifaces = (iface,) if isinstance(iface, str) else tuple(iface)
        if not ifaces or len(set(ifaces)) != len(ifaces):
            raise ValueError(f"interfaces {ifaces!r}: name one or more, each once")
        self.ifaces = ifaces
        self.iface = ifaces[0]
        found = [_iface_addresses(name) for name in ifaces]
        self.macs = tuple(mac for mac, *_ in found)
        self.ips = tuple(ip for _, ip, *_ in found)
        if len(set(self.ips)) != len(self.ips):
            raise InterfaceError(f"interfaces {', '.join(ifaces)} share an address: the "
                                 "stack picks the interface of a connection by its address")
        # the subnets tcp_connect looks in first
        self._networks = tuple(ipaddress.IPv4Interface(f"{ip}/{plen}").network
                               for _, ip, plen, _ in found)
        self.mac, self.ip, _, self.mtu = found[0]
        self._lock = threading.Lock()
        self._sockets: dict[int, UdpSocket] = {}
        self._tcp: dict[int, TcpSocket | TcpListener] = {}
        # TCP sockets that took a message since the last pump(): what an event loop checks
        self._touched: set[TcpSocket | TcpListener] = set()
        self._results: deque[tuple[int, int, str, int, str]] = deque()
        self._ports_in_use: set[int] = set()
        self._next_port = EPHEMERAL_PORTS.start
        self._next_sock = 0
        self._granted: deque[int] = deque()
        self._owed = 0      # frames asked for (MSG_WANT) and not granted yet
        # Zero-copy sets the app holds (recv_zc chains, record batches), each with the
        # queue its frames came from when frames may be shared with it (record batches)
        self._held: dict[FrameSet, FrameQueue | None] = {}
        self._grant_batch = max(4, min(_GRANT_BATCH, frame_count // 16))
        # non-blocking TCP sockets whose send found no free frame (see _frames_for)
        self._starved: set[TcpSocket] = set()
        self._wanted_at = -1.0
        self._neigh: set[tuple[str, int]] = set()    # (ip, port index) the thread knows
        self._routes: dict[str, int] = {}               # peer ip -> its port index
        self._steerings: list[Steering] = []
        self._steering: Steering | None = None          # the first interface's
        self._ports: list[XskPort] = []
        self._port: XskPort | None = None               # the first: its pool is all ports'
        self._net: _fastpath.NetThread | None = None
        self.final_stats: dict[str, Any] = {}
        self.app_parse_errors = 0   # record connections closed by parse_in="app" parsing
        self._stopped_net: _fastpath.NetThread | None = None
        try:
            for name in ifaces:
                steering = Steering(name, mode=mode)
                self._steerings.append(steering)
                # Active opens use these local ports: steered to us for the stack's
                # lifetime, so a late segment of a closed connection never reaches the
                # kernel (RST).
                steering.own_range(socket.IPPROTO_TCP, EPHEMERAL_PORTS.start,
                                   EPHEMERAL_PORTS.stop - 1)
            self._steering = self._steerings[0]
            for name, steering in zip(ifaces, self._steerings, strict=True):
                # Ports after the first join its UMEM. With several, fill rings are filled
                # once all exist (by the network thread), so they split the budget evenly.
                self._ports.append(XskPort(
                    name, queue_id=queue, frame_count=frame_count, frame_size=frame_size,
                    batch=batch, mode=mode, xsks_map_fd=steering.xsks_map_fd,
                    share_umem=self._ports[0] if self._ports else None,
                    fill=len(ifaces) == 1))
                self._port = self._ports[0]
            self._net = _fastpath.NetThread(self._port, self.mac, _ip_to_net(self.ip),
                                            batch=batch,
                                            busy_poll_us=BUSY_POLL_US if busy_poll_us is None
                                            else busy_poll_us,
                                            max_conns=max_conns, tcp_options=tcp_options)
            for port, mac, ip in zip(self._ports[1:], self.macs[1:], self.ips[1:],
                                     strict=True):
                self._net.add_port(port, mac, _ip_to_net(ip))
            self.snd_buf = self._net.tcp.snd_buf
            self._net.start(net_cpu)
        except BaseException:
            self.close()
            raise

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the network thread, take back every frame, release the ports, detach XDP.

        Raises VtlError if a frame is unaccounted for (a leak is a bug, never silent);
        the last counters stay readable as `final_stats`.
        """
        if self._net is not None:
            # Sockets the app left open close as if it had closed them: FINs go out (or
            # RSTs, for unread data) while the thread lingers.
            for sock in list(self._tcp.values()):
                sock.close()
            cpu = self.net_thread_cpu_seconds()
            self._net.stop()
            self._stopped_net = self._net
            self.final_stats = {"net": self._net.stats(), "tcp": self._net.tcp.counters(),
                                "tcp_left": self._net.tcp.open_states(),
                                "app_parse_errors": self.app_parse_errors,
                                "net_cpu_seconds": cpu}
            if self._steering is not None:
                self.final_stats["steering"] = self._steering.counters()
                if len(self._steerings) > 1:
                    self.final_stats["steerings"] = {
                        st.ifname: st.counters() for st in self._steerings}
            self._net = None
        if self._port is not None:
            # The network thread is gone: the app side may hand its frames back directly,
            # those of messages it never read included.
            pool = self._port.pool
            if self._stopped_net is not None:
                self._drain_unread(self._stopped_net.to_app, pool.free)
                self._drain_unread(self._stopped_net.to_net, pool.free)
            for addr in self._granted:
                pool.free(addr)
            self._granted.clear()
            for sock in self._sockets.values():
                for addr, *_ in sock._queue:
                    pool.free(addr)
                sock._queue.clear()
            for conn in self._tcp.values():
                conn._drop_received(pool.free)
            exported = 0
            for held, shares in self._held.items():
                exported += held._abandon()
                held.give_back(pool.free, shares)
            self._held.clear()
            if self._net is None and self._stopped_net is not None:
                self._stopped_net.release_tcp()
                self._stopped_net = None
            try:
                self._port.check_frames(expect_idle=True)
            finally:
                self.final_stats["port"] = self._port.stats()
                if len(self._ports) > 1:
                    self.final_stats["ports"] = {p.ifname: p.stats() for p in self._ports}
                # the first port's UMEM is the others' too: it goes last
                for port in reversed(self._ports):
                    port.close()
                self._ports.clear()
                self._port = None
            if exported:
                raise VtlError(f"{exported} zero-copy set(s) were still read through "
                               "memoryviews when the stack closed: their memory is gone")
        for steering in self._steerings:
            steering.close()
        self._steerings.clear()
        self._steering = None

    # ---- services --------------------------------------------------------------------

    def echo(self, port: int) -> None:
        """Answer UDP datagrams to `port` in the network thread (no app round trip)."""
        self._own(port)
        self._send_ctl(_MSG.MSG_ECHO, lport=port)

    def udp_socket(self, port: int) -> UdpSocket:
        """A UDP socket bound to `port` on the interface's address."""
        if port in self._sockets or not 0 < port < 65536:
            raise OSError(errno.EADDRINUSE if port in self._sockets else errno.EINVAL,
                          f"cannot bind UDP port {port}")
        sock = UdpSocket(self, port, self._next_sock)
        self._next_sock += 1
        self._sockets[sock.id] = sock
        self._own(port)
        self._send_ctl(_MSG.MSG_BIND, lport=port, sock=sock.id)
        return sock

    def tcp_listen(self, port: int, backlog: int = 128, *,
                   transparent: bool = False) -> TcpListener:
        """A listening TCP socket on `port` of every interface's address.

        `transparent`: also take the connections to `port` of any other host that are
        routed through this one (a transparent proxy on a router); an accepted socket's
        `getsockname()` is the address the client asked for. The answers to connections
        made from a client's address (`tcp_connect(..., source=)`) come back from servers
        on this port: those are steered to the stack too. For the stack's lifetime."""
        if not 0 < port < 65536:
            raise OSError(errno.EINVAL, f"bad TCP port {port}")
        with self._lock:
            assert self._steering is not None and self._net is not None
            steered = (socket.IPPROTO_TCP, port) in self._steering.owned
            if transparent:
                self._net.transparent = True
                for steering in self._steerings:
                    steering.own_source(socket.IPPROTO_TCP, port)
            self._own(port, socket.IPPROTO_TCP)
            cid, *_ = self._request(_MSG.MSG_TCP_LISTEN, lport=port, arg=backlog)
            if cid < 0:
                if not steered:
                    for steering in self._steerings:
                        steering.disown(socket.IPPROTO_TCP, port)
                raise OSError(errno.EADDRINUSE, f"cannot listen on TCP port {port}")
            listener = TcpListener(self, cid, port)
            self._tcp[cid] = listener
        return listener

    def listen(self, port: int, parser: str | os.PathLike | None = None, *,
               parse_in: str = "net", backlog: int = 128, ring_events: int = 1 << 14,
               max_record: int | None = None, **options: Any) -> TcpListener:
        """A listening TCP socket; with a parser (a built-in name, a spec path or a loaded
        vtlstack.parsers.Parser; `options` go to parsers.load) its connections deliver
        records: `conn.read_records()` (see vtlstack.records). parse_in="net" parses in
        the network thread as frames arrive, "app" in read_records(). `ring_events`
        bounds the parsed events not yet read per connection (the parser waits beyond
        it), `max_record` the bytes of one record (default and most: half the receive
        buffer); beyond either the connection fails with a ParseError."""
        config = None
        if parser is not None:
            from vtlstack.records import RecordConfig

            config = RecordConfig(parser, options, parse_in, ring_events, max_record,
                                  self._net.tcp.rcv_buf)
        elif options:
            raise TypeError(f"parser options without a parser: {', '.join(options)}")
        listener = self.tcp_listen(port, backlog)
        listener._records = config
        return listener

    def tcp_connect(self, address: tuple[str, int], timeout: float | None = 10.0, *,
                    blocking: bool = True,
                    source: tuple[str, int] | None = None) -> TcpSocket:
        """Open a TCP connection to (ip, port); raises ECONNREFUSED, ETIMEDOUT...

        `blocking=False`: return at once a non-blocking socket whose handshake is in
        progress (the SYN is out). It turns writable (EPOLLOUT) when connected; a failure
        shows as EPOLLERR and `sock.error` (an errno, like SO_ERROR). Only the next-hop
        lookup may still wait (the kernel's ARP, at most 2 s, once per peer).

        On several interfaces the connection goes out the one whose IPv4 subnet holds
        `ip`, else the one the kernel routes `ip` through (to its gateway); ENETUNREACH
        if none of the stack's interfaces reaches it.

        `source` (ip, port): connect in another host's name, a transparent proxy's client
        (the stack must listen with transparent=True on the server's port, whose answers
        are steered to it then); ENOBUFS if that 4-tuple is taken."""
        ip, port = address
        ipaddress.IPv4Address(ip)
        if source is not None:
            ipaddress.IPv4Address(source[0])
            if self._net is None or not self._net.transparent:
                raise OSError(errno.EADDRNOTAVAIL, "tcp_connect(source=...) needs a "
                              "transparent listener (tcp_listen(port, transparent=True))")
        with self._lock:
            index = self._ensure_neighbour(ip)
            local_ip, lport = source if source is not None else (self.ips[index],
                                                                 self._pick_port())
            cid, gen, *_ = self._request(_MSG.MSG_TCP_CONNECT, ip=_ip_to_net(ip), port=port,
                                         lport=lport, arg=_ip_to_net(local_ip))
            if cid < 0:
                if source is None:
                    self._release_port(lport)
                raise OSError(errno.ENOBUFS, "no room for another TCP connection, or "
                              f"{local_ip}:{lport} is connected to {ip}:{port} already")
            # a source port is the client's, never ours to give back
            conn = TcpSocket(self, cid, gen, (ip, port), lport, accepted=source is not None)
            conn.local_ip = local_ip
            self._tcp[cid] = conn
        if not blocking:
            conn._timeout = 0.0
            return conn
        try:
            conn._wait(lambda: conn._connected, timeout, "connect")
        except BaseException:
            conn.close()
            raise
        return conn

    def splice(self, a: TcpSocket, b: TcpSocket, inspect: str | None = None,
               timeout: float = 5.0) -> Splice:
        """Join two connected sockets in the network thread: what either receives goes
        out on the other as the frames it came in (no copy), both ways, each FIN after its
        bytes; a reset of one ends the splice, and the other closes cleanly (a FIN) after
        what it was passed once the Splice closes it; each window advertised follows the
        other side's reader (adaptive alpha, `tcp_options` splice_b0, splice_pair_cap,
        splice_cap). Bytes received but not read yet go first. The Splice returned owns
        both sockets from now on: wait for its end, read its counters.

        inspect="http": `a` is the client's connection, `b` the server's. Both directions
        are parsed in the network thread from the frames themselves; a request goes on
        only once its head has parsed whole. A malformed or ambiguous request gets a 400
        and the client's connection closes (the server never sees it); a server that
        fails before answering gives the client a 502. `Splice.exchanges()` gives each
        request with its response (for an access log), `counters()` the totals."""
        inspector = None
        if inspect == "http":
            from vtlstack._inspect import HttpInspector

            inspector = HttpInspector()
        elif inspect is not None:
            raise ValueError(f"inspect is None or 'http', not {inspect!r}")
        for sock in (a, b):
            if type(sock) is not TcpSocket or sock._stack is not self:
                raise TypeError("splice() joins two TcpSockets of this stack (record "
                                "sockets read their bytes themselves)")
            if sock.closed or sock._spliced:
                raise OSError(errno.EBADF, "splice(): a socket is closed or spliced already")
        if a is b:
            raise OSError(errno.EINVAL, "splice(): a socket cannot be joined to itself")
        deadline = time.monotonic() + timeout
        block = inspector.hand_over() if inspector is not None else 0
        with self._lock:
            while True:
                # a refusal or a success makes the block the network thread's; -2 not
                result, *_ = self._request(_MSG.MSG_TCP_SPLICE, sock=a.cid, port=a.gen,
                                           arg=b.cid | b.gen << 32, addr=block)
                if result != -2:
                    break
                # bytes the app sent still wait for the pool: they must go first
                if time.monotonic() > deadline:
                    if inspector is not None:
                        inspector.take_back()
                    raise TimeoutError("splice(): earlier sends did not leave in time")
                self._pump(_WAIT_STEP)
            if result < 0:
                err = a._error or b._error
                raise OSError(err or errno.ENOTCONN,
                              "splice(): both sockets must be connected, neither shut down")
            for sock in (a, b):
                sock._spliced = True
                self._net.app_free_queue(sock._rx)
        return Splice(self, a, b, inspector)

    # ---- readiness: wait() and hooks for an external event loop ------------------------

    def wait(self, sockets: Mapping[TcpAny, int] | Iterable[TcpAny],
             timeout: float | None = None) -> list[tuple[TcpAny, int]]:
        """Wait until some of `sockets` are ready, like epoll_wait(); [] after `timeout`.

        `sockets` maps each socket to the events wanted (select.EPOLLIN | EPOLLOUT...); a
        plain iterable of sockets asks for EPOLLIN. Returns (socket, events) pairs, events
        being EPOLL* bits: EPOLLIN data, EOF or an error to read (a listener: a connection
        to accept); EPOLLOUT connected with send credit; EPOLLRDHUP the peer closed;
        EPOLLERR an error (`sock.error`); EPOLLHUP reset, timed out, or closed both ways;
        POLLNVAL the socket was closed by the app. ERR, HUP and NVAL come unasked.
        Level-triggered: a socket stays ready until it is read, written or accepted."""
        if isinstance(sockets, Mapping):
            interest = list(sockets.items())
        else:
            interest = [(sock, EPOLLIN) for sock in sockets]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._pump(0)
                ready = []
                for sock, mask in interest:
                    events = sock._readiness() & (mask | _ALWAYS)
                    if events:
                        ready.append((sock, events))
                if ready:
                    return ready
                left = _WAIT_STEP if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return []
                self._pump(min(left, _WAIT_STEP))

    def fileno(self) -> int:
        """The eventfd the network thread signals when it hands the app something, for an
        event loop to watch (readable). It is only signalled after `arm()` said True."""
        assert self._net is not None
        return self._net.to_app.efd

    def arm(self) -> bool:
        """Call right before an event loop sleeps on `fileno()`. True: nothing is pending
        and the next message will make the fd readable. False: messages are pending: call
        `pump()` and arm again. Blocking calls on the stack (recv, accept, wait...) may
        sleep on the fd themselves, which disarms it: arm after them too."""
        with self._lock:
            assert self._net is not None
            return bool(self._net.to_app.arm())

    def pump(self) -> set[TcpSocket | TcpListener]:
        """Without waiting: take what the network thread handed over (clearing the fd) and
        return the TCP sockets whose state may have changed since the last pump() (data,
        EOF, errors, send credit, connections to accept), by this call or another one."""
        with self._lock:
            assert self._net is not None
            self._net.to_app.disarm()
            for _ in range(4):  # bounded: a busy network thread is left to arm() to report
                if not self._pump(0):
                    break
            touched, self._touched = self._touched, set()
        return touched

    def _pick_port(self) -> int:
        # Round robin: a port just closed (maybe in TIME-WAIT) is the last to come back.
        for _ in EPHEMERAL_PORTS:
            port = self._next_port
            self._next_port = port + 1 if port + 1 < EPHEMERAL_PORTS.stop else \
                EPHEMERAL_PORTS.start
            if port not in self._ports_in_use:
                self._ports_in_use.add(port)
                return port
        raise OSError(errno.EADDRNOTAVAIL, "all local ports for TCP connections are in use")

    def _release_port(self, port: int) -> None:
        self._ports_in_use.discard(port)

    def _own(self, port: int, proto: int = socket.IPPROTO_UDP) -> None:
        """Steer the port to the stack: TCP on every interface, UDP on the first."""
        assert self._steering is not None
        for steering in self._steerings if proto == socket.IPPROTO_TCP else [self._steering]:
            steering.own(proto, port)

    # ---- statistics ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters of the network thread, the port's frame pool and the steering program
        (after close(): the last ones, as `final_stats`)."""
        if self._net is None:
            return self.final_stats
        assert self._port is not None and self._steering is not None
        out = {"net": self._net.stats(), "port": self._port.stats(),
               "app_parse_errors": self.app_parse_errors,
               "steering": self._steering.counters(), "tcp": self._net.tcp.counters(),
               "net_cpu_seconds": self.net_thread_cpu_seconds()}
        if len(self._ports) > 1:
            # "port" is the first port's rings and the pool they share; per interface:
            out["ports"] = {p.ifname: p.stats() for p in self._ports}
            out["steerings"] = {st.ifname: st.counters() for st in self._steerings}
        return out

    def net_thread_cpu_seconds(self) -> float:
        """CPU time (user + system) the network thread has used so far."""
        assert self._net is not None
        if not self._net.tid:
            # the thread learns its id as its loop starts: a Stack closed right after it
            # was made (a bad argument found then) may get here first
            return 0.0
        with open(f"/proc/self/task/{self._net.tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # ---- the handoff, application side -------------------------------------------------

    def _send_ctl(self, kind: int, **fields: int) -> None:
        assert self._net is not None
        deadline = time.monotonic() + 5.0
        while not self._net.to_net.push(kind, **fields):
            # The network thread drains this channel every loop; full means it is busy.
            if time.monotonic() > deadline:
                raise VtlError("the network thread stopped taking requests")
            time.sleep(0.0001)

    def _request(self, kind: int, timeout: float = 5.0,
                 **fields: int) -> tuple[int, int, str, int, str]:
        """Send a request that the network thread answers: (result, generation, and for
        a connection the peer's ip and port and our ip)."""
        self._send_ctl(kind, **fields)
        deadline = time.monotonic() + timeout
        while not self._results:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VtlError("the network thread did not answer a request")
            self._pump(min(left, _WAIT_STEP))
        return self._results.popleft()

    def _pump(self, timeout: float) -> bool:
        """Move what the network thread handed over to the sockets; wait up to timeout."""
        assert self._net is not None
        net, tcp, touched, granted = self._net, self._tcp, self._touched, self._granted
        had = len(granted)
        # in-order data goes onto its connection, grants onto _granted, on the way: what
        # comes back is another message, or how many of those were taken
        msg = net.app_pump(tcp, touched, granted)
        if not msg:
            if timeout <= 0 or not net.to_app.wait_ready(timeout):
                return False
            msg = net.app_pump(tcp, touched, granted)
        while type(msg) is tuple:
            kind, addr, length, ip, port, sock, lport, _ = msg
            if kind == _MSG.MSG_RECV:
                target = self._sockets.get(sock)
                if target is None:
                    self._send_ctl(_MSG.MSG_FREE, addr=addr)
                else:
                    target._queue.append((addr, length, ip, port))
            elif kind == _MSG.MSG_TCP_EVENT:
                conn = self._tcp.get(sock)
                if conn is not None and conn.gen == port:
                    conn._on_event(msg[7], length, lport)
                    self._touched.add(conn)
            elif kind == _MSG.MSG_TCP_RESULT:
                result = msg[7]
                self._results.append((result - (1 << 64) if result >> 63 else result, port,
                                      _ip_from_net(ip), lport, _ip_from_net(addr)))
                # Stop here: what follows may be about the connection this result creates,
                # so the caller must register it before those messages are dispatched.
                break
            msg = net.app_pump(tcp, touched, granted)
        got = len(granted) - had
        if got:
            self._owed = max(0, self._owed - got)
            if self._starved:
                # sends that would have blocked for want of frames can go on
                self._touched |= self._starved
                self._starved.clear()
        return True

    @staticmethod
    def _drain_unread(channel: Any, free: Any) -> None:
        """Frames carried by messages never read, either way (after the thread stopped)."""
        carry = (_MSG.MSG_RECV, _MSG.MSG_GRANT, _MSG.MSG_TCP_DATA,   # to the app
                 _MSG.MSG_SEND, _MSG.MSG_FREE, _MSG.MSG_TCP_SEND)    # to the network
        while (msg := channel.pop()) is not None:
            if msg[0] in carry:
                free(msg[1])

    def _take_frame(self, timeout: float) -> int:
        """A free frame for the app to fill."""
        self._want_frames(timeout)
        return self._granted.popleft()

    def _want_frames(self, timeout: float | None) -> None:
        """Until the app holds a free frame (None: as long as the network thread runs)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._ask_frames()
            if self._granted:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError("no free frame for sending yet: the pool is held by "
                                   "data in flight and data not read")
            if not self._net.running:
                raise VtlError("the network thread has stopped")
            self._pump(_WANT_AGAIN if deadline is None else min(deadline - now, _WANT_AGAIN))

    def _ask_frames(self) -> None:
        """Frames are asked for ahead of need, up to a batch, once the last ask was granted
        (sent segments keep their frames until acknowledged, so a sender asks all the
        time), and renewed now and then; what the network thread cannot grant at once it
        grants as frames come back."""
        have = len(self._granted)
        if have >= self._grant_batch // 2:
            return
        now = time.monotonic()
        if self._owed == 0 or now - self._wanted_at > _WANT_AGAIN:
            self._owed = self._grant_batch - have
            self._send_ctl(_MSG.MSG_WANT, length=self._owed)
            self._wanted_at = now

    def _frames_for(self, sock: TcpSocket, timeout: float | None, done: int) -> bool:
        """Frames for a send of `sock` that has taken `done` bytes so far. Non-blocking
        (timeout 0), it waits for the network thread's answer (microseconds), not for
        frames to come back: False when none are free (BlockingIOError if nothing was
        taken), and the socket reports EPOLLOUT again once frames are granted."""
        try:
            self._want_frames(_NB_FRAME_WAIT if timeout == 0 else timeout)
            return True
        except TimeoutError:
            if timeout != 0:
                raise
        self._starved.add(sock)
        if done:
            return False
        raise BlockingIOError(errno.EAGAIN, "no free frame for sending yet")

    def _ensure_neighbour(self, ip: str, index: int | None = None) -> int:
        """Make sure the network thread can send to `ip`: through the interface `index`,
        or (None) the one `_locate` picks. Returns that interface's index."""
        if index is None:
            index = self._routes.get(ip)
        if index is None or (ip, index) not in self._neigh:
            index, mac = self._locate(ip, index)
            self._add_neighbour(ip, mac, index)
        return index

    def _locate(self, ip: str, index: int | None = None) -> tuple[int, bytes]:
        """(index of the interface that reaches ip, MAC to send to there), from the
        stack's subnets and the kernel's routes and neighbours. Blocking (pyroute2,
        ARP): vtlstack.aio runs it in a worker thread."""
        if ip in self.ips:
            raise OSError(errno.EADDRNOTAVAIL, f"{ip} is this stack's own address")
        if index is not None:
            return index, resolve_neighbour(ip, self.ifaces[index])
        addr = ipaddress.IPv4Address(ip)
        for index, net in enumerate(self._networks):
            if addr in net:
                return index, resolve_neighbour(ip, self.ifaces[index], hop=ip)
        index, hop = route_via(ip, self.ifaces)
        return index, resolve_neighbour(ip, self.ifaces[index], hop=hop)

    def _add_neighbour(self, ip: str, mac: bytes, index: int = 0) -> None:
        """Tell the network thread a peer's MAC on interface `index` (vtlstack.aio
        resolves it off the loop: pyroute2 cannot run inside a running asyncio loop)."""
        self._send_ctl(_MSG.MSG_NEIGH, ip=_ip_to_net(ip), arg=int.from_bytes(mac, "little"),
                       lport=index)
        self._neigh.add((ip, index))
        self._routes.setdefault(ip, index)


class UdpSocket:
    """A UDP socket of the stack: datagrams are copied out of and into UMEM frames."""

    def __init__(self, stack: Stack, port: int, sock_id: int) -> None:
        self._stack = stack
        self.port = port
        self.id = sock_id
        self._queue: deque[tuple[int, int, int, int]] = deque()
        self.closed = False

    def recvfrom(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        """The next datagram and its sender; raises TimeoutError after `timeout` seconds."""
        stack = self._stack
        deadline = None if timeout is None else time.monotonic() + timeout
        with stack._lock:
            while not self._queue:
                left = _WAIT_STEP if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no datagram on UDP port {self.port}")
                stack._pump(min(left, _WAIT_STEP))
            addr, length, ip, port = self._queue.popleft()
            data = stack._port.pool.read(addr, length)
            stack._send_ctl(_MSG.MSG_FREE, addr=addr)
        return data, (_ip_from_net(ip), port)

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        """Send one datagram to (ip, port) from this socket's port."""
        ip, port = address
        stack = self._stack
        room = stack._port.pool.frame_size_ - _fastpath.UDP_PAYLOAD_OFFSET
        if len(data) > min(room, stack.mtu - 28):
            raise OSError(errno.EMSGSIZE, f"datagram of {len(data)} bytes does not fit a frame")
        ipaddress.IPv4Address(ip)
        with stack._lock:
            stack._ensure_neighbour(ip, 0)     # UDP is on the first interface only
            frame = stack._take_frame(timeout=5.0)
            stack._port.pool.write(frame + _fastpath.UDP_PAYLOAD_OFFSET, data)
            stack._send_ctl(_MSG.MSG_SEND, addr=frame, length=len(data), ip=_ip_to_net(ip),
                            port=port, lport=self.port)
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        stack = self._stack
        with stack._lock:
            stack._send_ctl(_MSG.MSG_UNBIND, lport=self.port)
            for addr, *_ in self._queue:
                stack._send_ctl(_MSG.MSG_FREE, addr=addr)
            self._queue.clear()
            del stack._sockets[self.id]

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TcpBase:
    """What listeners and connections share: identity, events, waiting, blocking mode.

    Every call's `timeout` argument overrides the socket's default (`settimeout`): None
    waits for ever, 0 is non-blocking (BlockingIOError when the call would wait)."""

    def __init__(self, stack: Stack, cid: int, gen: int) -> None:
        self._stack = stack
        self.cid = cid
        self.gen = gen
        self.closed = False
        self._events = 0
        self._error: int | None = None
        self._timeout: float | None = None

    def _on_event(self, mask: int, acked: int, mss: int) -> None:
        self._events |= mask

    # ---- blocking mode, as on socket.socket ---------------------------------------------

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def settimeout(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError("timeout must be None or >= 0")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    @property
    def error(self) -> int:
        """The pending error as an errno (ECONNREFUSED, ECONNRESET, ETIMEDOUT), else 0."""
        return self._error or 0

    def _readiness(self) -> int:
        """EPOLL* bits of what would not block now (see Stack.wait)."""
        raise NotImplementedError

    def _wait(self, ready: Callable[[], bool], timeout: float | None, what: str) -> None:
        """Pump the handoff until ready() or an error; the stack's lock must not be held.
        Non-blocking (timeout 0): take what is there without waiting, or BlockingIOError."""
        stack = self._stack
        if timeout is None:
            timeout = self._timeout
        if timeout == 0:
            with stack._lock:
                if not ready():
                    stack._pump(0)
                    if not ready():
                        self._raise_error()
                        raise BlockingIOError(errno.EAGAIN, f"TCP {what} would block")
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with stack._lock:
            while not ready():
                self._raise_error()
                left = _WAIT_STEP if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"TCP {what} timed out")
                stack._pump(min(left, _WAIT_STEP))

    def _raise_error(self) -> None:
        if self._error is not None:
            raise OSError(self._error, os.strerror(self._error))
        if self.closed:
            raise OSError(errno.EBADF, "socket is closed")

    def _drop_received(self, free: Any) -> None:
        """Hand back received frames still held (at stack close)."""


class TcpListener(_TcpBase):
    """A listening socket: accept() gives TcpSockets."""

    def __init__(self, stack: Stack, cid: int, port: int) -> None:
        super().__init__(stack, cid, 0)
        self.port = port
        self._records: Any = None      # a RecordConfig: accepted connections parse

    def accept(self, timeout: float | None = None) -> TcpSocket:
        """The next established connection. Non-blocking: BlockingIOError when none is
        announced (no request goes to the network thread then)."""
        stack = self._stack
        if timeout is None:
            timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with stack._lock:
                self._raise_error()
                if timeout == 0 and not self._events:
                    stack._pump(0)
                    if not self._events:
                        raise BlockingIOError(errno.EAGAIN, "no connection to accept")
                cid, gen, peer_ip, peer_port, local_ip = stack._request(
                    _MSG.MSG_TCP_ACCEPT, sock=self.cid)
                if cid >= 0:
                    # _events stays set: more may be queued (an extra request finds out)
                    if self._records is not None:
                        conn = self._records.socket(stack, cid, gen, (peer_ip, peer_port),
                                                    self.port)
                    else:
                        conn = TcpSocket(stack, cid, gen, (peer_ip, peer_port), self.port,
                                         accepted=True)
                    conn._connected = True
                    conn.local_ip = local_ip
                    stack._tcp[cid] = conn
                    if self._records is not None:
                        conn._attach()
                    return conn
                # The queue was empty when the network thread looked. A child that arrives
                # later announces itself after the result, so it is not cleared here.
                self._events = 0
                if timeout == 0:
                    raise BlockingIOError(errno.EAGAIN, "no connection to accept")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no connection to accept on TCP port {self.port}")
            # A child becoming ready shows up as an event on the listener.
            self._wait(lambda: self._events != 0, left, "accept")

    def _readiness(self) -> int:
        if self.closed:
            return POLLNVAL
        return EPOLLIN if self._events else 0

    def getsockname(self) -> tuple[str, int]:
        # on several interfaces it listens on all their addresses, as INADDR_ANY would
        stack = self._stack
        return (stack.ip if len(stack.ips) == 1 else "0.0.0.0"), self.port

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        stack = self._stack
        with stack._lock:
            stack._send_ctl(_MSG.MSG_TCP_CLOSE, sock=self.cid, port=self.gen)
            stack._tcp.pop(self.cid, None)
            stack._touched.discard(self)
            # The port stays steered to us until the stack closes: connections accepted
            # on it may still be closing (a FIN to resend, a last ACK to take), and the
            # kernel would reset them. A SYN for it now gets our RST, as from a closed port.

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpSocket(_TcpBase):
    """A TCP connection of the stack. Received bytes arrive as spans of UMEM frames (no
    copy in the stack); recv() copies them out and hands the frames back."""

    def __init__(self, stack: Stack, cid: int, gen: int, peer: tuple[str, int],
                 local_port: int, *, accepted: bool = False) -> None:
        super().__init__(stack, cid, gen)
        self.peer = peer
        self.local_port = local_port
        self.local_ip = stack.ip    # the address of the interface it is on
        self.accepted = accepted
        self._rx = FrameQueue()     # filled by Stack._pump (NetThread.app_pump)
        # Consuming (the window reopens) goes in stream order: bytes up to the first chain
        # recv_zc() handed out and the app has not released yet.
        self._taken = 0         # stream bytes taken out of _rx (recv, recv_zc)
        self._consumed = 0      # stream bytes the network thread was told were consumed
        self._zc: deque[list] = deque()     # [start, end, released] per chain, in order
        self._connected = False
        self._eof = False
        self._shut_wr = False
        self._spliced = False       # owned by a Splice (Stack.splice)
        self._splice_done = False
        # Send credit: the engine takes every byte while sent - acked <= snd_buf, so
        # sends need no answer from the network thread.
        self._sent = 0
        self._acked = 0
        self._snd_buf = stack.snd_buf
        # the send MSS (from each event): a segment's worth per frame, which the network
        # thread sends without a copy (0 until the first event: frames are filled, copied)
        self._mss = 0

    @property
    def connected(self) -> bool:
        """The handshake completed (it stays True after the connection ends)."""
        return self._connected

    def getpeername(self) -> tuple[str, int]:
        return self.peer

    def getsockname(self) -> tuple[str, int]:
        return self.local_ip, self.local_port

    def _readiness(self) -> int:
        if self.closed:
            return POLLNVAL
        if self._error is not None:
            # as on Linux: everything is "ready", so that the next call reports the error
            return EPOLLIN | EPOLLOUT | EPOLLERR | EPOLLHUP | (EPOLLRDHUP if self._eof else 0)
        if self._splice_done:
            return EPOLLHUP         # its splice has ended: Splice.wait() returns at once
        events = 0
        if self._rx or self._eof:
            events |= EPOLLIN
        if self._eof:
            events |= EPOLLRDHUP | (EPOLLHUP if self._shut_wr else 0)
        if self._connected and not self._shut_wr and self._credit() > 0 and \
                self not in self._stack._starved:
            events |= EPOLLOUT
        return events

    def _on_event(self, mask: int, acked: int, mss: int) -> None:
        super()._on_event(mask, acked, mss)
        # the low 32 bits of the bytes acknowledged so far: whatever moved is credit back
        self._acked += (acked - self._acked) & 0xFFFFFFFF
        self._mss = mss
        if mask & _EV["connected"]:
            self._connected = True
        if mask & _EV["peer_closed"]:
            self._eof = True
        if mask & _EV["reset"]:
            self._error = errno.ECONNRESET if self._connected else errno.ECONNREFUSED
        if mask & _EV["timed_out"]:
            self._error = errno.ETIMEDOUT
        if mask & _EV["splice_done"]:
            self._splice_done = True

    def recv(self, bufsize: int = 65536, timeout: float | None = None) -> bytes:
        """Up to bufsize bytes; b"" once the peer has closed and everything was read.
        Non-blocking: BlockingIOError when nothing is there yet."""
        self._wait(lambda: bool(self._rx) or self._eof or self._error is not None,
                   timeout, "recv")
        stack = self._stack
        with stack._lock:
            if not self._rx:
                if self._eof:
                    return b""
                self._raise_error()
            # one copy out of the frames, in Cython; emptied frames go back, and the
            # network thread learns what was consumed (the window reopens), unless a
            # chain from recv_zc() still holds bytes before these
            data = stack._net.app_recv(self._rx, bufsize, self.cid, self.gen,
                                       not self._zc)
            self._taken += len(data)
            if not self._zc:
                self._consumed = self._taken
            return data

    def recv_zc(self, max_frames: int | None = None,
                timeout: float | None = None) -> ZcChain:
        """The received bytes without a copy: a ZcChain of read-only views into the UMEM
        frames they arrived in (up to max_frames frames, oldest first); an empty chain
        once the peer has closed and everything was read. The frames stay the app's, and
        count against the receive window, until `chain.release()` (or the end of a
        `with` block); chains may be released in any order. Non-blocking:
        BlockingIOError when nothing is there yet."""
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self._wait(lambda: bool(self._rx) or self._eof or self._error is not None,
                   timeout, "recv_zc")
        stack = self._stack
        with stack._lock:
            if not self._rx:
                if self._eof:
                    return ZcChain(stack._port.pool, None, (), self._taken)
                self._raise_error()
            spans = self._rx.popleft(len(self._rx) if max_frames is None else max_frames)
            entry = [self._taken, self._taken + sum(length for _, length in spans), False]
            self._taken = entry[1]
            self._zc.append(entry)
            chain = ZcChain(stack._port.pool, lambda c: self._released(c, entry), spans,
                            entry[0])
            stack._held[chain] = None
        return chain

    def _released(self, held: FrameSet, entry: list) -> None:
        """A chain's (or a record batch's) release(): its frames go back (the app's own
        references), and the bytes before the first one still held count as consumed."""
        stack = self._stack
        with stack._lock:
            stack._net.app_free(held, stack._held.pop(held))
            entry[2] = True
            while self._zc and self._zc[0][2]:
                self._zc.popleft()
            edge = self._zc[0][0] if self._zc else self._taken
            if edge > self._consumed and not self.closed:
                stack._send_ctl(_MSG.MSG_TCP_CONSUME, length=edge - self._consumed,
                                sock=self.cid, port=self.gen)
                self._consumed = edge

    def send(self, data: bytes, timeout: float | None = None) -> int:
        """Queue as much as the send credit allows (at least one byte, waiting for room);
        returns how many bytes were queued. They are copied once, into frames of a
        segment each, which the connection's send queue takes in order and sends from
        without another copy; nothing waits for the network thread's answer. Before the
        handshake completes it waits for it. Non-blocking: BlockingIOError without credit
        (or while connecting); it may still wait briefly for free frames."""
        view = memoryview(data).cast("B")
        if not view:
            return 0
        if self._shut_wr:
            raise OSError(errno.EPIPE, "the sending side was shut down")
        self._wait(lambda: (self._connected and self._credit() > 0) or
                   self._error is not None, timeout, "send")
        stack = self._stack
        wait = self._timeout if timeout is None else timeout
        with stack._lock:
            self._raise_error()
            budget = min(len(view), self._credit())
            done = 0
            deadline = time.monotonic() + 5.0
            while done < budget:
                if not stack._granted and not stack._frames_for(self, wait, done):
                    break       # non-blocking, some bytes already taken
                n = stack._net.app_send(stack._granted, view[done:budget], self.cid, self.gen,
                                        self._mss)
                if n == 0 and stack._granted:
                    # to_net is full: the network thread is busy and drains it every loop
                    if time.monotonic() > deadline:
                        raise VtlError("the network thread stopped taking requests")
                    time.sleep(0.0001)
                done += n
            self._sent += done
        return done

    def _credit(self) -> int:
        return self._snd_buf - (self._sent - self._acked)

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view, timeout):]

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Half-close: our FIN goes out after the queued bytes (SHUT_WR or SHUT_RDWR)."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._shut_wr = True
            with self._stack._lock:
                self._stack._send_ctl(_MSG.MSG_TCP_SHUTDOWN, sock=self.cid, port=self.gen)

    def close(self) -> None:
        """Graceful close (a FIN); with unread received bytes the peer gets a RST."""
        self._let_go(_MSG.MSG_TCP_CLOSE)

    def abort(self) -> None:
        """Close at once with a RST (queued and unread bytes are dropped)."""
        self._let_go(_MSG.MSG_TCP_ABORT)

    def _let_go(self, kind: int) -> None:
        if self.closed:
            return
        stack = self._stack
        with stack._lock:
            stack._net.app_free_queue(self._rx)
            stack._send_ctl(kind, sock=self.cid, port=self.gen)
            self.closed = True
            stack._tcp.pop(self.cid, None)
            stack._touched.discard(self)
            if not self.accepted:  # an active open: its local port is ours to reuse
                stack._release_port(self.local_port)

    def _drop_received(self, free: Any) -> None:
        self._rx.drop(free)

    def __enter__(self) -> TcpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


TcpAny = TcpSocket | TcpListener


def route_via(ip: str, ifnames: Sequence[str]) -> tuple[int, str]:
    """(index in ifnames of the interface the kernel routes `ip` through, the address to
    find on that link: `ip` itself or its gateway); ENETUNREACH if it routes `ip` through
    none of them, or not at all."""
    from pyroute2 import IPRoute

    names = ", ".join(ifnames)
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=ip)
        except Exception as exc:  # pyroute2 raises NetlinkError: no route
            raise OSError(errno.ENETUNREACH, f"no route to {ip} ({exc}), and no subnet of "
                                             f"{names} holds it") from None
        route = routes[0]
        out_index = route.get_attr("RTA_OIF")
        for index, name in enumerate(ifnames):
            if out_index in ipr.link_lookup(ifname=name):
                return index, route.get_attr("RTA_GATEWAY") or ip
        links = ipr.get_links(out_index)
        out = links[0].get_attr("IFLA_IFNAME") if links else f"interface #{out_index}"
        raise OSError(errno.ENETUNREACH, f"the kernel routes {ip} through {out}, and the "
                                         f"stack runs on {names} only")


def next_hop(ip: str, ifname: str) -> str:
    """The address to find on the link for `ip`: itself, or its gateway (kernel routes)."""
    return route_via(ip, [ifname])[1]


def resolve_neighbour(ip: str, ifname: str, timeout: float = 2.0,
                      hop: str | None = None) -> bytes:
    """The MAC to send to for `ip` on the link, from the kernel's routes and neighbours
    (or for `hop`, the next hop the caller already knows).

    The kernel keeps doing ARP for the shared address; if it has no entry yet, a zero-length
    datagram from a kernel socket to the discard port makes it resolve one.
    """
    from pyroute2 import IPRoute

    if hop is None:
        hop = next_hop(ip, ifname)
    deadline = time.monotonic() + timeout
    kicked = False
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        while True:
            for entry in ipr.get_neighbours(dst=hop, ifindex=index):
                lladdr = entry.get_attr("NDA_LLADDR")
                if lladdr and entry["state"] not in (0x01, 0x20):  # INCOMPLETE, FAILED
                    return bytes.fromhex(lladdr.replace(":", ""))
            if time.monotonic() > deadline:
                raise OSError(errno.EHOSTUNREACH, f"no ARP answer from {hop} on {ifname}")
            if not kicked:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
                    s.sendto(b"", (ip, 9))
                kicked = True
            time.sleep(0.01)
