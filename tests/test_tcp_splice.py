"""Splice in the sans-IO TCP engine: two connections of one engine joined, scapy peers.

X is a client that connected to the engine (host A), Y a server the engine connected to;
the engine splices the two. Segments the engine sends are built the way the network
thread builds them (in their payload's frame when the headers fit). Every test ends with
every frame back in the pool.
"""

import pytest
from scapy.layers.inet import IP, TCP

from vtlstack._port import FramePool
from vtlstack._tcp import TcpEngine

A, X, Y = "10.0.0.1", "10.0.0.2", "10.0.0.3"
APORT, XPORT, YPORT, LPORT = 80, 40000, 8080, 50000
T0 = 1_000_000_000
MS = 1_000_000


class Remote:
    """One scapy peer: its address, its next sequence number and what it has seen of
    the engine's."""

    def __init__(self, ip, port, engine_port, seq, options=()):
        self.ip, self.port, self.engine_port = ip, port, engine_port
        self.seq = seq
        self.ack = 0            # the engine's next sequence number as this peer has seen
        self.options = list(options)
        self.got = bytearray()  # in-order payload received from the engine

    def pkt(self, flags="A", payload=b"", seq=None, ack=None, win=65535, options=None):
        return bytes(IP(src=self.ip, dst=A) /
                     TCP(sport=self.port, dport=self.engine_port,
                         seq=(self.seq if seq is None else seq) & 0xFFFFFFFF,
                         ack=(self.ack if ack is None else ack) & 0xFFFFFFFF, flags=flags,
                         window=win, options=self.options if options is None else options) /
                     payload)


class Bed:
    def __init__(self, frames=512, x_options=(), y_options=(), **kw):
        self.pool = FramePool(frames)
        kw.setdefault("msl", 1.0)
        kw.setdefault("seed", 11)
        self.eng = TcpEngine(self.pool, 16, **kw)
        self.now = T0
        self.x = Remote(X, XPORT, APORT, 1_000_000, x_options)
        self.y = Remote(Y, YPORT, LPORT, 5_000_000, y_options)
        self.inbox = {X: [], Y: []}

    def feed(self, raw):
        assert self.eng.feed(raw, self.now)
        self.pump()

    def pump(self):
        for raw in self.eng.segments(inplace=True):
            ip = IP(raw)
            assert IP(bytes(ip)).chksum == ip.chksum
            t = ip[TCP]
            assert TCP(bytes(t)).chksum == t.chksum, "bad TCP checksum"
            self.inbox[ip.dst].append(t)

    def take(self, ip):
        out, self.inbox[ip] = self.inbox[ip], []
        return out

    def open(self):
        lid = self.eng.listen(A, APORT)
        x, y = self.x, self.y
        self.feed(x.pkt("S", options=[("MSS", 1460)] + x.options))
        (synack,) = self.take(X)
        x.seq += 1
        x.ack = synack.seq + 1
        self.feed(x.pkt("A"))
        self.a = self.eng.accept(lid)
        self.b = self.eng.connect(A, LPORT, Y, YPORT, self.now)
        self.pump()
        (syn,) = self.take(Y)
        y.ack = syn.seq + 1
        self.feed(y.pkt("SA", ack=y.ack, options=[("MSS", 1460)] + y.options))
        y.seq += 1
        assert self.take(Y)             # the ACK that completes the handshake
        assert self.eng.state(self.a) == self.eng.state(self.b) == "ESTABLISHED"

    def deliver(self, remote, segs, ack=True, win=65535):
        """remote takes the engine's segments in order, acking what it got."""
        fin = False
        for t in segs:
            data = bytes(t.payload)
            if data and t.seq == remote.ack & 0xFFFFFFFF:
                remote.got += data
                remote.ack += len(data)
            if "F" in t.flags:
                remote.ack += 1
                fin = True
        if ack and segs:
            self.feed(remote.pkt("A", win=win))
        return fin

    def drain(self, remote):
        """remote takes and acknowledges segments until the engine sends no more."""
        while self.inbox[remote.ip]:
            self.deliver(remote, self.take(remote.ip))

    def send(self, remote, data, mss=1000, flags="PA"):
        for i in range(0, len(data), mss):
            self.feed(remote.pkt(flags, data[i:i + mss]))
            remote.seq += len(data[i:i + mss])

    def events(self):
        ev = {}
        for cid, names in self.eng.events():
            ev.setdefault(cid, set()).update(names)
        return ev

    def close_all(self):
        for cid in (self.a, self.b):
            if self.eng.exists(cid):
                self.eng.close(cid, self.now)
        self.pump()
        self.now += 3000 * MS           # past 2 MSL: TIME-WAIT ends
        self.eng.on_timer_(self.now)
        self.pump()
        self.pool.check_frames(expect_idle=True)


def pattern(n, salt=0):
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


def test_bytes_cross_both_ways_in_their_own_frames_then_fins_end_the_splice():
    bed = Bed()
    bed.open()
    bed.eng.splice(bed.a, bed.b, bed.now)
    up, down = pattern(20_000), pattern(30_000, 3)
    bed.send(bed.x, up)
    bed.drain(bed.y)
    assert bytes(bed.y.got) == up
    bed.send(bed.y, down)
    bed.drain(bed.x)
    assert bytes(bed.x.got) == down
    c = bed.eng.counters()
    assert c["splice_bytes"] == len(up) + len(down)
    # headers of equal size both ways: every data segment went out from its own frame
    assert c["splice_inplace"] == (len(up) + len(down)) // 1000 and c["splice_copied"] == 0
    assert c["splice_held"] == 0        # all acknowledged
    # the client's FIN reaches the server after its bytes, and the server's comes back
    bed.feed(bed.x.pkt("FA"))
    bed.x.seq += 1
    assert bed.deliver(bed.y, bed.take(Y))
    bed.feed(bed.y.pkt("FA"))
    bed.y.seq += 1
    assert bed.deliver(bed.x, bed.take(X))
    assert bed.eng.state(bed.a) in ("TIME-WAIT", "CLOSED")
    assert bed.eng.state(bed.b) in ("TIME-WAIT", "CLOSED")
    ev = bed.events()
    assert "splice_done" in ev[bed.a] and "splice_done" in ev[bed.b]
    assert bed.eng.info(bed.a)["splice"] is None
    bed.close_all()


def test_headers_that_do_not_fit_are_copied_and_bytes_stay_the_same():
    # X's segments come without options (20-byte TCP header), Y's connection carries
    # timestamps (32 bytes): the new headers are longer than the old ones
    bed = Bed(y_options=[("Timestamp", (100, 0))])
    bed.open()
    bed.eng.splice(bed.a, bed.b, bed.now)
    up = pattern(5000)
    bed.send(bed.x, up)
    bed.drain(bed.y)
    assert bytes(bed.y.got) == up
    c = bed.eng.counters()
    assert c["splice_inplace"] == 0 and c["splice_copied"] == 5
    bed.close_all()


def test_bytes_the_app_had_not_read_go_first():
    bed = Bed()
    bed.open()
    early = b"GET / HTTP/1.1\r\nHost: y\r\n\r\n"
    bed.send(bed.x, early)
    assert bed.eng.peek(bed.a)      # queued for the app, which never read them
    bed.eng.splice(bed.a, bed.b, bed.now)
    bed.pump()
    bed.send(bed.x, b"more")
    bed.deliver(bed.y, bed.take(Y))
    assert bytes(bed.y.got) == early + b"more"
    assert bed.eng.peek(bed.a) == []
    bed.close_all()


def test_retransmission_comes_from_the_kept_frame():
    bed = Bed()
    bed.open()
    bed.eng.splice(bed.a, bed.b, bed.now)
    bed.send(bed.x, pattern(1000))
    first = bed.take(Y)
    assert len(first) == 1 and bytes(first[0].payload) == pattern(1000)
    bed.now += 1500 * MS            # past the initial RTO, no ACK from Y
    bed.eng.on_timer_(bed.now)
    bed.pump()
    again = bed.take(Y)
    assert len(again) == 1 and again[0].seq == first[0].seq
    assert bytes(again[0].payload) == pattern(1000)
    bed.deliver(bed.y, again)
    assert bed.eng.counters()["splice_held"] == 0
    bed.close_all()


def test_slow_reader_throttles_the_sender_by_adaptive_alpha_and_nothing_is_lost():
    bed = Bed(rcv_buf=16384, splice_b0=16384)
    bed.open()
    bed.eng.splice(bed.a, bed.b, bed.now)
    # Y's window lets 4000 bytes through and it does not acknowledge them yet
    bed.feed(bed.y.pkt("A", win=4000))
    data = pattern(16000)
    edge = bed.x.seq + 16384            # the window offered in the handshake
    bed.send(bed.x, data)
    to_y = bed.take(Y)
    assert sum(len(t.payload) for t in to_y) == 4000
    held = bed.eng.info(bed.b)["sq_bytes"]
    assert held == 16000
    # w_s = w_c / (1 + 9 b / b0) = 4000 / (1 + 9 * 16000 / 16384) < one MSS: shut
    assert bed.eng.info(bed.a)["rcv_wnd"] < 1000
    acks_to_x = bed.take(X)
    assert acks_to_x and max(t.ack + t.window for t in acks_to_x) <= edge
    # Y reads slowly: every ACK frees a little; X's window opens only as b drains
    got_total = 0
    for _ in range(64):
        bed.deliver(bed.y, to_y, win=4000)
        to_y = bed.take(Y)
        got_total = len(bed.y.got)
        if got_total == len(data):
            break
    assert bytes(bed.y.got) == data
    # the buffer is empty again: the window X was refused is offered anew
    win_updates = [t for t in bed.take(X) if t.window >= 1000]
    assert win_updates
    assert bed.eng.info(bed.b)["sq_bytes"] == 0
    bed.close_all()


def test_pair_cap_holds_the_window_shut():
    bed = Bed(rcv_buf=65535, splice_pair_cap=3000)
    bed.open()
    bed.eng.splice(bed.a, bed.b, bed.now)
    bed.feed(bed.y.pkt("A", win=0))      # Y's window is shut: nothing goes out
    bed.send(bed.x, pattern(3000))
    assert [t for t in bed.take(Y) if len(t.payload)] == []
    assert bed.eng.info(bed.b)["sq_bytes"] == 3000
    assert bed.eng.info(bed.a)["rcv_wnd"] <= 65535 - 3000   # never more than first offered
    bed.take(X)
    # the window edge cannot move left, but it does not move right while the cap is hit
    edge = bed.eng.info(bed.a)["rcv_nxt"] + bed.eng.info(bed.a)["rcv_wnd"]
    bed.feed(bed.x.pkt("A"))
    assert bed.eng.info(bed.a)["rcv_nxt"] + bed.eng.info(bed.a)["rcv_wnd"] == edge
    bed.feed(bed.y.pkt("A", win=65535))
    bed.deliver(bed.y, bed.take(Y))
    assert bytes(bed.y.got) == pattern(3000)
    bed.close_all()


def test_reset_on_one_side_resets_the_other():
    bed = Bed()
    bed.open()
    bed.eng.splice(bed.a, bed.b, bed.now)
    bed.send(bed.x, pattern(2000))
    bed.take(Y)                         # Y never acknowledges: the frames stay queued
    bed.feed(bed.y.pkt("R", ack=0))
    rst = [t for t in bed.take(X) if "R" in t.flags]
    assert len(rst) == 1
    assert bed.eng.state(bed.a) == bed.eng.state(bed.b) == "CLOSED"
    ev = bed.events()
    assert {"reset", "splice_done"} <= ev[bed.a] and {"reset", "splice_done"} <= ev[bed.b]
    assert bed.eng.counters()["splice_held"] == 0
    bed.close_all()


def test_splice_refuses_what_cannot_be_spliced():
    bed = Bed()
    bed.open()
    with pytest.raises(OSError, match="cannot splice"):
        bed.eng.splice(bed.a, bed.a, bed.now)
    bed.eng.splice(bed.a, bed.b, bed.now)
    with pytest.raises(OSError, match="cannot splice"):
        bed.eng.splice(bed.b, bed.a, bed.now)
    bed.close_all()


def test_a_gate_holds_bytes_back_and_cuts_a_fragment_where_it_says():
    bed = Bed()
    bed.open()
    irs = bed.eng.info(bed.a)["rcv_nxt"]
    bed.eng.splice(bed.a, bed.b, bed.now)
    bed.eng.splice_gate(bed.a, irs, bed.now)        # nothing may go yet
    data = pattern(3000)
    bed.send(bed.x, data)
    assert [t for t in bed.take(Y) if len(t.payload)] == []
    assert bed.eng.info(bed.a)["rq_bytes"] == 3000
    bed.eng.splice_gate(bed.a, irs + 1500, bed.now)  # the middle of the second segment
    bed.pump()
    bed.drain(bed.y)
    assert bytes(bed.y.got) == data[:1500]
    bed.eng.splice_gate(bed.a, irs + 3000, bed.now)
    bed.pump()
    bed.drain(bed.y)
    assert bytes(bed.y.got) == data
    assert bed.eng.info(bed.a)["rq_bytes"] == 0
    bed.close_all()


def test_opening_a_gate_sends_no_ack_of_its_own():
    # An inspector opens the gate of each direction once per message it has vetted. The
    # window that frees goes out on the segments that flow anyway: a window update at
    # every opening was a pure ACK per request to the server (about 8 % of the
    # requests/s of an inspected proxy under wrk), whose window tracks the client's large
    # one.
    bed = Bed(x_options=[("WScale", 7)])
    bed.open()
    bed.eng.splice(bed.a, bed.b, bed.now)
    requests, responses, own = b"", b"", 0
    for i in range(40):
        req, resp = pattern(86, i), pattern(2300, i)
        gate = bed.eng.info(bed.a)["rcv_nxt"]
        bed.eng.splice_gate(bed.a, gate, bed.now)           # held until vetted
        bed.send(bed.x, req)
        bed.eng.splice_gate(bed.a, gate + len(req), bed.now)  # vetted: it goes on
        bed.pump()
        own += len(bed.take(X))
        bed.deliver(bed.y, bed.take(Y))
        gate = bed.eng.info(bed.b)["rcv_nxt"]
        bed.eng.splice_gate(bed.b, gate, bed.now)
        bed.send(bed.y, resp)
        bed.eng.splice_gate(bed.b, gate + len(resp), bed.now)
        bed.pump()
        own += len(bed.take(Y))
        bed.deliver(bed.x, bed.take(X))
        own += len(bed.take(Y))
        requests, responses = requests + req, responses + resp
    assert own == 0
    assert bytes(bed.y.got) == requests and bytes(bed.x.got) == responses
    bed.close_all()


def test_unsplice_leaves_both_connections_to_the_app():
    bed = Bed()
    bed.open()
    bed.eng.splice(bed.a, bed.b, bed.now)
    bed.eng.unsplice(bed.b)
    ev = bed.events()
    assert "splice_done" in ev[bed.a] and "splice_done" in ev[bed.b]
    bed.send(bed.x, b"hello")
    assert bed.take(Y) == [] and bed.eng.recv(bed.a, bed.now) == b"hello"
    bed.eng.send(bed.a, b"HTTP/1.1 400 Bad Request\r\n\r\n", bed.now)
    bed.pump()
    bed.deliver(bed.x, bed.take(X))
    assert bytes(bed.x.got).startswith(b"HTTP/1.1 400")
    bed.close_all()
