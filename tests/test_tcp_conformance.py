"""TCP conformance over the wire: scapy in the client namespace speaks raw TCP to a stack
server in the server namespace, one behaviour of RFC 9293 / 5961 / 7323 / 2018 / 6298 per
test, then hostile input that must be dropped, counted and survived.

The scapy side runs in this process: its packet socket is opened inside the client
namespace (setns on this thread, then back), so a test reads the stack's segments directly
and no interpreter starts per test. It speaks from an address of the client's subnet that
no host owns. The stack answers to the MAC the segments came from; the client's kernel has
no such address and does not forward, so it drops those answers without resetting the
connections it does not know (no firewall rule is needed, and none is left behind).

Each test starts its own stack server (SERVER below) that follows a list of steps and
prints JSON lines, ending with its final stats: every frame back in the pool.
"""

import contextlib
import ctypes
import hashlib
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP

from vtlstack.testbed import Testbed

pytestmark = pytest.mark.root

PORT = 5201
CLOSED_PORT = 64999          # in the stack's ephemeral range, no connection on it
# Fast timers so retransmission, persist and TIME-WAIT show up within a second.
BASE_TCP = {"rto_init": 0.25, "rto_min": 0.2, "msl": 0.5}
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
M = 0xFFFFFFFF                # sequence numbers are modulo 2**32

SERVER = r"""
import errno, hashlib, json, sys
from vtlstack.stack import Stack

def say(event, **kw):
    print(json.dumps({"event": event, **kw}), flush=True)

def err(exc):
    return errno.errorcode.get(exc.errno, "timeout" if isinstance(exc, TimeoutError) else str(exc))

iface, port, cfg = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
pattern = bytes(range(251))
with Stack(iface, tcp_options=cfg["tcp"]) as stack:
    listener = stack.tcp_listen(port, backlog=cfg["backlog"])
    say("ready")
    conn = None
    for step, *arg in cfg["steps"]:
        try:
            if step == "wait":
                sys.stdin.readline()
            elif step == "accept":
                conn = listener.accept(timeout=30)
                say("accepted")
            elif step == "send":
                conn.sendall((pattern * (arg[0] // 251 + 1))[:arg[0]], timeout=30)
                say("sent", bytes=arg[0])
            elif step == "recv":
                h, n, error = hashlib.sha256(), 0, None
                try:
                    while data := conn.recv(1 << 16, timeout=60):
                        h.update(data)
                        n += len(data)
                except OSError as exc:
                    error = err(exc)
                say("received", bytes=n, sha256=h.hexdigest(), error=error)
            elif step == "echo":
                while data := conn.recv(1 << 16, timeout=30):
                    conn.sendall(data, timeout=30)
                say("echoed")
            elif step == "close":
                conn.close()
                say("closed")
            elif step == "close_listener":
                listener.close()
        except OSError as exc:
            say("error", step=step, errno=err(exc))
say("stats", **stack.final_stats)
"""

CLIENT = r"""
import hashlib, json, os, socket, sys
ip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = os.urandom(size)
s = socket.create_connection((ip, port), timeout=60)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b"", "the server sends nothing"
s.close()
print(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "bytes": size}))
"""


def pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def opts(t: TCP) -> dict:
    return {k: v for k, v in t.options if k not in ("NOP", "EOL")}


def payload(t: TCP) -> bytes:
    return bytes(t.payload)


def csum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_packet(src: str, dst: str, tcp: bytes, *, tot_len: int | None = None,
              bad_ip_csum: bool = False, ip_opts: bytes = b"") -> bytes:
    """IPv4 around TCP bytes taken as they are (the caller owns their checksum)."""
    hlen = 20 + len(ip_opts)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | hlen // 4, 0, tot_len or hlen + len(tcp),
                                1, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
                    + ip_opts)
    hdr[10:12] = struct.pack("!H", csum(bytes(hdr)) ^ (0x5555 if bad_ip_csum else 0))
    return bytes(hdr) + tcp


def tcp_bytes(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
              *, raw_opts: bytes = b"", data: bytes = b"", dataofs: int | None = None,
              win: int = 65535, bad_csum: bool = False) -> bytes:
    """A TCP segment with options and data offset exactly as given (scapy would fix them)."""
    off = dataofs if dataofs is not None else 5 + len(raw_opts) // 4
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq & M,
                                ack & M, off << 4, flags, win, 0, 0)
                    + raw_opts + data)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(seg))
    seg[16:18] = struct.pack("!H", csum(pseudo + bytes(seg)) ^ (0x0101 if bad_csum else 0))
    return bytes(seg)


@contextlib.contextmanager
def netns(name: str):
    """Run this thread inside network namespace `name` for the block (sockets made there
    stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


class Wire:
    """Raw frames on the client's interface, from an address of its subnet nobody owns."""

    def __init__(self, tb: Testbed) -> None:
        client, server = tb.host("client").iface, tb.host("server").iface
        self.server_ip = server.ip
        self.subnet = client.ip.rsplit(".", 1)[0]
        self.ip = f"{self.subnet}.200"
        self._eth = (bytes.fromhex(server.mac.replace(":", "")) +
                     bytes.fromhex(client.mac.replace(":", "")) + b"\x08\x00")
        self._server_ip = socket.inet_aton(server.ip)
        with netns(tb.host("client").netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
            self.sock.bind((client.name, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)   # SO_RCVBUFFORCE
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def send(self, ip: bytes) -> None:
        self.sock.send(self._eth + ip)

    def drain(self) -> None:
        """Forget what earlier tests left in the socket."""
        with contextlib.suppress(BlockingIOError):
            for _ in range(1 << 16):
                self.sock.recv(65536)

    def recv(self, deadline: float) -> bytes | None:
        """The next IPv4+TCP packet from the server before `deadline`, or None."""
        while True:
            try:
                frame, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    return None
                continue
            if addr[2] == PACKET_OUTGOING or frame[12:14] != b"\x08\x00" or \
                    frame[23] != 6 or frame[26:30] != self._server_ip:
                continue
            return frame[14:14 + struct.unpack("!H", frame[16:18])[0]]


class Peer:
    """One TCP endpoint spoken by hand: our next sequence number, the one we expect from
    the stack, timestamps once negotiated."""

    def __init__(self, wire: Wire, dport: int = PORT, sport: int | None = None) -> None:
        self.wire = wire
        self.ip = wire.ip
        self.dport = dport
        self.sport = sport or random.randrange(20000, 40000)
        self._seq = random.getrandbits(32)
        self._rcv = 0                # RCV.NXT: the stack's next sequence number
        self.ts = False
        self.tsval = 1000
        self.ts_recent = 0
        self.fin_in = False          # the stack's FIN has been received
        self.received: list[tuple[float, TCP]] = []

    # Sequence numbers live modulo 2**32 (RFC 9293 3.4): stored masked, compared as is.
    seq = property(lambda self: self._seq,
                   lambda self, v: setattr(self, "_seq", v & M))
    rcv = property(lambda self: self._rcv,
                   lambda self, v: setattr(self, "_rcv", v & M))

    def segment(self, flags: str = "A", seq: int | None = None, ack: int | None = None,
                data: bytes = b"", win: int = 65535, options: list | None = None,
                **fields) -> bytes:
        if options is None:
            options = []
            if self.ts and "R" not in flags:
                self.tsval += 1
                options = [("Timestamp", (self.tsval, self.ts_recent))]
        seq = self.seq if seq is None else seq
        ack = (self.rcv if "A" in flags else 0) if ack is None else ack
        return bytes(IP(src=self.ip, dst=self.wire.server_ip) /
                     TCP(sport=self.sport, dport=self.dport, seq=seq & M,
                         ack=ack & M, flags=flags, window=win, options=options,
                         **fields) / data)

    def send(self, flags: str = "A", **kw) -> None:
        self.wire.send(self.segment(flags, **kw))

    def raw(self, flags: int, **kw) -> bytes:
        """tcp_bytes() of this connection at the current sequence numbers."""
        kw.setdefault("seq", self.seq)
        kw.setdefault("ack", self.rcv)
        seq, ack = kw.pop("seq"), kw.pop("ack")
        return tcp_bytes(self.ip, self.wire.server_ip, self.sport, self.dport, seq, ack,
                         flags, **kw)

    def next(self, timeout: float = 3.0, what: str = "a segment") -> TCP:
        """The stack's next segment on this connection."""
        deadline = time.monotonic() + timeout
        while (ip := self.wire.recv(deadline)) is not None:
            t = IP(ip)[TCP]
            if t.dport != self.sport or t.sport != self.dport or IP(ip).dst != self.ip:
                continue
            self.received.append((time.monotonic(), t))
            if "Timestamp" in opts(t):
                self.ts_recent = opts(t)["Timestamp"][0]
            return t
        raise AssertionError(f"no answer from the stack within {timeout} s: wanted {what}")

    def silent(self, timeout: float) -> list[TCP]:
        """What the stack sends on this connection within `timeout` (a bounded listen)."""
        out = []
        with contextlib.suppress(AssertionError):
            while True:
                out.append(self.next(timeout))
        return out

    def connect(self, options=(("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1000, 0)),
                               ("WScale", 7)), win: int = 65535, ack_win: int | None = None,
                syn_win: int | None = None) -> TCP:
        """Three-way handshake; returns the SYN,ACK."""
        self.send("S", options=list(options), win=syn_win or win)
        sa = self.next(what="SYN,ACK")
        assert sa.flags == "SA" and sa.ack == (self.seq + 1), sa.summary()
        self.seq += 1
        self.rcv = sa.seq + 1
        self.ts = "Timestamp" in dict(options) and "Timestamp" in opts(sa)
        if self.ts:
            self.tsval = dict(options)["Timestamp"][0]     # ours go on from the SYN's
        self.send("A", win=ack_win if ack_win is not None else win)
        return sa

    def data(self, data: bytes, flags: str = "PA", advance: bool = True, **kw) -> None:
        self.send(flags, data=data, **kw)
        if advance:
            self.seq += len(data)

    def read(self, n: int | None = None, win: int = 65535) -> tuple[bytes, list[TCP]]:
        """Take the stack's stream in order, acknowledging each segment, until its FIN (or
        n bytes); out-of-order and repeated bytes are acknowledged, not taken."""
        got, segs = bytearray(), []
        while n is None or len(got) < n:
            t = self.next(what="stream data")
            segs.append(t)
            body = payload(t)
            if body and t.seq == self.rcv:
                got += body
                self.rcv += len(body)
            fin = "F" in t.flags and (t.seq + len(body)) & M == self.rcv
            if fin:
                self.rcv += 1
                self.fin_in = True
            if body or fin:
                self.send("A", win=win)
            if fin:
                break
        return bytes(got), segs

    def close(self) -> None:
        """Our FIN; then wait for the ACK of it and for the stack's FIN (unless it came
        already), and acknowledge that."""
        self.send("FA")
        self.seq += 1
        acked, fin = False, self.fin_in
        while not (acked and fin):
            t = self.next(what="the ACK of our FIN and the stack's FIN")
            acked = acked or t.ack == self.seq
            if "F" in t.flags and not fin:
                fin = self.fin_in = True
                self.rcv = t.seq + len(payload(t)) + 1
                self.send("A")

    def reset(self) -> None:
        """An exact RST, so the connection leaves no state behind in the stack."""
        self.send("R", ack=0)


class Server:
    """The stack server process in the server namespace, read line by line."""

    def __init__(self, tb: Testbed, steps: list, tcp: dict | None, backlog: int) -> None:
        # The last step waits for finish(): the stack stays up while the test still talks.
        cfg = {"tcp": {**BASE_TCP, **(tcp or {})}, "steps": [*steps, ["wait"]],
               "backlog": backlog}
        self.tb = tb
        self.proc = tb.popen("server", [sys.executable, "-P", "-c", SERVER,
                                        tb.host("server").iface.name, str(PORT),
                                        json.dumps(cfg)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self._buf = b""
        self.events: list[dict] = []
        self.expect("ready", timeout=20)

    def _line(self, deadline: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        event = json.loads(line)
        self.events.append(event)
        return event

    def expect(self, event: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while (got := self._line(deadline)) is not None:
            if got["event"] == event:
                return got
            assert got["event"] != "error", got
        raise AssertionError(f"the server did not say {event!r}; it said {self.events}\n"
                             f"{self.stop()}")

    def go(self) -> None:
        with contextlib.suppress(BrokenPipeError):     # dead already: expect() says why
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> dict:
        """Let the server close its stack; its final stats, every frame back in the pool."""
        self.go()
        stats = self.expect("stats", timeout)
        _, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err.decode()
        assert stats["port"]["held"] == 0 and stats["port"]["in_tx"] == 0, stats["port"]
        assert stats["tcp"]["bad_transitions"] == 0
        return stats

    def stop(self) -> str:
        """After a failure: SIGINT lets the stack close (detaching XDP); SIGKILL only if it
        does not, then the XDP program goes by hand so the next server can attach. Returns
        what the server wrote on stderr."""
        if self.proc.poll() is not None:
            return self.proc.communicate()[1].decode() if self.proc.stderr else ""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.communicate(timeout=10)[1].decode()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err = self.proc.communicate()[1].decode()
            tb = self.tb
            tb.exec("server", ["ip", "link", "set", "dev", tb.host("server").iface.name,
                               "xdp", "off"])
            return err


class Bed:
    def __init__(self, tb: Testbed, wire: Wire) -> None:
        self.tb = tb
        self.wire = wire

    @contextlib.contextmanager
    def server(self, steps: list, tcp: dict | None = None, backlog: int = 16):
        self.wire.drain()
        srv = Server(self.tb, steps, tcp, backlog)
        try:
            yield srv
        finally:
            srv.stop()

    def peer(self, **kw) -> Peer:
        return Peer(self.wire, **kw)


@pytest.fixture(scope="module")
def bed():
    # Our own prefix: a `vtl testbed down --all` (prefix "vtl") elsewhere leaves it alone.
    tb = Testbed.up(topology="pair", prefix="vtlconf")
    try:
        wire = Wire(tb)
        try:
            yield Bed(tb, wire)
        finally:
            wire.close()
    finally:
        tb.down()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the handshake ------------------------------------------------------------------------


@pytest.mark.parametrize("offer", ["all", "mss-only", "nothing"])
def test_syn_ack_answers_the_options_offered(bed, offer):
    """RFC 9293 3.7.1: our MSS in the SYN,ACK; RFC 7323 1.3 / 3.2 and RFC 2018 2: window
    scale, timestamps (TSecr = the SYN's TSval) and SACK-permitted only when the SYN
    offered them; RFC 7323 2.2: the SYN,ACK window is not scaled; timestamps then ride on
    every segment, or on none."""
    offered = {"all": [("MSS", 1400), ("SAckOK", b""), ("Timestamp", (4242, 0)),
                       ("WScale", 7)],
               "mss-only": [("MSS", 1400)], "nothing": []}[offer]
    with bed.server([["accept"], ["recv"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        sa = p.connect(options=offered)
        o = opts(sa)
        assert o["MSS"] == 1460                     # MTU 1500 - 40
        assert sa.window == 65535                   # min(rcv_buf, 65535), unscaled
        if offer == "all":
            assert set(o) == {"MSS", "SAckOK", "Timestamp", "WScale"}
            assert o["Timestamp"][1] == 4242 and o["WScale"] == 3   # 256 KiB >> 3 fits
        else:
            assert set(o) == {"MSS"}
        srv.expect("accepted")
        p.data(b"hello")
        p.close()
        assert srv.expect("received")["bytes"] == 5
        after = [t for _, t in p.received[1:]]
        assert after and all(("Timestamp" in opts(t)) == (offer == "all") for t in after)
        stats = srv.finish()
    assert stats["tcp_left"] == {}


def test_listener_answers_only_a_clean_syn(bed):
    """RFC 9293 3.10.7.2 (LISTEN): a RST is ignored; a segment with neither SYN nor ACK is
    dropped; a SYN with malformed options is dropped and counted; an ACK, also on a
    SYN,ACK, gets <SEQ=SEG.ACK><CTL=RST>. Then a clean SYN opens the connection; the data
    it carried is not acknowledged (so the peer sends it again) and arrives once. The same
    SYN again (its SYN,ACK was lost) gets the same SYN,ACK at once, as from Linux."""
    with bed.server([["accept"], ["recv"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.send("R", ack=0)
        p.send("FP", data=b"stray", ack=0)
        bed.wire.send(ip_packet(p.ip, bed.wire.server_ip,
                                p.raw(0x02, ack=0, raw_opts=b"\x02\x00\x05\xb4")))
        p.send("A", ack=12345)
        rst = p.next(what="RST for an ACK")              # nothing came before it
        assert rst.flags == "R" and rst.seq == 12345
        p.send("SA", ack=777, options=[("MSS", 1460)])
        rst = p.next(what="RST for a SYN,ACK")
        assert rst.flags == "R" and rst.seq == 777
        p.send("S", data=b"early", options=[("MSS", 1460)])
        sa = p.next(what="SYN,ACK")
        assert sa.flags == "SA" and sa.ack == (p.seq + 1) & M
        p.send("S", data=b"early", options=[("MSS", 1460)])
        again = p.next(timeout=0.2, what="the SYN,ACK again, before any RTO")
        assert (again.flags, again.seq, again.ack) == (sa.flags, sa.seq, sa.ack)
        p.seq += 1
        p.rcv = sa.seq + 1
        p.send("A")
        srv.expect("accepted")
        p.data(b"early")
        p.close()
        got = srv.expect("received")
        stats = srv.finish()
    assert got["bytes"] == 5 and got["sha256"] == sha(b"early")
    tcp = stats["tcp"]
    assert tcp["bad_options"] == 1 and tcp["no_conn_rst"] == 2 and tcp["rst_in"] == 0
    assert stats["tcp_left"] == {}


def test_our_segments_never_exceed_the_peers_mss(bed):
    """RFC 9293 3.7.1 / RFC 6691: data + TCP options beyond 20 bytes <= the MSS the peer
    announced (536 here, timestamps on), and full segments are that big."""
    size = 20_000
    with bed.server([["accept"], ["send", size], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect(options=[("MSS", 536), ("Timestamp", (1, 0))])
        got, segs = p.read()
        p.send("FA")
        p.seq += 1
        assert p.next(what="the ACK of our FIN").ack == p.seq
        stats = srv.finish()
    assert got == pattern(size)
    sizes = [len(bytes(t)) - 20 for t in segs if payload(t)]
    assert max(sizes) == 536, sizes                    # options count against the MSS
    assert max(len(payload(t)) for t in segs) == 536 - 12
    assert stats["tcp_left"] == {"TIME-WAIT": 1}       # the stack closed first


def test_syn_ack_is_retransmitted_with_backoff_until_the_final_ack(bed):
    """RFC 9293 3.10.7.2 / RFC 6298 5.4-5.5: without the final ACK the SYN,ACK goes out
    again (same ISS and options) after RTO, then after 2 * RTO; the late ACK still opens
    the connection."""
    with bed.server([["accept"], ["echo"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.send("S", options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 2)])
        t0 = time.monotonic()
        synacks = [p.next(what="SYN,ACK")]
        synacks += [p.next(timeout=5, what="retransmitted SYN,ACK") for _ in range(2)]
        times = [t for t, _ in p.received]
        assert all(s.flags == "SA" for s in synacks)
        assert len({(s.seq, s.ack, tuple(s.options)) for s in synacks}) == 1
        g1, g2 = times[1] - times[0], times[2] - times[1]
        assert times[0] - t0 < 0.2 and g1 >= 0.2 and g2 >= 0.4, (g1, g2)
        p.seq += 1
        p.rcv = synacks[0].seq + 1
        p.send("A")
        srv.expect("accepted")
        p.data(b"late but fine")
        got, _ = p.read(len(b"late but fine"))
        assert got == b"late but fine"
        p.close()
        srv.expect("echoed")
        stats = srv.finish()
    assert stats["tcp"]["retransmits"] >= 2 and stats["tcp"]["rto_fired"] >= 2


# -- RFC 5961: blind resets and SYNs --------------------------------------------------------


def test_rst_out_of_window_ignored_in_window_challenged_exact_resets(bed):
    """RFC 5961 3.2: a RST outside the window is dropped silently; inside but not at
    RCV.NXT it gets a challenge ACK <SEQ=SND.NXT><ACK=RCV.NXT>; exactly at RCV.NXT it
    resets the connection (the application sees ECONNRESET) and the TCB is gone."""
    with bed.server([["accept"], ["recv"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect()
        srv.expect("accepted")
        p.data(b"x" * 10)
        assert p.next(what="ACK of the data").ack == p.seq
        p.send("R", seq=p.seq + (1 << 30), ack=0)       # far outside the window
        p.send("R", seq=p.seq + 1000, ack=0)            # inside, not exact
        ch = p.next(what="challenge ACK")               # and nothing came before it
        assert ch.flags == "A" and ch.ack == p.seq and ch.seq == p.rcv
        p.reset()
        got = srv.expect("received")
        assert got["error"] == "ECONNRESET" and got["bytes"] == 10
        # The connection is gone: an ACK now is one for the listener: <SEQ=SEG.ACK><RST>
        p.data(b"anyone?")
        rst = p.next(what="RST from a closed connection")
        assert rst.flags == "R" and rst.seq == p.rcv
        stats = srv.finish()
    tcp = stats["tcp"]
    assert tcp["rst_in"] == 1 and tcp["challenge_acks"] == 1
    assert stats["tcp_left"] == {}


def test_syn_in_established_gets_a_challenge_ack_and_changes_nothing(bed):
    """RFC 5961 4.2: a SYN in a synchronized state, in the window or not, gets a challenge
    ACK and the connection goes on."""
    with bed.server([["accept"], ["echo"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect()
        srv.expect("accepted")
        for seq in (p.seq, p.seq + 5000, p.seq + (1 << 31)):
            p.send("S", seq=seq, ack=0, options=[("MSS", 1460)])
            ch = p.next(what="challenge ACK")
            assert ch.flags == "A" and ch.ack == p.seq and ch.seq == p.rcv
        p.data(b"still here")
        got, _ = p.read(10)
        assert got == b"still here"
        p.close()
        srv.expect("echoed")
        stats = srv.finish()
    assert stats["tcp"]["challenge_acks"] == 3 and stats["tcp"]["rst_in"] == 0


def test_challenge_acks_are_rate_limited(bed):
    """RFC 5961 7: challenge ACKs are throttled (1000 a second here, the default), so a
    blind attacker's burst of RSTs neither resets the connection nor makes the stack an
    ACK reflector."""
    n = 1500
    with bed.server([["accept"], ["echo"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect()
        srv.expect("accepted")
        rst = p.segment("R", seq=p.seq + 1000, ack=0)    # in the window, not exact
        for _ in range(n):
            bed.wire.send(rst)
        p.data(b"alive?")
        got, _ = p.read(6)
        assert got == b"alive?"
        p.close()
        srv.expect("echoed")
        stats = srv.finish()
    tcp = stats["tcp"]
    assert tcp["challenge_acks"] + tcp["challenge_acks_limited"] == n
    assert tcp["challenge_acks"] == 1000 and tcp["rst_in"] == 0


# -- retransmission and closing -------------------------------------------------------------


def test_fin_is_retransmitted_until_acked(bed):
    """RFC 9293 3.10.4 / RFC 6298 5: our FIN occupies sequence space and is retransmitted
    (same sequence number) when it is not acknowledged within RTO."""
    with bed.server([["accept"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect()
        fin = p.next(what="FIN")
        fin2 = p.next(timeout=3, what="retransmitted FIN")
        (t1, _), (t2, _) = p.received[-2:]
        assert "F" in fin.flags and "F" in fin2.flags and fin.seq == fin2.seq == p.rcv
        assert t2 - t1 >= 0.18, t2 - t1                 # RTO >= rto_min (0.2 s)
        p.rcv += 1
        p.send("A")
        p.send("FA")
        p.seq += 1
        assert p.next(what="ACK of our FIN").ack == p.seq
        stats = srv.finish()
    assert stats["tcp"]["retransmits"] >= 1 and stats["tcp"]["rto_fired"] >= 1
    assert stats["tcp_left"] == {"TIME-WAIT": 1}


def test_time_wait_reacks_a_retransmitted_fin_ignores_rst_and_lasts_2msl(bed):
    """RFC 9293 3.10.7.4: in TIME-WAIT a retransmitted FIN is acknowledged again and the
    2 MSL timer restarts; RFC 1337: a RST does not end TIME-WAIT; after 2 MSL the
    connection is gone (MSL 0.5 s here)."""
    with bed.server([["accept"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect()
        fin = p.next(what="FIN")
        assert "F" in fin.flags
        p.rcv += 1
        p.send("A")
        p.send("FA")
        assert p.next(what="ACK of our FIN").ack == (p.seq + 1) & M
        for _ in range(2):                               # the ACK was "lost": FIN again
            p.send("FA")
            again = p.next(what="the FIN acknowledged again")
            assert again.flags == "A" and again.ack == (p.seq + 1) & M
            p.send("R", seq=p.seq + 1, ack=0)            # RFC 1337: ignored
        last_fin = p.received[-1][0]
        p.seq += 1
        # Probe with an old duplicate (answered with an ACK in TIME-WAIT, never restarts the
        # timer) until the answer is a RST: then the TCB is gone.
        for _ in range(100):
            p.send("A", seq=p.seq - 100)
            t = p.next(what="ACK or RST")
            if "R" in t.flags:
                break
            assert t.flags == "A"
            assert p.silent(0.05) == []                 # TIME-WAIT sends nothing unasked
        gone = p.received[-1][0] - last_fin
        assert "R" in t.flags and 0.9 <= gone < 3.0, gone
        stats = srv.finish()
    assert stats["tcp"]["rst_in"] == 0


def test_new_syn_reopens_a_connection_in_time_wait(bed):
    """RFC 9293 3.10.7.4 / RFC 6191: in TIME-WAIT a SYN not beyond the old connection's
    sequence space gets an ACK (RFC 5961 4.2), not a new connection; a SYN beyond it
    starts a new incarnation of the same 4-tuple."""
    with bed.server([["accept"], ["close"], ["accept"], ["recv"], ["close"],
                     ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect(options=[("MSS", 1460)])
        assert "F" in p.next(what="FIN").flags
        p.rcv += 1
        p.send("A")
        p.send("FA")
        p.seq += 1
        assert p.next(what="ACK of our FIN").ack == p.seq      # the stack is in TIME-WAIT
        p.send("S", seq=p.seq - 10, ack=0, options=[("MSS", 1460)])
        old = p.next(what="ACK for an old SYN")
        assert old.flags == "A" and old.ack == p.seq
        again = bed.peer(sport=p.sport)
        again.seq = p.seq + 100_000
        again.connect(options=[("MSS", 1460)])
        srv.expect("accepted")
        srv.expect("accepted")
        again.data(b"second life")
        again.close()
        got = srv.expect("received")
        stats = srv.finish()
    assert got["bytes"] == 11 and got["sha256"] == sha(b"second life")
    assert stats["tcp_left"] == {}


# -- flow control ---------------------------------------------------------------------------


def test_zero_window_gets_persist_probes_with_backoff_then_resumes(bed):
    """RFC 9293 3.8.6.1 / RFC 1122 4.2.2.17: with the peer's window at zero the sender
    probes it, backing off between probes, sends no data into it, and resumes when the
    window opens."""
    size = 40_000
    with bed.server([["accept"], ["send", size], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect(options=[("MSS", 1460)], ack_win=1460)
        got, _ = p.read(1460, win=0)                     # one segment fit: now it shuts
        t_zero = time.monotonic()
        probes = []
        while len(probes) < 2:
            t = p.next(timeout=5, what="persist probe")
            # the probe is the segment below the window (SEQ = SND.UNA - 1), no data
            assert not payload(t) and t.seq == (p.rcv - 1) & M, t.summary()
            probes.append(time.monotonic())
            p.send("A", win=0)
        gaps = [probes[0] - t_zero, probes[1] - probes[0]]
        assert gaps[0] >= 0.18 and gaps[1] >= 0.36, gaps  # RTO, then doubled
        p.send("A", win=65535)                           # the window opens
        rest, _ = p.read()
        p.close()
        stats = srv.finish()
    assert got + rest == pattern(size)
    assert stats["tcp"]["persist_probes"] == 2


def test_receive_window_closes_for_a_slow_reader_and_reopens(bed):
    """DESIGN: a slow reader shrinks the window, it never drops acknowledged data.
    RFC 9293 3.8.6.2.2: unread bytes close the advertised window (its right edge never
    moves left); 3.10.7.4: data into a zero window is not taken but answered with an ACK;
    reading reopens the window with an update."""
    buf = 8192
    with bed.server([["accept"], ["wait"], ["recv"], ["close"], ["close_listener"]],
                    tcp={"rcv_buf": buf}) as srv:
        p = bed.peer()
        sa = p.connect(options=[("MSS", 1460)])
        assert sa.window == buf
        srv.expect("accepted")
        edge = (p.seq + buf) & M
        data = pattern(buf + 1000)
        for i in range(0, buf, 1024):
            p.data(data[i:i + 1024])
        while True:
            a = p.next(what="ACK")
            assert (a.ack + a.window) & M == edge, "the right edge moved"
            if a.ack == edge:
                break
        assert a.window == 0
        p.data(data[buf:], advance=False)                 # into the zero window
        a = p.next(what="ACK of data sent into a zero window")
        assert a.ack == edge and a.window == 0
        srv.go()                                          # the app reads
        update = p.next(what="window update")
        assert update.ack == edge and update.window >= 1460, update.summary()
        p.data(data[buf:])
        p.close()
        got = srv.expect("received")
        stats = srv.finish()
    assert got["bytes"] == len(data) and got["sha256"] == sha(data)
    assert stats["tcp_left"] == {}


def test_peer_window_is_scaled_by_its_shift(bed):
    """RFC 7323 2.3: after the handshake the peer's window field is shifted by the scale it
    sent in its SYN: 47 << 6 = 3008 bytes let 3 segments of 1000 out, not zero."""
    size = 30_000
    with bed.server([["accept"], ["send", size], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect(options=[("MSS", 1000), ("WScale", 6)], syn_win=65535, ack_win=47)
        una = p.rcv
        flight = 0
        while True:                                     # until the RTO retransmits
            t = p.next(timeout=3, what="data or its retransmission")
            if flight and t.seq == una:
                break
            flight = max(flight, ((t.seq - una) & M) + len(payload(t)))
        assert flight == 3000, flight
        p.rcv = una + flight
        p.send("A", win=1024)                            # 64 KiB
        rest, _ = p.read(win=1024)
        p.close()
        stats = srv.finish()
    assert rest == pattern(size)[3000:]
    assert stats["tcp_left"] == {"TIME-WAIT": 1}       # the stack closed first


@pytest.mark.parametrize("sack", [False, True], ids=["dupacks", "sack"])
def test_a_lost_segment_is_fast_retransmitted(bed, sack):
    """RFC 5681 3.2 / RFC 6582: the third duplicate ACK makes the sender retransmit the
    missing segment at once, without waiting for the RTO; RFC 6675 5: with SACK the
    duplicate ACKs carry the blocks above the hole. The stream arrives whole."""
    size = 30_000
    with bed.server([["accept"], ["send", size], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect(options=[("MSS", 1000)] + ([("SAckOK", b"")] if sack else []))
        stream = bytearray(payload(p.next(what="the first segment")))
        p.rcv += len(stream)
        p.send("A")
        hole, lost, above, dupacks = p.rcv, None, {}, 0
        while True:
            t = p.next(what="data above the hole, then its retransmission")
            off = (t.seq - hole) & M
            if off == 0 and lost is None:
                lost = payload(t)                        # "lost": never acknowledged
                continue
            if off == 0:
                assert dupacks >= 3 and payload(t) == lost
                break
            above[off] = payload(t)
            end = max(o + len(b) for o, b in above.items())
            p.send("A", options=[("SAck", ((hole + len(lost)) & M, (hole + end) & M))]
                   if sack else [])
            dupacks += 1
        stream += lost
        for off in sorted(above):
            stream += above[off]
        p.rcv = hole + len(lost) + sum(len(b) for b in above.values())
        p.send("A")
        rest, _ = p.read()
        p.close()
        stats = srv.finish()
    assert bytes(stream) + rest == pattern(size)
    assert stats["tcp"]["fast_retransmits"] == 1 and stats["tcp"]["rto_fired"] == 0


# -- SACK and timestamps --------------------------------------------------------------------


def test_out_of_order_data_is_sacked(bed):
    """RFC 2018 4 / RFC 5681 4.2: each out-of-order segment gets an immediate duplicate
    ACK whose first SACK block is the one that segment landed in, then the other blocks;
    filling a hole advances the ACK and drops its block. RFC 9293 3.10.7.4 eighth: a FIN
    that came early is taken once the bytes before it are in."""
    chunk = [pattern(2000)[i * 500:(i + 1) * 500] for i in range(4)]
    with bed.server([["accept"], ["recv"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect()
        base = p.seq

        def put(i, flags="PA"):
            p.data(chunk[i], seq=base + 500 * i, advance=False, flags=flags)
            return p.next(what=f"ACK of chunk {i}")

        def blocks(t):
            s = opts(t).get("SAck", ())
            return [((s[k] - base) & M, (s[k + 1] - base) & M) for k in range(0, len(s), 2)]

        a = put(1)
        assert a.ack == base and blocks(a) == [(500, 1000)]
        a = put(3, "FPA")                               # the last bytes, and the FIN
        assert a.ack == base and blocks(a) == [(1500, 2000), (500, 1000)]
        a = put(0)
        assert a.ack == (base + 1000) & M and blocks(a) == [(1500, 2000)]
        a = put(2)
        assert a.ack == (base + 2001) & M and blocks(a) == []    # the bytes and the FIN
        p.seq = base + 2001
        got = srv.expect("received")                    # the FIN made the EOF
        fin = p.next(what="the server's FIN")
        assert "F" in fin.flags and fin.ack == p.seq
        p.rcv = fin.seq + 1
        p.send("A")
        stats = srv.finish()
    assert got["bytes"] == 2000 and got["sha256"] == sha(b"".join(chunk))
    assert stats["tcp"]["ooo_segments"] == 2


def test_sequence_numbers_wrap_around(bed):
    """RFC 9293 3.4: sequence numbers are modulo 2**32. A stream that wraps 2500 bytes in,
    sent out of order across the wrap, is reassembled, and its SACK blocks (RFC 2018)
    straddle the wrap correctly."""
    data = pattern(6000)
    with bed.server([["accept"], ["recv"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.seq = -2501                                    # the first data byte is 2**32 - 2500
        p.connect()
        base = p.seq
        expect = {3: (0, [(3000, 4000)]), 2: (0, [(2000, 4000)]),
                  5: (0, [(5000, 6000), (2000, 4000)]), 0: (1000, [(5000, 6000), (2000, 4000)]),
                  4: (1000, [(2000, 6000)]), 1: (6000, [])}
        for i, (ack, blocks) in expect.items():
            p.data(data[i * 1000:(i + 1) * 1000], seq=base + 1000 * i, advance=False)
            a = p.next(what=f"ACK of chunk {i}")
            s = opts(a).get("SAck", ())
            got = [((s[k] - base) & M, (s[k + 1] - base) & M) for k in range(0, len(s), 2)]
            assert ((a.ack - base) & M, got) == (ack, blocks), i
        p.seq = base + 6000
        p.close()
        got = srv.expect("received")
        stats = srv.finish()
    assert got["bytes"] == 6000 and got["sha256"] == sha(data)
    assert stats["tcp_left"] == {}


def test_timestamps_are_echoed_and_paws_drops_old_segments(bed):
    """RFC 7323 4.3: TSecr echoes TS.Recent, the TSval of the last in-order segment;
    5.3 (PAWS): a segment with an older TSval is answered with an ACK and dropped; our
    TSvals never go back."""
    with bed.server([["accept"], ["recv"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect(options=[("MSS", 1460), ("Timestamp", (100, 0))])
        srv.expect("accepted")
        p.data(b"aaaa", options=[("Timestamp", (5000, p.ts_recent))])
        a = p.next(what="ACK")
        assert a.ack == p.seq and opts(a)["Timestamp"][1] == 5000
        p.data(b"bbbb", options=[("Timestamp", (4000, p.ts_recent))], advance=False)
        a = p.next(what="ACK of the PAWS drop")
        assert a.ack == p.seq and opts(a)["Timestamp"][1] == 5000
        p.data(b"cccc", options=[("Timestamp", (5001, p.ts_recent))])
        a = p.next(what="ACK")
        assert a.ack == p.seq and opts(a)["Timestamp"][1] == 5001
        p.tsval = 6000
        p.close()
        got = srv.expect("received")
        stats = srv.finish()
    ours = [opts(t)["Timestamp"][0] for _, t in p.received]
    assert ours == sorted(ours)
    assert got["bytes"] == 8 and got["sha256"] == sha(b"aaaacccc")
    assert stats["tcp"]["paws_drops"] == 1


# -- hostile input --------------------------------------------------------------------------


def test_malformed_segments_are_dropped_counted_and_survived(bed):
    """Bad checksums (RFC 9293 3.1), malformed options, data offsets below 5 or beyond the
    segment, truncated headers, segments outside the window (RFC 9293 3.10.7.4: answered
    with an ACK), ACKs of data never sent: none is taken, each is counted, and the
    connection carries on. After each one a small valid segment follows: the first answer
    must be its ACK."""
    with bed.server([["accept"], ["recv"], ["close"], ["close_listener"]]) as srv:
        p = bed.peer()
        p.connect(options=[("MSS", 1460)])
        srv.expect("accepted")
        src, dst = p.ip, bed.wire.server_ip
        evil = b"EVIL" * 4
        # Built when sent, at the sequence numbers of that moment.
        silent = {
            "bad tcp checksum": lambda: ip_packet(src, dst, p.raw(0x18, data=evil,
                                                                  bad_csum=True)),
            "bad ip checksum": lambda: ip_packet(src, dst, p.raw(0x18, data=evil),
                                                 bad_ip_csum=True),
            "option length 0": lambda: ip_packet(src, dst, p.raw(
                0x18, raw_opts=b"\x02\x00\x05\xb4", data=evil)),
            "option past the header": lambda: ip_packet(src, dst, p.raw(
                0x18, raw_opts=b"\x01\x01\x08\x0a\x00\x00\x00\x01", data=evil)),
            "option without length": lambda: ip_packet(src, dst, p.raw(
                0x18, raw_opts=b"\x01\x01\x01\x02", data=evil)),
            "data offset 3": lambda: ip_packet(src, dst, p.raw(0x18, data=evil, dataofs=3)),
            "data offset past the segment": lambda: ip_packet(src, dst, p.raw(0x18,
                                                                              dataofs=15)),
            "tcp header truncated": lambda: ip_packet(src, dst, p.raw(0x10)[:12]),
            "ip length past the frame": lambda: ip_packet(src, dst, p.raw(0x18, data=evil),
                                                          tot_len=20 + 20 + len(evil) + 100),
        }
        answered = {
            "beyond the window": lambda: p.segment("PA", seq=p.seq + (1 << 24), data=evil),
            "below the window": lambda: p.segment("PA", seq=p.seq - 5000, data=evil),
            "acks data never sent": lambda: p.segment("PA", ack=p.rcv + 100_000, data=evil),
            "ack below SND.UNA - MAX.SND.WND": lambda: p.segment("PA", ack=p.rcv - (1 << 20),
                                                                  data=evil),
        }
        sent = b""
        for name, packet in [*silent.items(), *answered.items()]:
            bed.wire.send(packet())
            marker = f"<{name}>".encode()
            p.data(marker)
            sent += marker
            t = p.next(what=f"an answer after {name!r}")
            if name in answered:
                assert t.flags == "A" and t.ack == (p.seq - len(marker)) & M, name
                t = p.next(what=f"the ACK of the marker after {name!r}")
            assert t.ack == p.seq, (name, t.summary())
        # Ethernet padding after the IP packet is no data; IP options move the TCP header.
        for marker, frame in (
                (b"<padded>", lambda m: ip_packet(src, dst, p.raw(0x18, data=m)) + b"\xee" * 18),
                (b"<ip options>", lambda m: ip_packet(src, dst, p.raw(0x18, data=m),
                                                      ip_opts=b"\x01\x01\x01\x00"))):
            bed.wire.send(frame(marker))
            p.seq += len(marker)
            sent += marker
            assert p.next(what=f"the ACK of {marker}").ack == p.seq
        # Data to a port of the stack where no connection is: RFC 9293 3.10.7.1
        stray = bed.peer(dport=CLOSED_PORT)
        stray.rcv = 12345
        stray.send("PA", data=evil)
        rst = stray.next(what="RST from a closed port")
        assert rst.flags == "R" and rst.seq == 12345
        stray.send("P", data=evil)
        rst = stray.next(what="RST,ACK from a closed port")
        assert rst.flags == "RA" and rst.seq == 0 and rst.ack == (stray.seq + len(evil)) & M
        p.close()
        got = srv.expect("received")
        stats = srv.finish()
    assert got["bytes"] == len(sent) and got["sha256"] == sha(sent)
    tcp, net = stats["tcp"], stats["net"]
    assert tcp["bad_checksum"] == 1 and net["bad_checksum"] == 1
    assert tcp["bad_options"] == 3 and tcp["bad_offset"] == 2 and tcp["bad_len"] == 1
    assert net["malformed"] == 1 and net["tcp_invalid"] == 4
    assert tcp["unacceptable"] == 2 and tcp["challenge_acks"] == 1
    assert tcp["no_conn_rst"] == 2
    assert stats["tcp_left"] == {}


def syn_frames(wire: Wire, count: int, seed: int, wide: bool = False
               ) -> list[tuple[bytes, str, int, int]]:
    """SYNs from spoofed ports and addresses: of the client's subnet (not .1/.2, the
    hosts), or `wide` from 198.18.0.0/15 (RFC 2544's benchmarking range; the answers go
    to the client's MAC, which drops them, so nothing leaves the link):
    (packet, ip, port, isn)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        ip = f"198.{rng.randrange(18, 20)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" \
            if wide else f"{wire.subnet}.{rng.randrange(3, 255)}"
        sport, isn = rng.randrange(20000, 40000), rng.getrandbits(32)
        seg = tcp_bytes(ip, wire.server_ip, sport, PORT, isn, 0, 0x02,
                        raw_opts=b"\x02\x04\x05\xb4")
        out.append((ip_packet(ip, wire.server_ip, seg), ip, sport, isn))
    return out


@pytest.mark.parametrize("sources", ["subnet", "wide"])
def test_syn_flood_while_a_linux_client_transfers(bed, sources):
    """RFC 4987 3.6: with the half-open queue full (backlog 8), SYNs are answered with
    cookies; a Linux client that connects during the flood gets in through a cookie and its
    20 MB arrive intact; the flood's half-open connections go with exact RSTs and the
    server ends with every frame back. The flood costs the real client nothing: every
    segment for it goes out (from 252 spoofed sources, or from thousands)."""
    size = 20_000_000
    wire = bed.wire
    first = syn_frames(wire, 64, 1)
    flood = [f for f, *_ in syn_frames(wire, 4096, 2, wide=sources == "wide")]
    stop = threading.Event()
    sent = [0]

    def flooder():
        i = 0
        while not stop.wait(0.002) and sent[0] < 200_000:     # about 30k SYN/s
            for _ in range(64):
                wire.send(flood[i % len(flood)])
                i += 1
            sent[0] += 64

    # The listener stays open to the end: its half-open children must go by our RSTs
    # (closing it would abort them). RTO 1 s: they do not time out during the test.
    with bed.server([["accept"], ["recv"], ["close"]], backlog=8,
                    tcp={"rto_init": 1.0}) as srv:
        for f, *_ in first:
            wire.send(f)
        # Every one of them answered: 8 hold the half-open queue, the others got cookies.
        deadline, synacks = time.monotonic() + 10, 0
        while synacks < len(first) and (ip := wire.recv(deadline)) is not None:
            synacks += IP(ip)[TCP].flags == "SA"
        assert synacks == len(first)
        thread = threading.Thread(target=flooder)
        thread.start()
        try:
            client = bed.tb.exec("client", [sys.executable, "-c", CLIENT, wire.server_ip,
                                            str(PORT), str(size)],
                                 capture_output=True, text=True, timeout=120)
        finally:
            stop.set()
            thread.join()
        assert client.returncode == 0, client.stderr
        got = srv.expect("received", timeout=30)
        # RFC 9293 3.10.7.4: an exact RST ends a half-open connection (cookies keep none)
        for _, ip, sport, isn in first:
            wire.send(ip_packet(ip, wire.server_ip,
                                tcp_bytes(ip, wire.server_ip, sport, PORT, isn + 1, 0, 0x04)))
        stats = srv.finish()
    sent_by_client = json.loads(client.stdout)
    assert got["bytes"] == size and got["sha256"] == sent_by_client["sha256"]
    tcp = stats["tcp"]
    assert sent[0] >= 640, "the flood did not run along the transfer"
    assert tcp["syn_backlog_full"] >= len(first) - 8 + sent[0] * 0.5, (tcp, sent[0])
    assert tcp["syncookies_sent"] == tcp["syn_backlog_full"]
    assert tcp["syncookies_ok"] == 1                      # the Linux client's connection
    assert tcp["rst_in"] == 8                             # the backlog's half-open ones
    assert stats["tcp_left"] == {} and stats["net"]["linger_expired"] == 0
    # The flood's senders are only MAC hints (SYN-ACKs to them may find theirs taken by
    # another); the real client's entry is never evicted and every segment for it left.
    assert stats["net"]["tx_no_neigh"] == 0 and stats["net"]["neigh_evicted"] == 0, \
        stats["net"]
