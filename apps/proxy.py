"""`vtl proxy`: a reverse TCP proxy on the stack.

Clients connect to --listen (an address of the stack's interfaces); each connection gets
its own connection to --upstream, and the two are joined both ways until both ends have
closed. Two ways to join them:

- `--mode forward`: the standard forward API. The application thread copies the bytes
  (recv on one connection, send on the other), for every connection from one loop driven
  by `Stack.wait()`. Backpressure: a direction holds at most one read (64 KB); it
  reads again only once the other side has taken all of it, so a slow reader shrinks the
  window its sender sees instead of filling memory. A half-close goes through: EOF one
  way becomes SHUT_WR the other way, and the other direction goes on.
- `--mode splice` (the default): the network thread joins the two connections
  (`Stack.splice()`) and re-sends the received frames without copying them.

`--inspect http` (splice mode): requests and responses are parsed in the network thread
from the spliced frames. --access-log then has one line per exchange (time, client,
method, target, status, bytes each way, duration) and the counters count requests,
status classes and parse errors. A malformed or smuggling-ambiguous request gets a 400
and its connection closes; the upstream never sees it. An upstream that refuses, or fails
before it answers, gives the client a 502.

With two --iface the proxy sits between two links (the middle host of a chain): clients
come in on one, the upstream is reached through the other (the stack picks the interface
whose subnet, or route, reaches it).

`--transparent` (on a router, such as the middle host of a chain): the connections to
--upstream's port that are routed through this host are intercepted (no --listen), and
each goes on to the address its client asked for, from the client's own address and
port: client and server each see the other, not the proxy. All other traffic is routed
by the kernel as before.

A `listening` JSON line comes first, once the port is open, and a `stopping` line when
SIGTERM has closed it. Counters (connections, bytes each way, upstream errors...) come as
a `counters` JSON line on SIGUSR1 and in the `stats` line at exit, with the stack's own.
--access-log writes one JSON line per connection (time, client, upstream, bytes each way,
duration, how it ended).

An upstream that refuses or resets gives the client what the upstream had sent, then a
clean close (FIN); the client's bytes not yet forwarded are dropped. SIGTERM stops
accepting and lets the connections in flight finish, for at most --stop-timeout seconds.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from select import EPOLLIN, EPOLLOUT
from typing import TYPE_CHECKING, Any, TextIO

from vtlstack.apps._common import RunUntil, emit

from vtlstack.errors import VtlError

if TYPE_CHECKING:  # the stack's import needs the compiled extensions: only when run
    from vtlstack.stack import Stack, TcpListener, TcpSocket

CHUNK = 1 << 16         # one read of a direction: the most it holds between its two sides
_TICK_S = 0.2           # longest wait between looks at signals and timers
_LOG_TICK_S = 0.02      # the same with --inspect: an inspected splice keeps its last 256
                        # exchanges for the log (about 0.1 s of 2 KB responses)
_EXPIRE_S = 0.1         # how often the idle and drain timers of every pair are looked at
DRAIN_S = 5.0           # after an upstream failure: how long the client may go on sending
                        # (dropped) before its connection is closed anyway
MODES = ("splice", "forward")
BAD_GATEWAY = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n"
               b"\r\nBad Gateway")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy", help="reverse TCP proxy on the stack (splice or forward)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", action="append", required=True, metavar="IF",
                   help="interface to attach to (in this netns); twice for a proxy between "
                        "two links")
    p.add_argument("--listen", type=address, metavar="IP:PORT",
                   help="where clients connect: an address of the interfaces (or 0.0.0.0); "
                        "not with --transparent")
    p.add_argument("--upstream", required=True, type=address, metavar="IP:PORT",
                   help="the server each client connection is joined to (with "
                        "--transparent: the port to intercept)")
    p.add_argument("--transparent", action="store_true",
                   help="intercept the connections to --upstream's port routed through "
                        "this host; client and server see each other's addresses")
    p.add_argument("--mode", choices=MODES, default="splice",
                   help="splice (in the network thread, no copy; the default) or forward "
                        "(copied through the application)")
    p.add_argument("--inspect", choices=("http",), default=None,
                   help="parse HTTP/1.1 in the network thread (splice mode): an access log "
                        "line per exchange, 400 for malformed requests, 502 for a failed "
                        "upstream")
    p.add_argument("--access-log", metavar="FILE|-", default=None,
                   help="one JSON line per connection (time, client, upstream, bytes each "
                        "way, duration), or per exchange with --inspect, to FILE, or to "
                        "stdout with -")
    p.add_argument("--max-conns", type=_positive(int), default=256,
                   help="client connections at once; beyond, new ones are closed at once "
                        "(default 256)")
    p.add_argument("--idle-timeout", type=_positive(float), default=300.0, metavar="S",
                   help="close a connection pair after S seconds without a byte moving "
                        "(default 300)")
    p.add_argument("--stop-timeout", type=_positive(float), default=30.0, metavar="S",
                   help="on SIGTERM, how long connections in flight may take to finish "
                        "(default 30)")
    p.add_argument("--frames", type=_positive(int), default=16384,
                   help="UMEM frames, 2 KB each (default 16384)")
    p.add_argument("--xdp-mode", choices=("auto", "skb", "drv"), default="auto",
                   help="XDP attach mode (veth supports skb and drv, copy mode)")
    p.add_argument("--busy-poll-us", type=int, default=None, metavar="US",
                   help="how long the idle network thread (and a waiting app thread) keeps "
                        "polling, yielding, before it sleeps (default: the stack's, 20; 0: "
                        "at once)")
    p.add_argument("--net-cpu", type=int, default=None,
                   help="pin the network thread to this CPU (default: not pinned)")
    p.set_defaults(func=run)


def address(text: str) -> tuple[str, int]:
    """IP:PORT as (ip, port), for argparse: an IPv4 address and a port 1-65535."""
    host, sep, port = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        ipaddress.IPv4Address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not IPv4:PORT (e.g. 10.0.0.1:8080)") from None
    return host, number


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
        return value
    return parse




# ---- one client connection and its upstream connection -------------------------------

class Direction:
    """Bytes one way, from `src` to `dst`, copied through the application (forward mode)."""

    def __init__(self, src: TcpSocket, dst: TcpSocket) -> None:
        self.src, self.dst = src, dst
        self.pending: memoryview | None = None   # read from src, not yet taken by dst
        self.eof = False            # src has nothing more (its FIN, or it failed)
        self.shut = False           # dst was told (SHUT_WR)
        self.discard = False        # dst failed: what src still sends is dropped
        self.src_error = 0
        self.dst_error = 0
        self.bytes = 0

    @property
    def done(self) -> bool:
        return self.eof and self.pending is None and (self.shut or self.discard)

    def want(self, interest: dict[Any, int]) -> None:
        """What this direction waits for: room on dst for what it holds, else src's bytes."""
        if self.pending is not None:
            interest[self.dst] |= EPOLLOUT
        elif not self.eof:
            interest[self.src] |= EPOLLIN

    def pump(self) -> int:
        """Move what moves without waiting; the bytes dst took. Both sides are tried even
        when only one was reported ready: a read that finds nothing is cheaper than the
        extra pass of Stack.wait() over every socket that would report what came since
        (measured: gating reads on the report, and taking a short read as the end of what
        is there, cost 30-50 % of the requests/s with 2 KB responses)."""
        moved = 0
        while True:
            if self.pending is None:
                if self.eof:
                    if not self.shut and not self.discard:
                        self.dst.shutdown(socket.SHUT_WR)
                        self.shut = True
                    return moved
                try:
                    data = self.src.recv(CHUNK, timeout=0)
                except BlockingIOError:
                    return moved
                except OSError as exc:
                    # the bytes src delivered before failing came first: its end
                    self.src_error, self.eof = exc.errno or errno.EIO, True
                    continue
                if not data:
                    self.eof = True
                elif not self.discard:
                    self.pending = memoryview(data)
                continue
            try:
                n = self.dst.send(self.pending, timeout=0)
            except BlockingIOError:
                return moved
            except OSError as exc:
                self.dst_error, self.discard, self.pending = exc.errno or errno.EIO, True, None
                continue
            moved += n
            self.bytes += n
            self.pending = self.pending[n:] if n < len(self.pending) else None


class Pair:
    """A client connection and its upstream connection, from accept to both closed."""

    inspected = False           # its exchanges are logged (InspectedPair)

    def __init__(self, client: TcpSocket, upstream: TcpSocket | None, now: float,
                 failed: int = 0) -> None:
        self.client, self.upstream = client, upstream
        self.start, self.wall = now, time.time()
        self.last = now             # when a byte last moved
        self.up: Direction | None = None
        self.down: Direction | None = None
        self.splice: Any = None
        self.end = ""               # why it ended (access log), once known
        self.upstream_error = 0     # errno of the upstream's failure, if any
        self.drain_until = 0.0
        self._spliced = -1          # bytes the splice had moved at the last look
        self.target: tuple[str, int] = ("", 0)     # where the upstream connection went
        if failed:                  # tcp_connect() itself failed
            self._upstream_failed(failed, now)

    @property
    def connected(self) -> bool:
        return self.up is not None

    def sockets(self) -> list[TcpSocket]:
        return [s for s in (self.client, self.upstream) if s is not None and not s.closed]

    def want(self) -> dict[Any, int]:
        """What this pair waits for. Every live socket is in, with no bits at least, so that
        its errors show; once joined, a failed socket whose bytes are all read is left out
        (it would report its error on every pass, and its end is known)."""
        if self.splice is not None:
            # the network thread has both: they show EPOLLHUP when the splice has ended
            return dict.fromkeys(self.sockets(), 0)
        mine = dict.fromkeys(self.sockets(), 0)
        if not self.connected:
            mine[self.upstream] = EPOLLOUT      # connected, or its error
        else:
            self.up.want(mine)
            self.down.want(mine)
            for sock, bits in list(mine.items()):
                if sock.error and not bits & EPOLLIN:
                    del mine[sock]
        return mine

    def advance(self, now: float, stack: Stack) -> bool:
        """Do what can be done now; True once the pair has ended (both sockets closed)."""
        if self.splice is not None:
            return self._splice_ended()
        if not self.connected:
            if self.client.error:
                self.end = "client_reset"
                self.close()
                return True
            if self.upstream.connected:
                # first, even if it failed since: what it sent before goes on
                self._joined(stack)
                if self.splice is not None:
                    return False
            elif self.upstream.error:
                self._upstream_failed(self.upstream.error, now)
            else:
                return False
        moved = self.up.pump() + self.down.pump()
        if moved:
            self.last = now
        if self.up.src_error or self.down.dst_error:
            # the client is gone: nothing more to deliver either way
            self.end = self.end or "client_reset"
            self.close()
            return True
        failed = self.down.src_error or self.up.dst_error
        if failed and not self.upstream_error:
            self._upstream_failed(failed, now)
        if self.up.done and self.down.done:
            self.end = self.end or "closed"
            self.close()
            return True
        return False

    def _joined(self, stack: Stack) -> None:
        self.up = Direction(self.client, self.upstream)
        self.down = Direction(self.upstream, self.client)

    def _upstream_failed(self, err: int, now: float) -> None:
        """The upstream refused or failed: what it sent goes on to the client, then a FIN;
        the client's bytes are read and dropped until it closes (at most DRAIN_S)."""
        self.upstream_error = err
        self.end = "upstream_refused" if err == errno.ECONNREFUSED and not self.connected \
            else f"upstream_{errno.errorcode.get(err, str(err)).lower()}"
        if not self.connected:
            self.up = Direction(self.client, self.upstream)
            self.down = Direction(self.upstream, self.client)
            self.down.eof = True    # it never sent anything
        self.up.discard, self.up.pending = True, None
        self.drain_until = now + DRAIN_S

    def _splice_ended(self) -> bool:
        if not self.splice.done:
            return False
        # a side that failed ended the splice; the other was closed cleanly after it
        if self.upstream.error:
            self.upstream_error = self.upstream.error
            self.end = f"upstream_{errno.errorcode.get(self.upstream.error, 'error').lower()}"
        elif self.client.error:
            self.end = "client_reset"
        else:
            self.end = self.end or "closed"
        return True

    def overdue(self, now: float, idle_timeout: float) -> bool:
        """Idle too long, or still sending to a failed upstream after DRAIN_S."""
        return self.idle_for(now) > idle_timeout or 0 < self.drain_until < now

    def idle_for(self, now: float) -> float:
        if self.splice is not None:
            counters = self.splice.counters()
            moved = counters["bytes_ab"] + counters["bytes_ba"]
            if moved != self._spliced:
                self._spliced, self.last = moved, now
        return now - self.last

    def byte_counts(self) -> tuple[int, int]:
        """(client to upstream, upstream to client)."""
        if self.splice is not None:
            counters = self.splice.counters()
            return counters["bytes_ab"], counters["bytes_ba"]
        if self.up is None:
            return 0, 0
        return self.up.bytes, self.down.bytes

    def close(self) -> None:
        """End both connections now (a RST where unread bytes remain)."""
        if self.splice is not None:
            if not self.splice.done:
                self.splice.abort()
            return
        for sock in self.sockets():
            sock.close()


class SplicedPair(Pair):
    """Joined in the network thread once the upstream has accepted. Until then (and when
    the upstream refuses) it is a forward pair; after `splice()` the app does not touch
    either socket: the splice closes them."""

    inspect: str | None = None

    def _joined(self, stack: Stack) -> None:
        try:
            self.splice = stack.splice(self.client, self.upstream, inspect=self.inspect)
        except OSError as exc:
            # one side failed between its last event and the splice: forward what is there
            self.end = f"splice_{errno.errorcode.get(exc.errno or 0, 'failed').lower()}"
            super()._joined(stack)


class InspectedPair(SplicedPair):
    """A spliced pair whose HTTP exchanges the network thread parses and logs. An
    upstream that cannot be reached gives the client a 502."""

    inspect = "http"
    inspected = True

    def _upstream_failed(self, err: int, now: float) -> None:
        super()._upstream_failed(err, now)
        if self.splice is None and self.down.pending is None and not self.down.shut:
            self.down.pending = memoryview(BAD_GATEWAY)


# ---- the service -----------------------------------------------------------------------

class Counters:
    """What `counters` and `stats` report."""

    FIELDS = ("connections", "active", "peak_active", "rejected", "upstream_errors",
              "client_errors", "idle_closed", "stop_closed", "bytes_up", "bytes_down")
    # --inspect http: summed over the splices that ended
    HTTP = ("requests", "responses", "parse_errors", "rejected", "bad_gateway",
            "log_dropped")

    def __init__(self, inspect: bool) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)
        self.http: dict[str, Any] | None = None
        if inspect:
            self.http = dict.fromkeys(self.HTTP, 0)
            self.http["status"] = {f"{k}xx": 0 for k in range(1, 6)}

    def add_http(self, into: dict[str, Any], counters: dict[str, Any]) -> None:
        for name in self.HTTP:
            into[name] += counters[name]
        for name, n in counters["status"].items():
            into["status"][name] += n

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.FIELDS}
        if self.http is not None:
            out["http"] = {**self.http, "status": dict(self.http["status"])}
        return out


class AccessLog:
    """One JSON line per connection, to a file or (with "-") among stdout's JSON lines."""

    def __init__(self, where: str | None) -> None:
        self._file: TextIO | None = None
        self._on = where is not None
        if where not in (None, "-"):
            try:
                self._file = open(where, "a", buffering=1)
            except OSError as exc:
                raise VtlError(f"cannot open the access log: {exc}") from None

    def exchange(self, pair: Pair, x: dict[str, Any]) -> None:
        """One line per HTTP exchange an inspected splice logged."""
        if not self._on:
            return
        client_ip, client_port = pair.client.getpeername()
        # the exchange's clock is the monotonic one: its wall time from the pair's start
        wall = pair.wall + (x["start_ns"] / 1e9 - pair.start)
        line = {"event": "access",
                "time": datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds"),
                "client": f"{client_ip}:{client_port}",
                "method": x["method"].decode("latin-1"),
                "target": x["target"].decode("latin-1"),
                "status": x["status"] or None,
                "bytes_up": x["request_bytes"], "bytes_down": x["response_bytes"],
                "duration_s": round((x["end_ns"] - x["start_ns"]) / 1e9, 6)
                if x["end_ns"] else None}
        self._line(line)

    def _line(self, line: dict[str, Any]) -> None:
        if self._file is None:
            emit(line)
        else:
            self._file.write(json.dumps(line, sort_keys=True) + "\n")

    def write(self, pair: Pair, upstream: tuple[str, int], now: float) -> None:
        if not self._on or pair.inspected:
            return
        up, down = pair.byte_counts()
        client_ip, client_port = pair.client.getpeername()
        line = {"event": "access",
                "time": datetime.fromtimestamp(pair.wall, UTC).isoformat(
                    timespec="milliseconds"),
                "client": f"{client_ip}:{client_port}",
                "upstream": f"{upstream[0]}:{upstream[1]}",
                "bytes_up": up, "bytes_down": down,
                "duration_s": round(now - pair.start, 4), "end": pair.end}
        self._line(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Proxy:
    """Accept, join, and watch every pair from one loop."""

    def __init__(self, stack: Stack, listener: TcpListener, args: argparse.Namespace,
                 mode: str, log: AccessLog) -> None:
        self.stack, self.listener, self.args, self.log = stack, listener, args, log
        self.pair_type: type[Pair] = Pair
        if mode == "splice":
            self.pair_type = InspectedPair if args.inspect else SplicedPair
        self.counters = Counters(bool(args.inspect))
        self.tick = _LOG_TICK_S if args.inspect else _TICK_S
        self.pairs: set[Pair] = set()
        self.owner: dict[Any, Pair] = {}
        # what Stack.wait() is asked for: kept from pass to pass, each pair's part renewed
        # when it moved
        self.interest: dict[Any, int] = {listener: EPOLLIN}
        self.wanted: dict[Pair, dict[Any, int]] = {}

    def run(self, running: RunUntil, report: Callable[[], bool]) -> None:
        stop_at = None
        expire_at = 0.0
        try:
            while True:
                now = time.monotonic()
                if stop_at is None and not running:
                    # graceful stop: no new connections, the ones in flight go on
                    self.listener.close()
                    del self.interest[self.listener]
                    stop_at = now + self.args.stop_timeout
                    emit({"event": "stopping", "active": len(self.pairs)})
                if stop_at is not None and (not self.pairs or now > stop_at):
                    break
                if report():
                    emit({"event": "counters", **self.snapshot()})
                ready = self.stack.wait(self.interest, timeout=self.tick)
                now = time.monotonic()
                if self.args.inspect:
                    for pair in self.pairs:
                        self._log_exchanges(pair)
                moved = {self.owner[s] for s, _ in ready if s is not self.listener}
                if any(s is self.listener for s, _ in ready):
                    moved |= self._accept_all(now)
                for pair in moved:
                    if pair.advance(now, self.stack):
                        self._ended(pair, now)
                    else:
                        self._renew(pair)
                if now >= expire_at:
                    self._expire(now)
                    expire_at = now + _EXPIRE_S
        finally:
            # stopped (the stop timeout) or failed: what is left is cut
            for pair in list(self.pairs):
                pair.end = pair.end or "stopped"
                self.counters.stop_closed += 1
                pair.close()
                self._ended(pair, time.monotonic())

    def _renew(self, pair: Pair) -> None:
        for sock in self.wanted.pop(pair, ()):
            del self.interest[sock]
        wanted = self.wanted[pair] = pair.want()
        self.interest.update(wanted)

    def snapshot(self) -> dict[str, Any]:
        """The counters, with those of the connections still open."""
        now = self.counters.as_dict()
        for pair in self.pairs:
            up, down = pair.byte_counts()
            now["bytes_up"] += up
            now["bytes_down"] += down
            if "http" in now and pair.splice is not None:
                self.counters.add_http(now["http"], pair.splice.counters()["http"])
        return now

    def _accept_all(self, now: float) -> set[Pair]:
        new = set()
        while True:
            try:
                client = self.listener.accept(timeout=0)
            except (BlockingIOError, TimeoutError):
                return new
            if len(self.pairs) >= self.args.max_conns:
                self.counters.rejected += 1
                client.close()
                continue
            self.counters.connections += 1
            failed, upstream = 0, None
            target, source = self.args.upstream, None
            if self.args.transparent:
                # on to where the client was going, in the client's name
                target, source = client.getsockname(), client.getpeername()
            try:
                upstream = self.stack.tcp_connect(target, blocking=False, source=source)
            except OSError as exc:  # no route, no room for another connection...
                failed = exc.errno or errno.EIO
            pair = self.pair_type(client, upstream, now, failed)
            pair.target = target
            self.pairs.add(pair)
            for sock in pair.sockets():
                self.owner[sock] = pair
            self.counters.active = len(self.pairs)
            self.counters.peak_active = max(self.counters.peak_active, len(self.pairs))
            new.add(pair)

    def _expire(self, now: float) -> None:
        for pair in list(self.pairs):
            if pair.overdue(now, self.args.idle_timeout):
                if not pair.end:
                    pair.end = "idle"
                    self.counters.idle_closed += 1
                pair.close()
                self._ended(pair, now)

    def _log_exchanges(self, pair: Pair) -> None:
        if pair.inspected and pair.splice is not None:
            for x in pair.splice.exchanges():
                self.log.exchange(pair, x)

    def _ended(self, pair: Pair, now: float) -> None:
        if pair not in self.pairs:
            return
        self._log_exchanges(pair)
        if pair.inspected and pair.splice is not None:
            self.counters.add_http(self.counters.http, pair.splice.counters()["http"])
        self.pairs.discard(pair)
        for sock in self.wanted.pop(pair, ()):
            del self.interest[sock]
        for sock in (pair.client, pair.upstream):
            self.owner.pop(sock, None)
        c = self.counters
        c.active = len(self.pairs)
        if pair.upstream_error:
            c.upstream_errors += 1
        if pair.end == "client_reset":
            c.client_errors += 1
        up, down = pair.byte_counts()
        c.bytes_up += up
        c.bytes_down += down
        self.log.write(pair, pair.target, now)


def run(args: argparse.Namespace) -> int:
    if args.transparent and args.listen is not None:
        raise VtlError("--transparent intercepts the connections to --upstream's port: "
                       "no --listen")
    if not args.transparent and args.listen is None:
        raise VtlError("--listen IP:PORT is needed (or --transparent)")
    from vtlstack.stack import Stack

    mode = args.mode
    if args.inspect and mode != "splice":
        raise VtlError("--inspect parses in the network thread: it needs --mode splice")
    if len(set(args.iface)) != len(args.iface):
        raise VtlError("the same --iface is named twice")
    log = AccessLog(args.access_log)
    # Each pair holds two connections of the stack, and those it closed first linger in
    # TIME-WAIT for a while: room for both, and for the listener.
    stack = Stack(args.iface if len(args.iface) > 1 else args.iface[0], mode=args.xdp_mode,
                  max_conns=4 * args.max_conns + 16, frame_count=args.frames,
                  net_cpu=args.net_cpu, busy_poll_us=args.busy_poll_us,
                  tcp_options={"nodelay": True})
    usr1 = [False]
    previous = signal.signal(signal.SIGUSR1, lambda *_: usr1.__setitem__(0, True))

    def report() -> bool:
        asked, usr1[0] = usr1[0], False
        return asked

    try:
        with stack, RunUntil(None) as running:
            ip, port = args.listen or ("0.0.0.0", args.upstream[1])
            ours = stack.ips
            if ip != "0.0.0.0" and ip not in ours:
                raise VtlError(f"--listen {ip}: the stack listens on its interfaces' "
                               f"addresses ({', '.join(ours)}) or 0.0.0.0")
            listener = stack.tcp_listen(port, transparent=args.transparent)
            proxy = Proxy(stack, listener, args, mode, log)
            emit({"event": "listening", "ip": ip, "port": port, "ifaces": args.iface,
                  "upstream": f"{args.upstream[0]}:{args.upstream[1]}", "mode": mode,
                  "inspect": args.inspect, "transparent": args.transparent})
            proxy.run(running, report)
            listener.close()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        log.close()
    emit({"event": "stats", **proxy.counters.as_dict(), **stack.final_stats})
    return 0
