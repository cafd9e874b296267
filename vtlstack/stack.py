"""The application's side of the stack: `Stack` owns the port and the network thread.

The application thread never touches protocol state: it asks the network thread for
things (bind a port, send a datagram, return a frame) through the `to_net` channel and
reads what the network thread hands it from `to_app`. Calls on one Stack may come from
several application threads; a lock keeps the channels single-producer/single-consumer.
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
from typing import Any

from vtlstack import _fastpath
from vtlstack._port import XskPort
from vtlstack.errors import InterfaceError, VtlError, require_root
from vtlstack.xdp import Steering

# Message kinds, defined once beside the network thread that handles them (_fastpath.pxd).
_MSG = _fastpath.MsgKind
_GRANT_BATCH = 32
_WAIT_STEP = 0.05


def _iface_addresses(ifname: str) -> tuple[bytes, str, int]:
    """MAC, first IPv4 address and MTU of an interface in the current namespace (pyroute2)."""
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
        return mac, addrs[0].get_attr("IFA_ADDRESS"), link.get_attr("IFLA_MTU")


def _ip_to_net(ip: str) -> int:
    """An IPv4 address as the integer whose memory layout is network byte order."""
    return struct.unpack("=I", socket.inet_aton(ip))[0]


def _ip_from_net(value: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", value))


class Stack:
    """A userspace transport stack on one interface (AF_XDP port + network thread).

    Use as a context manager; `close()` detaches everything, also after an error.
    `busy_poll_us`: how long the idle network thread keeps polling before it sleeps in
    poll(). 0 (the default) sleeps at once: on a machine with few cores a spinning thread
    takes CPU from the peers it waits for (measured on 2 cores: p50 RTT 12 us at 0, 21 us
    at 100). Raise it when the network thread has a core of its own.
    """

    def __init__(self, iface: str, *, mode: str = "auto", queue: int = 0,
                 frame_count: int = 4096, frame_size: int = 2048, batch: int = 64,
                 busy_poll_us: int = 0) -> None:
        require_root("vtlstack.Stack")
        self.iface = iface
        self.mac, self.ip, self.mtu = _iface_addresses(iface)
        self._lock = threading.Lock()
        self._sockets: dict[int, UdpSocket] = {}
        self._next_sock = 0
        self._granted: deque[int] = deque()
        self._neigh: set[str] = set()
        self._steering: Steering | None = None
        self._port: XskPort | None = None
        self._net: _fastpath.NetThread | None = None
        self.final_stats: dict[str, Any] = {}
        try:
            self._steering = Steering(iface, mode=mode)
            self._port = XskPort(iface, queue_id=queue, frame_count=frame_count,
                                 frame_size=frame_size, batch=batch, mode=mode,
                                 xsks_map_fd=self._steering.xsks_map_fd)
            self._net = _fastpath.NetThread(self._port, self.mac, _ip_to_net(self.ip),
                                            batch=batch, busy_poll_us=busy_poll_us)
            self._net.start()
        except BaseException:
            self.close()
            raise

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the network thread, take back every frame, release the port, detach XDP.

        Raises VtlError if a frame is unaccounted for (a leak is a bug, never silent);
        the last counters stay readable as `final_stats`.
        """
        if self._net is not None:
            cpu = self.net_thread_cpu_seconds()
            self._net.stop()
            self.final_stats = {"net": self._net.stats(), "net_cpu_seconds": cpu}
            if self._steering is not None:
                self.final_stats["steering"] = self._steering.counters()
            self._net = None
        if self._port is not None:
            # The network thread is gone: the app side may hand its frames back directly.
            pool = self._port.pool
            for addr in self._granted:
                pool.free(addr)
            self._granted.clear()
            for sock in self._sockets.values():
                for addr, *_ in sock._queue:
                    pool.free(addr)
                sock._queue.clear()
            try:
                self._port.check_frames(expect_idle=True)
            finally:
                self.final_stats["port"] = self._port.stats()
                self._port.close()
                self._port = None
        if self._steering is not None:
            self._steering.close()
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

    def _own(self, port: int) -> None:
        assert self._steering is not None
        self._steering.own(socket.IPPROTO_UDP, port)

    # ---- statistics ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters of the network thread, the port's frame pool and the steering program
        (after close(): the last ones, as `final_stats`)."""
        if self._net is None:
            return self.final_stats
        assert self._port is not None and self._steering is not None
        return {"net": self._net.stats(), "port": self._port.stats(),
                "steering": self._steering.counters(),
                "net_cpu_seconds": self.net_thread_cpu_seconds()}

    def net_thread_cpu_seconds(self) -> float:
        """CPU time (user + system) the network thread has used so far."""
        assert self._net is not None
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

    def _pump(self, timeout: float) -> bool:
        """Move what the network thread handed over to the sockets; wait up to timeout."""
        assert self._net is not None
        ch = self._net.to_app
        msg = ch.pop()
        if msg is None:
            if timeout <= 0 or not ch.wait_ready(timeout):
                return False
            msg = ch.pop()
        while msg is not None:
            kind, addr, length, ip, port, sock, lport, _ = msg
            if kind == _MSG.MSG_RECV:
                target = self._sockets.get(sock)
                if target is None:
                    self._send_ctl(_MSG.MSG_FREE, addr=addr)
                else:
                    target._queue.append((addr, length, ip, port))
            elif kind == _MSG.MSG_GRANT:
                self._granted.append(addr)
            msg = ch.pop()
        return True

    def _take_frame(self, timeout: float) -> int:
        if len(self._granted) < _GRANT_BATCH // 4:
            self._send_ctl(_MSG.MSG_WANT, length=_GRANT_BATCH)
        deadline = time.monotonic() + timeout
        while not self._granted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(errno.ENOBUFS, "no free frame for sending (all held)")
            self._pump(min(left, _WAIT_STEP))
        return self._granted.popleft()

    def _ensure_neighbour(self, ip: str) -> None:
        if ip in self._neigh:
            return
        mac = resolve_neighbour(ip, self.iface)
        self._send_ctl(_MSG.MSG_NEIGH, ip=_ip_to_net(ip), arg=int.from_bytes(mac, "little"))
        self._neigh.add(ip)


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
            stack._ensure_neighbour(ip)
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


def next_hop(ip: str, ifname: str) -> str:
    """The address to find on the link for `ip`: itself, or its gateway (kernel routes)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=ip)
        except Exception as exc:  # pyroute2 raises NetlinkError: no route
            raise OSError(errno.ENETUNREACH, f"no route to {ip}: {exc}") from None
        route = routes[0]
        out_index = route.get_attr("RTA_OIF")
        if out_index not in ipr.link_lookup(ifname=ifname):
            raise OSError(errno.ENETUNREACH, f"the kernel routes {ip} through another "
                                             f"interface than {ifname}")
        return route.get_attr("RTA_GATEWAY") or ip


def resolve_neighbour(ip: str, ifname: str, timeout: float = 2.0) -> bytes:
    """The MAC to send to for `ip` on the link, from the kernel's routes and neighbours.

    The kernel keeps doing ARP for the shared address; if it has no entry yet, a zero-length
    datagram from a kernel socket to the discard port makes it resolve one.
    """
    from pyroute2 import IPRoute

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
