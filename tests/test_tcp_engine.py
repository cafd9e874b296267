"""The sans-IO TCP engine driven by scapy-built IPv4+TCP segments and simulated time.

A "peer" below is this test, speaking for host B with scapy; the engine is host A. Every
test ends with every frame back in the pool (check_frames(expect_idle=True)).
"""

import itertools
import random
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from vtlstack._port import FramePool
from vtlstack._tcp import TcpEngine, cc_trace

A, B = "10.0.0.1", "10.0.0.2"
APORT, BPORT = 80, 40000
MS = 1_000_000
T0 = 1_000_000_000
BISS = 1_000_000


def pkt(seq, ack=0, flags="A", win=65535, options=(), payload=b"", sport=BPORT, dport=APORT):
    return bytes(IP(src=B, dst=A) / TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF,
                                        ack=ack & 0xFFFFFFFF, flags=flags, window=win,
                                        options=list(options)) / payload)


def with_tcp_csum(tcp, src=B, dst=A):
    """An IPv4 packet around raw TCP bytes whose checksum we compute (RFC 1071), so
    crafted headers scapy would rewrite stay as they are."""
    tcp = bytearray(tcp)
    tcp[16:18] = b"\0\0"
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + bytes([0, 6]) + \
        len(tcp).to_bytes(2, "big")
    data = pseudo + bytes(tcp) + (b"\0" if len(tcp) % 2 else b"")
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    tcp[16:18] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(IP(src=src, dst=dst, proto=6) / Raw(bytes(tcp)))


def tcp_of(raw):
    ip = IP(raw)
    assert ip.proto == 6
    t = ip[TCP]
    # the checksums the engine wrote verify
    assert IP(raw).chksum == IP(bytes(IP(raw))).chksum
    assert TCP(bytes(t)).chksum == t.chksum
    return t


def opts(t):
    return {k: v for k, v in t.options if k not in ("NOP", "EOL")}


def payload(t):
    return bytes(t.payload)


class Peer:
    """Host B: an engine on A, the test's scapy side on B, and a clock."""

    def __init__(self, frames=256, **kw):
        self.pool = FramePool(frames)
        kw.setdefault("msl", 1.0)
        kw.setdefault("seed", 7)
        self.eng = TcpEngine(self.pool, 16, **kw)
        self.now = T0
        self.seq = BISS          # B's next sequence number
        self.cid = None
        self.a_seq = None        # A's next sequence number as B has seen it

    def feed(self, raw):
        return self.eng.feed(raw, self.now)

    def out(self):
        return [tcp_of(s) for s in self.eng.segments()]

    def one(self):
        segs = self.out()
        assert len(segs) == 1, [s.summary() for s in segs]
        return segs[0]

    def send(self, data=b"", flags="A", seq=None, ack=None, win=65535, options=()):
        seq = self.seq if seq is None else seq
        ack = self.a_seq if ack is None else ack
        ok = self.feed(pkt(seq, ack, flags, win, options, data))
        return ok

    def passive_open(self, options=(("MSS", 1460), ("SAckOK", b""), ("Timestamp", (5, 0)),
                                     ("WScale", 7)), **listen_kw):
        self.lid = self.eng.listen(A, APORT, **listen_kw)
        self.feed(pkt(self.seq, 0, "S", 65535, options))
        synack = self.one()
        assert synack.flags == "SA" and synack.ack == self.seq + 1
        self.seq += 1
        self.a_seq = synack.seq + 1
        self.send(options=[("Timestamp", (6, synack.options and opts(synack).get(
            "Timestamp", (0, 0))[0]))] if "Timestamp" in dict(options) else ())
        assert self.out() == []
        self.cid = self.eng.accept(self.lid)
        assert self.cid is not None
        assert self.eng.state(self.cid) == "ESTABLISHED"
        return synack

    def plain_open(self, **kw):
        """Passive open without options (no timestamps: segments stay simple)."""
        return self.passive_open(options=(("MSS", 1460),), **kw)

    def data(self, data, seq=None, flags="PA", **kw):
        seq = self.seq if seq is None else seq
        ok = self.send(data, flags, seq=seq, **kw)
        return ok

    def advance(self, dt):
        self.now += dt
        self.eng.on_timer_(self.now)

    def until_deadline(self):
        d = self.eng.deadline()
        assert d is not None and d >= self.now
        self.now = d
        self.eng.on_timer_(self.now)
        return d

    def done(self):
        """Release everything and check that every frame went back to the pool."""
        for cid in range(16):
            if self.eng.exists(cid):
                self.eng.abort(cid, self.now)
                if self.eng.exists(cid):
                    self.eng.close(cid, self.now)
        self.eng.segments()
        self.pool.check_frames(expect_idle=True)
        c = self.eng.counters()
        assert c["bad_transitions"] == 0
        assert self.pool.stats()["bad_ops"] == 0


# -- handshake -------------------------------------------------------------------------------


def test_passive_open_echoes_offered_options():
    p = Peer()
    synack = p.passive_open()
    o = opts(synack)
    assert o["MSS"] == 1460
    assert "SAckOK" in o
    assert o["Timestamp"][1] == 5                    # TSecr echoes the SYN's TSval
    assert o["WScale"] == p.eng.info(p.cid)["rcv_wscale"] > 0
    i = p.eng.info(p.cid)
    assert i["ws_ok"] and i["ts_ok"] and i["sack_ok"]
    assert i["snd_wscale"] == 7
    assert i["snd_mss"] == 1460 - 12                 # timestamps take 12 bytes per segment
    assert synack.window == 65535                    # RFC 7323: SYN windows are not scaled
    assert p.eng.transition_counts() == {("CLOSED", "LISTEN"): 1,
                                         ("CLOSED", "SYN-RECEIVED"): 1,
                                         ("SYN-RECEIVED", "ESTABLISHED"): 1}
    p.done()


def test_events_of_a_child_wait_for_accept():
    p = Peer()
    lid = p.eng.listen(A, APORT)
    p.feed(pkt(BISS, 0, "S"))
    sa = p.one()
    p.feed(pkt(BISS + 1, sa.seq + 1, "PA", payload=b"early"))   # data with the final ACK
    assert p.eng.events() == [(lid, {"connected"})]           # only the listener speaks
    cid = p.eng.accept(lid)
    assert p.eng.events() == [(cid, {"readable"})]            # then the child's backlog
    assert p.eng.recv(cid, p.now) == b"early"
    p.done()


def test_passive_open_without_options_offers_none():
    p = Peer()
    p.lid = p.eng.listen(A, APORT)
    p.feed(pkt(p.seq, 0, "S"))
    o = opts(p.one())
    assert set(o) == {"MSS"}                          # only what the peer offered (and MSS)
    p.seq += 1
    p.done()


def test_passive_open_default_mss_without_option():
    p = Peer()
    p.lid = p.eng.listen(A, APORT)
    p.feed(pkt(p.seq, 0, "S"))
    synack = p.one()
    p.seq += 1
    p.a_seq = synack.seq + 1
    p.send()
    cid = p.eng.accept(p.lid)
    assert p.eng.info(cid)["snd_mss"] == 536         # RFC 9293 3.7.1 default
    p.done()


def test_active_open_sends_options_and_completes():
    p = Peer()
    cid = p.eng.connect(A, 5555, B, BPORT, p.now)
    syn = p.one()
    assert syn.flags == "S" and syn.sport == 5555
    o = opts(syn)
    assert o["MSS"] == 1460 and "SAckOK" in o and "WScale" in o and o["Timestamp"][1] == 0
    p.feed(pkt(BISS, syn.seq + 1, "SA", 1000,
               [("MSS", 1200), ("WScale", 2), ("Timestamp", (77, o["Timestamp"][0]))],
               sport=BPORT, dport=5555))
    ack = p.one()
    assert ack.flags == "A" and ack.ack == BISS + 1 and ack.seq == syn.seq + 1
    assert opts(ack)["Timestamp"][1] == 77
    i = p.eng.info(cid)
    assert i["state"] == "ESTABLISHED" and i["snd_mss"] == 1200 - 12
    assert i["snd_wnd"] == 1000                      # SYN,ACK window not scaled
    assert not i["sack_ok"]                          # the peer did not say SAckOK
    assert (cid, {"connected", "writable"}) in p.eng.events()
    p.done()


@pytest.mark.parametrize("peer_iss", [BISS, 0x90000000])
def test_active_open_offers_a_bounded_window_whatever_the_peer_isn(peer_iss):
    # the right edge starts where the SYN put it: not at 0, which half of all initial
    # sequence numbers would read (modulo 2**32) as a window of gigabytes
    p = Peer(rcv_buf=32768)
    cid = p.eng.connect(A, 5555, B, BPORT, p.now)
    syn = p.one()
    p.feed(pkt(peer_iss, syn.seq + 1, "SA", 65535, [("MSS", 1460)], sport=BPORT, dport=5555))
    assert p.one().flags == "A"
    assert 0 < p.eng.info(cid)["rcv_wnd"] <= 32768
    # a segment far past the offered window is not taken
    p.feed(pkt(peer_iss + 1 + 200_000, syn.seq + 1, "A", payload=b"x" * 100,
               sport=BPORT, dport=5555))
    assert p.eng.info(cid)["ooo_frags"] == 0 and p.eng.counters()["unacceptable"] == 1
    p.eng.abort(cid, p.now)
    p.out()
    p.done()


def test_window_scaling_applies_both_ways_after_the_handshake():
    p = Peer(frames=2048, rcv_buf=1 << 20)    # a pool big enough not to bound the window
    synack = p.passive_open()
    ours = opts(synack)["WScale"]
    assert ours == 5                                 # 2**20 >> 5 fits 16 bits
    p.send(win=10, options=[("Timestamp", (7, 0))])
    assert p.eng.info(p.cid)["snd_wnd"] == 10 << 7   # the peer's shift
    p.data(b"d" * 100, options=[("Timestamp", (8, 0))])
    p.advance(40 * MS)
    ack = p.one()
    assert ack.window == p.eng.info(p.cid)["rcv_wnd"] >> ours
    # the window is bounded by the buffer and by the free fragment slots (RQ_MAX = 256),
    # one slot per received segment of up to rcv_mss bytes
    rcv_mss = p.eng.info(p.cid)["rcv_mss"]
    want = min((1 << 20) - 100, 255 * rcv_mss)
    assert want - (1 << ours) < ack.window << ours <= want
    p.done()


def test_windows_stop_opening_when_the_pool_runs_low():
    """Every connection's window is backed by the same pool: past three quarters in use,
    a window offers only what the spare frames above that quarter can hold."""
    p = Peer(frames=128, rcv_buf=1 << 20)
    ours = opts(p.passive_open(options=(("MSS", 1460), ("WScale", 7))))["WScale"]
    mss = p.eng.info(p.cid)["rcv_mss"]
    free = p.pool.stats()["free"]
    assert p.eng.info(p.cid)["rcv_wnd"] <= (free - 128 // 4) * mss
    held = [p.pool.alloc() for _ in range(free - 128 // 4)]   # others use the rest
    p.data(b"x" * 10)
    p.seq += 10
    p.advance(40 * MS)
    ack = p.out()[-1]
    assert ack.ack == p.seq and ack.window << ours <= p.eng.info(p.cid)["rcv_wnd"]
    # the right edge does not move left (RFC 9293 3.8.6.2.2), it just stops moving right
    assert p.eng.info(p.cid)["rcv_wnd"] <= (free - 128 // 4) * mss - 10
    for addr in held:
        p.pool.free(addr)
    p.eng.recv(p.cid, p.now)
    p.done()


def test_window_held_back_by_the_pool_reopens_when_frames_return():
    """Nothing on a connection whose window the pool closed says when frames come back
    (its app may have nothing to read): the engine sends the update itself then, rather
    than wait for the peer's persist probes, which back off to minutes."""
    p = Peer(frames=128, rcv_buf=1 << 20)
    ours = opts(p.passive_open(options=(("MSS", 1460), ("WScale", 7))))["WScale"]
    held = [p.pool.alloc() for _ in range(p.pool.stats()["free"] - 128 // 4)]
    sent = 0
    while p.eng.info(p.cid)["rcv_wnd"] > 0:          # the peer fills what was offered
        n = min(1460, p.eng.info(p.cid)["rcv_wnd"])
        p.data(b"x" * n)
        p.seq += n
        sent += n
        p.eng.recv(p.cid, p.now)                      # the app reads it all
    p.advance(40 * MS)
    assert p.out()[-1].window == 0
    p.advance(1 * MS)
    assert p.out() == []                              # no frames: nothing to announce
    for addr in held:
        p.pool.free(addr)
    p.advance(1 * MS)
    update = p.one()
    assert update.ack == p.seq and update.window << ours >= 1460 * 56 // 4
    p.done()


def test_timestamps_echo_the_latest_in_order_tsval_and_paws_drops_old_data():
    p = Peer()
    p.passive_open()
    p.data(b"a", options=[("Timestamp", (1000, 0))])
    p.advance(40 * MS)
    assert opts(p.one())["Timestamp"][1] == 1000     # TSecr = TS.Recent
    p.seq += 1
    p.data(b"b", options=[("Timestamp", (999, 0))])  # older than TS.Recent: PAWS
    assert p.one().ack == p.seq                      # answered, not taken
    assert p.eng.counters()["paws_drops"] == 1
    assert p.eng.recv(p.cid, p.now) == b"a"
    p.data(b"c", options=[("Timestamp", (1001, 0))])
    p.advance(40 * MS)
    assert opts(p.one())["Timestamp"][1] == 1001
    p.done()


def test_active_open_refused_by_rst():
    p = Peer()
    cid = p.eng.connect(A, 5555, B, BPORT, p.now)
    syn = p.one()
    p.feed(pkt(0, syn.seq + 1, "RA", sport=BPORT, dport=5555))
    assert (cid, {"reset"}) in p.eng.events()
    assert p.eng.state(cid) == "CLOSED"
    p.done()


def test_syn_sent_bad_ack_gets_rst_and_no_state_change():
    p = Peer()
    cid = p.eng.connect(A, 5555, B, BPORT, p.now)
    syn = p.one()
    p.feed(pkt(BISS, syn.seq + 1000, "SA", sport=BPORT, dport=5555))
    rst = p.one()
    assert rst.flags == "R" and rst.seq == syn.seq + 1000
    assert p.eng.state(cid) == "SYN-SENT"
    p.done()


def test_simultaneous_open_scapy():
    p = Peer(timestamps=False, sack=False, wscale=False)
    cid = p.eng.connect(A, APORT, B, BPORT, p.now)
    syn = p.one()
    p.feed(pkt(BISS, 0, "S", options=[("MSS", 1000)]))        # crossing SYN
    synack = p.one()
    assert synack.flags == "SA" and synack.seq == syn.seq and synack.ack == BISS + 1
    assert p.eng.state(cid) == "SYN-RECEIVED"
    p.feed(pkt(BISS, syn.seq + 1, "SA", options=[("MSS", 1000)]))  # B's SYN,ACK
    ack = p.one()
    assert ack.flags == "A" and ack.ack == BISS + 1
    assert p.eng.state(cid) == "ESTABLISHED"
    t = p.eng.transition_counts()
    assert t[("SYN-SENT", "SYN-RECEIVED")] == 1 and t[("SYN-RECEIVED", "ESTABLISHED")] == 1
    assert p.eng.info(cid)["snd_mss"] == 1000
    p.done()


def test_syn_retransmitted_with_backoff_then_timeout():
    p = Peer(syn_retries=2, rto_init=1.0)
    cid = p.eng.connect(A, 5555, B, BPORT, p.now)
    syn = p.one()
    start = p.now
    times = []
    for _ in range(2):
        p.until_deadline()
        again = p.one()
        assert bytes(again)[:20] == bytes(syn)[:20] or (again.seq == syn.seq
                                                        and again.flags == "S")
        times.append(p.now - start)
    assert times == [1000 * MS, 3000 * MS]             # 1 s, then 2 s more (RFC 6298 5.5)
    p.until_deadline()
    assert (cid, {"timed_out"}) in p.eng.events()
    assert p.eng.state(cid) == "CLOSED"
    p.done()


def test_lost_synack_is_resent_when_syn_repeats():
    p = Peer()
    p.lid = p.eng.listen(A, APORT)
    p.feed(pkt(BISS, 0, "S", options=[("MSS", 1460)]))
    first = p.one()
    p.feed(pkt(BISS, 0, "S", options=[("MSS", 1460)]))
    again = p.one()
    assert again.flags == "SA" and again.seq == first.seq and again.ack == BISS + 1
    p.done()


def test_ack_to_listener_gets_rst_and_closed_port_gets_rst():
    p = Peer()
    p.eng.listen(A, APORT)
    p.feed(pkt(5, 1234, "A"))
    rst = p.one()
    assert rst.flags == "R" and rst.seq == 1234
    p.feed(pkt(5, 0, "S", dport=81))
    rst = p.one()
    assert rst.flags == "RA" and rst.seq == 0 and rst.ack == 6
    p.feed(pkt(5, 0, "R", dport=81))                        # a RST never gets a RST
    assert p.out() == []
    assert p.eng.counters()["no_conn_rst"] == 2
    p.done()


def test_syn_backlog_full_is_counted():
    p = Peer(syncookies=False)
    p.eng.listen(A, APORT, backlog=2)
    for port in (1, 2, 3):
        p.feed(pkt(BISS, 0, "S", sport=port))
    assert len(p.out()) == 2
    assert p.eng.counters()["syn_backlog_full"] == 1
    p.done()


def cookie_synack(p, sport, mss=1460, ts=True):
    o = [("MSS", mss), ("WScale", 7), ("SAckOK", b"")] + ([("Timestamp", (1, 0))] if ts else [])
    p.feed(pkt(BISS, 0, "S", options=o, sport=sport))
    return p.one()


def test_syn_cookie_without_timestamps_keeps_only_the_mss():
    p = Peer()
    lid = p.eng.listen(A, APORT, backlog=1)
    p.feed(pkt(BISS, 0, "S", sport=1))
    p.one()                                           # the one half-open slot
    conns = p.eng.counters()["conns"]
    sa = cookie_synack(p, sport=2, mss=1300, ts=False)
    assert sa.flags == "SA" and sa.ack == BISS + 1
    assert opts(sa) == {"MSS": 1460}                  # stateless: only MSS
    assert p.eng.counters()["conns"] == conns         # no state kept
    p.now += 30_000 * MS
    p.feed(pkt(BISS + 1, sa.seq + 1, "PA", payload=b"hi", sport=2))
    p.advance(40 * MS)                                # delayed ACK
    (ack,) = [s for s in p.out() if s.dport == 2]     # (sport 1 gets SYN,ACK resends)
    assert ack.ack == BISS + 3
    cid = p.eng.accept(lid)
    assert cid is not None and p.eng.state(cid) == "ESTABLISHED"
    i = p.eng.info(cid)
    assert i["snd_mss"] == 1220                       # the largest table MSS <= 1300
    assert not (i["ws_ok"] or i["ts_ok"] or i["sack_ok"])
    assert p.eng.recv(cid, p.now) == b"hi"
    c = p.eng.counters()
    assert c["syncookies_sent"] == 1 and c["syncookies_ok"] == 1
    p.done()


def test_syn_cookie_with_timestamps_carries_wscale_and_sack():
    p = Peer(rcv_buf=1 << 20)
    lid = p.eng.listen(A, APORT, backlog=1)
    p.feed(pkt(BISS, 0, "S", sport=1))
    p.one()
    sa = cookie_synack(p, sport=2, mss=1460, ts=True)
    o = opts(sa)
    assert o["WScale"] == 5 and "SAckOK" in o and o["Timestamp"][1] == 1
    tsval = o["Timestamp"][0]
    assert tsval & 0x3F == 0x10 | 7                   # SACK bit and the peer's shift
    p.feed(pkt(BISS + 1, sa.seq + 1, "A", win=100,
               options=[("Timestamp", (2, tsval))], sport=2))
    cid = p.eng.accept(lid)
    i = p.eng.info(cid)
    assert i["ts_ok"] and i["sack_ok"] and i["ws_ok"]
    assert i["snd_wscale"] == 7 and i["rcv_wscale"] == 5 and i["snd_wnd"] == 100 << 7
    assert i["snd_mss"] == 1460 - 12
    p.eng.send(cid, b"x", p.now)
    (seg,) = [s for s in p.out() if s.dport == 2]
    assert opts(seg)["Timestamp"][0] >= tsval         # TSval never went backwards
    p.done()


def test_forged_or_expired_cookie_gets_rst():
    p = Peer()
    p.eng.listen(A, APORT, backlog=1)
    p.feed(pkt(BISS, 0, "S", sport=1))
    p.one()
    sa = cookie_synack(p, sport=2)
    p.feed(pkt(BISS + 1, sa.seq + 2, "A", sport=2))   # wrong cookie
    assert p.one().flags == "R"
    p.feed(pkt(BISS + 2, sa.seq + 1, "A", sport=2))   # right cookie, other peer ISN
    assert p.one().flags == "R"
    p.now += 140_000 * MS                             # two 68.7 s slots later
    p.feed(pkt(BISS + 1, sa.seq + 1, "A", sport=2))
    assert p.one().flags == "R"
    c = p.eng.counters()
    assert c["syncookies_bad"] == 3 and c["syncookies_ok"] == 0
    p.done()


def test_syn_flood_does_not_stop_an_established_transfer():
    p = Peer(frames=512)
    p.plain_open(backlog=4)
    for port in range(1000, 1500):                    # 500 SYNs from a flood
        p.feed(pkt(BISS, 0, "S", sport=port))
    p.out()
    assert p.eng.counters()["conns"] <= 1 + 1 + 4     # listener, our flow, the backlog
    p.data(b"still here")
    assert p.eng.recv(p.cid, p.now) == b"still here"
    p.done()


def test_connection_table_full_is_counted():
    p = Peer()
    p.eng.listen(A, APORT, backlog=100)
    for port in range(1, 20):
        p.feed(pkt(BISS, 0, "S", sport=port))
    assert len(p.out()) == 15                               # 16 slots, one is the listener
    assert p.eng.counters()["conn_table_full"] == 4
    p.done()


# -- receiving data --------------------------------------------------------------------------

STREAM = bytes(range(256)) * 4


def chunks(data, sizes):
    out, off = [], 0
    for n in sizes:
        out.append((off, data[off:off + n]))
        off += n
    return out


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_order_of_four_segments_gives_the_same_stream(order):
    p = Peer()
    p.plain_open()
    parts = chunks(STREAM, [100, 300, 200, 424])
    for i in order:
        off, data = parts[i]
        p.data(data, seq=p.seq + off)
        for s in p.out():
            assert s.ack <= p.seq + len(STREAM)
    assert p.eng.recv(p.cid, p.now) == STREAM
    info = p.eng.info(p.cid)
    assert info["rcv_nxt"] == (p.seq + len(STREAM)) & 0xFFFFFFFF
    assert info["ooo_frags"] == 0
    p.done()


def test_zero_copy_fragments_reference_the_received_frames():
    p = Peer()
    p.plain_open()
    p.data(b"hello ")
    p.data(b"world", seq=p.seq + 6)
    frags = p.eng.peek(p.cid)
    assert [n for _, n in frags] == [6, 5]
    assert all(p.pool.refcount(a) == 1 for a, _ in frags)   # only the engine holds them
    assert b"".join(p.pool.read(a, n) for a, n in frags) == b"hello world"
    p.eng.consume(p.cid, 3, p.now)
    assert p.pool.read(*p.eng.peek(p.cid)[0]) == b"lo "
    held = p.pool.stats()["held"]
    p.eng.consume(p.cid, 3, p.now)                           # first frame fully consumed
    assert p.pool.stats()["held"] == held - 1
    p.done()


def test_overlapping_retransmissions_are_trimmed_not_duplicated():
    p = Peer()
    p.plain_open()
    base = p.seq
    data = bytes(random.Random(1).randbytes(1000))
    p.data(data[300:500], seq=base + 300)
    p.data(data[400:700], seq=base + 400)     # overlaps the tail of the queued one
    p.data(data[250:350], seq=base + 250)     # overlaps the head
    p.data(data[300:500], seq=base + 300)     # exact duplicate
    p.data(data[200:800], seq=base + 200)     # covers everything queued
    info = p.eng.info(p.cid)
    ooo = info["ooo"]
    for (s1, n1), (s2, _) in zip(ooo, ooo[1:], strict=False):
        assert s1 + n1 <= s2
    assert sum(n for _, n in ooo) == info["ooo_bytes"] == 600
    p.data(data[0:250], seq=base)             # fills the hole, overlaps the queue
    p.data(data[700:1000], seq=base + 700)
    assert p.eng.recv(p.cid, p.now) == data
    p.done()


def test_duplicate_segment_is_acked_but_not_delivered_twice():
    p = Peer()
    p.plain_open()
    p.data(b"abc")
    p.advance(50 * MS)                        # delayed ACK
    assert p.one().ack == p.seq + 3
    p.data(b"abc")                            # the same segment again
    ack = p.one()                             # acknowledged at once
    assert ack.ack == p.seq + 3
    assert p.eng.recv(p.cid, p.now) == b"abc"
    assert p.eng.counters()["dup_segments"] >= 1
    p.done()


def test_out_of_order_segment_gets_immediate_dup_ack_with_sack():
    p = Peer()
    p.passive_open()
    p.data(b"x" * 100, seq=p.seq + 200)
    ack = p.one()
    assert ack.ack == p.seq
    o = opts(ack)
    assert o["SAck"] == (p.seq + 200, p.seq + 300)
    p.data(b"y" * 100, seq=p.seq + 400)
    o = opts(p.one())
    assert o["SAck"][:2] == (p.seq + 400, p.seq + 500)      # the newest block first
    assert o["SAck"][2:] == (p.seq + 200, p.seq + 300)
    p.done()


def test_delayed_ack_every_second_full_segment_or_timer():
    p = Peer()
    p.plain_open()
    mss = p.eng.info(p.cid)["rcv_mss"]
    p.data(b"a" * mss)
    assert p.out() == []                       # first full segment: ACK is delayed
    assert p.eng.deadline() == p.now + 40 * MS
    p.data(b"b" * mss, seq=p.seq + mss)
    assert p.one().ack == p.seq + 2 * mss      # second one: ACK now
    p.data(b"c", seq=p.seq + 2 * mss)
    assert p.out() == []
    p.advance(40 * MS)
    assert p.one().ack == p.seq + 2 * mss + 1
    p.done()


def test_window_shrinks_while_unconsumed_and_update_on_consume():
    p = Peer(rcv_buf=4096, wscale=False)
    p.plain_open()
    for k in range(4):
        p.data(b"z" * 1024, seq=p.seq + 1024 * k)
    p.advance(40 * MS)                    # the delayed ACK for the last one
    acks = p.out()
    # an ACK after 2 * MSS worth (3 segments: 1024 left), then the delayed one (0 left)
    assert [a.window for a in acks] == [1024, 0]
    assert acks[-1].ack == p.seq + 4096 and acks[-1].window == 0
    # beyond the (zero) window: not accepted, answered with an ACK
    p.data(b"!", seq=p.seq + 4096)
    ack = p.one()
    assert ack.ack == p.seq + 4096 and ack.window == 0
    assert p.eng.info(p.cid)["rq_bytes"] == 4096           # acknowledged data is kept
    p.eng.consume(p.cid, 1000, p.now)
    assert p.out() == []                 # 1000 < min(buf/2, mss): no update (receiver SWS)
    p.eng.consume(p.cid, 1048, p.now)
    upd = p.one()
    assert upd.ack == p.seq + 4096 and upd.window == 2048
    p.done()


# -- closing ---------------------------------------------------------------------------------


def test_active_close_through_time_wait():
    p = Peer(msl=2.0)
    p.plain_open()
    p.eng.close(p.cid, p.now)
    fin = p.one()
    assert fin.flags == "FA" and fin.seq == p.a_seq
    assert p.eng.state(p.cid) == "FIN-WAIT-1"
    p.send(ack=p.a_seq + 1)
    assert p.eng.state(p.cid) == "FIN-WAIT-2"
    p.send(flags="FA", ack=p.a_seq + 1)
    ack = p.one()
    assert ack.ack == p.seq + 1
    assert p.eng.state(p.cid) == "TIME-WAIT"
    p.advance(3999 * MS)
    assert p.eng.state(p.cid) == "TIME-WAIT"
    # a retransmitted FIN in TIME-WAIT is acknowledged and restarts 2*MSL
    p.send(flags="FA", ack=p.a_seq + 1)
    assert p.one().ack == p.seq + 1
    p.advance(3999 * MS)
    assert p.eng.exists(p.cid)
    p.advance(2 * MS)
    assert not p.eng.exists(p.cid)            # closed and released: the slot is free
    p.done()


def test_passive_close_close_wait_last_ack():
    p = Peer()
    p.plain_open()
    p.data(b"bye", flags="FPA")
    assert p.one().ack == p.seq + 4            # data + FIN acknowledged at once
    assert p.eng.state(p.cid) == "CLOSE-WAIT"
    evs = dict(p.eng.events())
    assert {"readable", "peer_closed"} <= evs[p.cid]
    assert p.eng.recv(p.cid, p.now) == b"bye"
    p.eng.send(p.cid, b"ok", p.now)
    assert payload(p.one()) == b"ok"
    p.eng.shutdown(p.cid, p.now)
    fin = p.one()
    assert fin.flags == "FA" and fin.seq == p.a_seq + 2
    assert p.eng.state(p.cid) == "LAST-ACK"
    p.seq += 4
    p.send(ack=p.a_seq + 3)
    assert p.eng.state(p.cid) == "CLOSED"
    assert "closed" in dict(p.eng.events())[p.cid]
    p.done()


def test_new_syn_reopens_a_connection_in_time_wait():
    p = Peer(msl=30.0)
    p.plain_open()
    old = p.cid
    p.eng.shutdown(old, p.now)
    fin = p.one()
    p.send(flags="FA", ack=fin.seq + 1)
    p.one()
    assert p.eng.state(old) == "TIME-WAIT"
    p.eng.close(old, p.now)
    p.feed(pkt(p.seq - 100, 0, "S"))             # an old-looking SYN: challenge ACK only
    assert p.one().flags == "A" and p.eng.state(old) == "TIME-WAIT"
    p.feed(pkt(p.seq + 100_000, 0, "S", options=[("MSS", 1460)]))   # a new incarnation
    synack = p.one()
    assert synack.flags == "SA" and synack.ack == p.seq + 100_001
    assert p.eng.counters()["conns"] == 2         # the listener and the new half-open one
    assert p.eng.transition_counts()[("TIME-WAIT", "CLOSED")] == 1
    p.done()


def test_simultaneous_close_through_closing():
    p = Peer(msl=1.0)
    p.plain_open()
    p.eng.shutdown(p.cid, p.now)
    fin = p.one()
    p.send(flags="FA", ack=p.a_seq)           # B's FIN crosses ours
    assert p.one().ack == p.seq + 1
    assert p.eng.state(p.cid) == "CLOSING"
    p.send(seq=p.seq + 1, ack=fin.seq + 1)
    assert p.eng.state(p.cid) == "TIME-WAIT"
    p.advance(2000 * MS)
    assert p.eng.state(p.cid) == "CLOSED"
    assert ("CLOSING", "TIME-WAIT") in p.eng.transition_counts()
    p.done()


def test_close_with_unread_data_resets():
    p = Peer()
    p.plain_open()
    p.data(b"unread")
    p.out()
    p.eng.close(p.cid, p.now)
    rst = p.one()
    assert rst.flags == "R" and rst.seq == p.a_seq       # RFC 1122 4.2.2.13
    assert not p.eng.exists(p.cid)
    p.done()


def test_data_after_close_resets():
    p = Peer()
    p.plain_open()
    p.eng.close(p.cid, p.now)
    fin = p.one()
    assert fin.flags == "FA"
    p.data(b"late", ack=fin.seq + 1)              # the peer still sends
    rst = p.one()
    assert rst.flags == "R" and rst.seq == fin.seq + 1
    assert not p.eng.exists(p.cid)
    p.done()


def test_out_of_order_fin_waits_for_the_data():
    p = Peer()
    p.plain_open()
    p.data(b"late", seq=p.seq + 3, flags="FA")
    assert p.one().ack == p.seq                   # duplicate ACK for the gap
    assert p.eng.state(p.cid) == "ESTABLISHED"
    p.data(b"abc")
    assert p.eng.state(p.cid) == "CLOSE-WAIT"
    assert p.one().ack == p.seq + 8
    assert p.eng.recv(p.cid, p.now) == b"abclate"
    p.done()


def test_out_of_order_queue_holds_a_whole_window():
    """Everything after one lost segment, up to the advertised window, waits in the OOO
    queue (a receiver that drops it would make the sender resend the whole window)."""
    p = Peer(frames=1024)
    p.passive_open(options=(("MSS", 1460), ("SAckOK", b""), ("WScale", 7)))
    mss = 1460
    window = p.eng.info(p.cid)["rcv_wnd"]
    n = window // mss
    chunks = [bytes([i % 251]) * mss for i in range(n)]
    for i in range(1, n):
        p.data(chunks[i], seq=p.seq + i * mss)
    p.out()
    assert p.eng.counters()["ooo_full"] == 0
    assert p.eng.info(p.cid)["ooo_frags"] == n - 1
    p.data(chunks[0])
    assert p.out()[-1].ack == p.seq + n * mss
    assert p.eng.recv(p.cid, p.now) == b"".join(chunks)
    p.seq += n * mss
    p.done()


def test_receive_queues_hold_at_most_half_the_pool_and_in_order_data_comes_first():
    """Windows promise more than the pool holds once several are open. Receive queues
    stop at half the pool (less the fill ring's floor): data past that is dropped and
    counted (the peer resends it), except that in-order data pushes out out-of-order data
    queued beyond it, or holes would hold the budget their own filling needs."""
    mss = 1460
    p = Peer(frames=128)                              # budget: 128 // 2 - 128 // 16 = 56
    p.passive_open(options=(("MSS", mss), ("SAckOK", b""), ("WScale", 7)))
    a = [bytes([i]) * mss for i in range(45)]
    for i in range(1, 45):                            # 44 segments after a hole
        p.data(a[i], seq=p.seq + i * mss)
    p.out()
    assert p.eng.info(p.cid)["ooo_frags"] == 44
    # a second connection, whose SYN-ACK offered 64 KB as every SYN-ACK does
    p.eng.segments()
    p.feed(pkt(7000, 0, "S", 65535, [("MSS", mss)], sport=BPORT + 1))
    synack = tcp_of(p.eng.segments()[0])
    p.feed(pkt(7001, synack.seq + 1, "A", sport=BPORT + 1))
    b = p.eng.accept(p.lid)
    for i in range(13):                               # 12 fit the budget, the 13th not
        p.feed(pkt(7001 + i * mss, synack.seq + 1, "PA", payload=b"b" * mss, sport=BPORT + 1))
    assert p.eng.info(b)["rq_frags"] == 12
    assert p.eng.counters()["pool_drops"] == 1
    # the first connection's hole is filled: its farthest out-of-order segment makes room
    p.data(a[0])
    c = p.eng.counters()
    assert c["ooo_pruned"] == 1 and c["pool_drops"] == 1
    assert p.eng.recv(p.cid, p.now) == b"".join(a[:44])
    assert p.eng.info(p.cid)["ooo_frags"] == 0
    p.eng.segments()
    p.done()


def test_out_of_order_queue_full_is_counted():
    p = Peer(frames=1024)
    p.passive_open(options=(("MSS", 1460), ("SAckOK", b""), ("WScale", 7)))
    for i in range(300):                              # tiny segments, each its own hole
        p.data(b"x", seq=p.seq + 2 + 2 * i)
    p.out()
    c = p.eng.counters()
    assert c["ooo_full"] == 300 - p.eng.info(p.cid)["ooo_frags"] > 0
    p.done()


# -- RST and challenge ACKs (RFC 5961) -------------------------------------------------------


def test_rst_exact_sequence_resets():
    p = Peer()
    p.plain_open()
    p.send(flags="R")
    assert (p.cid, {"reset"}) in p.eng.events()
    assert p.eng.state(p.cid) == "CLOSED"
    p.done()


def test_rst_in_window_not_exact_gets_challenge_ack():
    p = Peer()
    p.plain_open()
    p.send(flags="R", seq=p.seq + 100)
    ack = p.one()
    assert ack.flags == "A" and ack.ack == p.seq and ack.seq == p.a_seq
    assert p.eng.state(p.cid) == "ESTABLISHED"
    assert p.eng.counters()["challenge_acks"] == 1
    p.done()


def test_rst_out_of_window_is_dropped_silently():
    p = Peer()
    p.plain_open()
    p.send(flags="R", seq=p.seq + 10_000_000)
    p.send(flags="R", seq=p.seq - 5)
    assert p.out() == []
    assert p.eng.state(p.cid) == "ESTABLISHED"
    p.done()


def test_reset_keeps_acknowledged_bytes_readable():
    p = Peer()
    p.plain_open()
    p.data(b"acked")
    p.send(flags="R", seq=p.seq + 5)
    assert "reset" in dict(p.eng.events())[p.cid]
    assert p.eng.recv(p.cid, p.now) == b"acked"    # never drop acknowledged data
    p.done()


def test_rst_in_time_wait_is_ignored():
    p = Peer(msl=1.0)
    p.plain_open()
    p.eng.shutdown(p.cid, p.now)
    p.one()
    p.send(flags="FA", ack=p.a_seq + 1)
    p.one()
    assert p.eng.state(p.cid) == "TIME-WAIT"
    p.send(flags="R", seq=p.seq + 1)               # RFC 1337: no assassination
    assert p.eng.state(p.cid) == "TIME-WAIT"
    p.advance(2000 * MS)
    assert p.eng.state(p.cid) == "CLOSED"
    p.done()


def test_syn_in_established_gets_challenge_ack():
    p = Peer()
    p.plain_open()
    p.send(flags="S", seq=p.seq + 5000)
    ack = p.one()
    assert ack.flags == "A" and ack.ack == p.seq
    assert p.eng.state(p.cid) == "ESTABLISHED"
    assert p.eng.counters()["challenge_acks"] == 1
    p.done()


def test_ack_of_unsent_data_is_answered_and_dropped():
    p = Peer()
    p.plain_open()
    p.data(b"data", ack=p.a_seq + 5000)
    assert p.one().ack == p.seq                   # data not taken
    assert p.eng.info(p.cid)["rq_bytes"] == 0
    p.done()


# -- sending, retransmission, congestion control ---------------------------------------------


def open_sender(**kw):
    p = Peer(frames=512, **kw)
    p.plain_open()
    return p


def test_rto_doubles_and_retransmits_identical_bytes():
    p = open_sender(rto_init=1.0, rto_min=1.0, max_retries=3)
    data = bytes(random.Random(2).randbytes(500))
    p.eng.send(p.cid, data, p.now)
    first = p.one()
    assert payload(first) == data
    gaps, last = [], p.now
    for _ in range(3):
        p.until_deadline()
        again = p.one()
        assert again.seq == first.seq and payload(again) == data
        gaps.append(p.now - last)
        last = p.now
    assert gaps == [1000 * MS, 2000 * MS, 4000 * MS]
    assert p.eng.info(p.cid)["retransmits"] == 3
    p.until_deadline()
    assert (p.cid, {"timed_out"}) in [(c, e - {"writable", "connected"})
                                      for c, e in p.eng.events()]
    p.done()


def test_deadline_hint_is_never_late_and_early_wakeups_are_cheap():
    p = open_sender(rto_init=1.0, rto_min=1.0)
    p.eng.send(p.cid, b"x", p.now)
    p.one()
    assert p.eng.deadline_hint() == p.eng.deadline() == p.now + 1000 * MS
    p.send(ack=p.a_seq + 1)                       # the retransmission timer is cancelled
    assert p.eng.deadline() is None
    assert p.eng.deadline_hint() == p.now + 1000 * MS   # stale: early, not late
    p.eng.on_timer_(p.now + 500 * MS)             # before the hint: nothing happens
    assert p.eng.deadline_hint() == p.now + 1000 * MS
    p.eng.on_timer_(p.now + 1000 * MS)            # the early wakeup finds nothing ...
    assert p.out() == []
    assert p.eng.deadline_hint() is None          # ... and makes the hint exact
    p.done()


def test_ack_stops_timer_and_rtt_sets_rto():
    p = open_sender(rto_min=0.2)
    p.eng.send(p.cid, b"q" * 100, p.now)
    p.one()
    p.now += 50 * MS
    p.send(ack=p.a_seq + 100)
    i = p.eng.info(p.cid)
    # the handshake gave a first sample of 0 (SYN,ACK answered at once), so RFC 6298 2.3:
    # SRTT = 7/8 * 0 + 1/8 * 50 ms; RTO = SRTT + 4 * RTTVAR = 6.25 + 50 -> rto_min 200 ms
    assert i["srtt_ns"] == 50 * MS // 8 and i["rto_ns"] == 200 * MS
    assert i["timers"]["rtx"] == 0 and i["sq_bytes"] == 0
    p.done()


def test_send_queue_limit_is_counted():
    p = open_sender(snd_buf=3000)
    assert p.eng.send(p.cid, b"x" * 5000, p.now) == 3000
    assert p.eng.counters()["sq_full"] == 1
    p.done()


def app_frame(p, data, headroom=128):
    """A frame the app filled for send_frame: its bytes at `headroom`, room for the headers
    in front of them."""
    addr = p.pool.alloc() + headroom
    p.pool.write(addr, data)
    return addr


def test_frames_sent_by_reference_go_out_of_the_frame_and_free_it_when_acked():
    p = open_sender()
    mss = p.eng.info(p.cid)["snd_mss"]
    data = random.Random(3).randbytes(3 * mss)
    frames = [app_frame(p, data[i:i + mss]) for i in range(0, len(data), mss)]
    free = p.pool.stats()["free"]
    for a in frames:
        assert p.eng.send_frame(p.cid, a, mss, p.now) == mss
    assert p.pool.stats()["free"] == free               # no frame of its own: no copy
    segs = [tcp_of(raw) for raw in p.eng.segments(inplace=True)]
    assert b"".join(payload(s) for s in segs) == data
    assert all(p.pool.refcount(a) == 1 for a in frames)  # sent: the send queue's only
    c = p.eng.counters()
    assert c["send_inplace"] == 3 and c["send_copied"] == 0 and c["splice_inplace"] == 0
    p.send(ack=p.a_seq + len(data))
    assert p.pool.stats()["free"] == free + 3            # acknowledged: free again
    p.done()


def test_a_frame_retransmitted_while_on_the_tx_ring_is_copied_then_sent_in_place_again():
    p = open_sender(rto_init=1.0, rto_min=1.0)
    data = random.Random(4).randbytes(1200)
    a = app_frame(p, data)
    assert p.eng.send_frame(p.cid, a, len(data), p.now) == len(data)
    on_tx = []
    first = tcp_of(p.eng.segments(inplace=True, on_tx=on_tx)[0])
    assert p.pool.state_of(a) == "tx"
    p.until_deadline()              # the RTO fires before the TX ring gave the frame back
    again = [tcp_of(raw) for raw in p.eng.segments(inplace=True, on_tx=on_tx)]
    assert [(s.seq, payload(s)) for s in again] == [(first.seq, data)]
    c = p.eng.counters()
    assert c["send_inplace"] == 1 and c["send_copied"] == 1 and len(on_tx) == 1
    p.pool._complete(on_tx.pop())
    p.until_deadline()              # only the queue holds it now: in place, same bytes
    third = [tcp_of(raw) for raw in p.eng.segments(inplace=True, on_tx=on_tx)]
    assert [(s.seq, payload(s)) for s in third] == [(first.seq, data)]
    assert p.eng.counters()["send_inplace"] == 2
    p.pool._complete(on_tx.pop())
    p.send(ack=p.a_seq + len(data))
    assert p.pool.refcount(a) == 0
    p.done()


def test_frames_not_taken_by_reference_stay_the_callers():
    p = open_sender(snd_buf=3000)
    mss = p.eng.info(p.cid)["snd_mss"]
    big = app_frame(p, bytes(mss + 1))
    assert p.eng.send_frame(p.cid, big, mss + 1, p.now) == 0    # more than a segment
    small = app_frame(p, bytes(1024))
    assert p.eng.send_frame(p.cid, small, 1024, p.now) == 0     # half a frame: copy it
    ok = [app_frame(p, bytes(1100)) for _ in range(2)]
    assert [p.eng.send_frame(p.cid, a, 1100, p.now) for a in ok] == [1100] * 2
    late = app_frame(p, bytes(1100))
    assert p.eng.send_frame(p.cid, late, 1100, p.now) == 0     # snd_buf is full
    left = [big, small, late]
    assert all(p.pool.refcount(a) == 1 for a in left)           # still the caller's
    p.eng.shutdown(p.cid, p.now)
    with pytest.raises(OSError):
        p.eng.send_frame(p.cid, late, 1100, p.now)
    for a in left:
        p.pool.free(a)
    p.done()


def test_a_frame_without_room_for_headers_is_sent_by_copy():
    p = open_sender()
    data = b"tight" * 220
    a = app_frame(p, data, headroom=8)
    assert p.eng.send_frame(p.cid, a, len(data), p.now) == len(data)
    assert [payload(tcp_of(raw)) for raw in p.eng.segments(inplace=True)] == [data]
    c = p.eng.counters()
    assert c["send_inplace"] == 0 and c["send_copied"] == 1
    p.done()


def test_newreno_fast_retransmit_after_three_dup_acks():
    p = open_sender()
    mss = p.eng.info(p.cid)["snd_mss"]
    p.eng.send(p.cid, bytes(4 * mss), p.now)
    segs = p.out()
    assert p.eng.info(p.cid)["cwnd"] == 4380      # RFC 5681 IW: min(4*SMSS, max(2*SMSS, 4380))
    assert [len(payload(s)) for s in segs] == [mss] * 3
    p.send(ack=p.a_seq + mss)                     # first acked, second "lost"
    p.eng.send(p.cid, bytes(6 * mss), p.now)
    p.out()
    before = p.eng.info(p.cid)
    for _ in range(2):
        p.send(ack=p.a_seq + mss)
        assert p.out() == []
    p.send(ack=p.a_seq + mss)                     # third duplicate
    rtx = p.out()
    assert rtx[0].seq == p.a_seq + mss and len(payload(rtx[0])) == mss
    i = p.eng.info(p.cid)
    flight = before["snd_max"] - before["snd_una"]
    assert i["in_recovery"] and i["ssthresh"] == max(flight // 2, 2 * mss)
    assert i["cwnd"] == i["ssthresh"] + 3 * mss
    assert p.eng.counters()["fast_retransmits"] == 1
    p.send(ack=i["snd_max"])                      # full acknowledgment
    i = p.eng.info(p.cid)
    assert not i["in_recovery"] and i["cwnd"] <= i["ssthresh"]
    p.done()


def test_sack_recovery_retransmits_every_hole_in_one_round():
    p = Peer(frames=512)
    p.passive_open(options=(("MSS", 1460), ("SAckOK", b"")))
    mss = p.eng.info(p.cid)["snd_mss"]
    # grow cwnd in slow start: ACK every segment on its own
    p.eng.send(p.cid, bytes(200 * mss), p.now)
    acked = p.a_seq
    while p.eng.info(p.cid)["cwnd"] < 12 * mss:
        for seg in p.out():
            acked = seg.seq + len(payload(seg))
            p.send(ack=acked)
    p.out()
    una = acked
    i = p.eng.info(p.cid)
    assert i["snd_una"] == una and i["snd_max"] - una >= 10 * mss
    s = [una + k * mss for k in range(11)]
    # S0 and S2 are lost; S1, then S3.. arrive and are SACKed
    p.send(ack=una, options=[("SAck", (s[1], s[2]))])
    assert p.out() == []
    p.send(ack=una, options=[("SAck", (s[3], s[5], s[1], s[2]))])
    rtx = {(seg.seq, len(payload(seg))) for seg in p.out()}
    # 3 MSS SACKed above S0: IsLost(S0) before a third duplicate ACK (RFC 6675)
    assert (s[0], mss) in rtx
    p.send(ack=una, options=[("SAck", (s[3], s[7], s[1], s[2]))])
    p.send(ack=una, options=[("SAck", (s[3], s[9], s[1], s[2]))])
    rtx |= {(seg.seq, len(payload(seg))) for seg in p.out()}
    assert (s[2], mss) in rtx                     # the second hole, same round
    assert all(seq not in (s[1], s[3], s[4]) for seq, _ in rtx)   # SACKed: not resent
    i = p.eng.info(p.cid)
    assert i["in_recovery"]
    assert p.eng.counters()["sack_retransmits"] >= 1
    p.send(ack=i["snd_max"])                      # everything arrived
    after = p.eng.info(p.cid)
    assert not after["in_recovery"] and after["snd_una"] == i["snd_max"]
    assert after["cwnd"] <= after["ssthresh"]
    p.done()


def test_data_probing_our_zero_window_is_not_a_duplicate_ack():
    p = Peer(frames=512, rcv_buf=2048, wscale=False)
    p.plain_open()
    p.data(b"z" * 1024)
    p.data(b"z" * 1024, seq=p.seq + 1024)
    p.advance(40 * MS)
    assert p.out()[-1].window == 0                 # our window is closed
    p.seq += 2048
    mss = p.eng.info(p.cid)["snd_mss"]
    p.eng.send(p.cid, bytes(3 * mss), p.now)
    assert len(p.out()) == 3                       # our data is in flight
    for _ in range(4):                             # the peer probes with one byte
        p.data(b"?", ack=p.a_seq)
        assert p.one().ack == p.seq                # answered, the byte not taken
    assert p.eng.counters()["fast_retransmits"] == 0
    assert p.eng.info(p.cid)["in_recovery"] is False
    p.done()


def test_zero_window_persist_probe_then_resume():
    p = open_sender(rto_init=1.0, rto_min=1.0)
    p.send(win=0)
    p.eng.send(p.cid, b"w" * 100, p.now)
    assert p.out() == []                          # nothing may go into a zero window
    probe_at = p.eng.deadline()
    assert probe_at == p.now + 1000 * MS
    p.until_deadline()
    probe = p.one()
    assert probe.seq == p.a_seq - 1 and payload(probe) == b""
    assert p.eng.deadline() == p.now + 2000 * MS  # backed off
    p.send(win=1000)                              # the answer opens the window
    data = p.one()
    assert payload(data) == b"w" * 100 and data.seq == p.a_seq
    assert p.eng.counters()["persist_probes"] == 1
    p.done()


def test_cubic_follows_rfc9438_window_curve():
    mss, w0, rtt = 1000, 100.0, 0.1
    r = cc_trace("cubic", mss, w0, rtt, 80)
    beta, c = 0.7, 0.4
    assert r["cwnd_after_loss"] == pytest.approx(w0 * beta, abs=1)
    k = (w0 * (1 - beta) / c) ** (1 / 3)
    assert r["w_max"] == pytest.approx(w0) and r["k"] == pytest.approx(k, rel=1e-6)

    def w_cubic(t):
        return c * (t - k) ** 3 + w0

    # RFC 9438 4.3: the Reno-friendly estimate grows alpha segments per RTT, alpha
    # 3(1-beta)/(1+beta) below W_max and 1 above; cwnd follows max(W_cubic, W_est)
    w_est = w0 * beta
    for t, cwnd in r["trace"]:
        w_est += 1.0 if w_est >= w0 else 3 * (1 - beta) / (1 + beta)
        assert cwnd <= max(w_cubic(t + rtt), w_est) + 1.5
        if t > 1.0:
            assert cwnd >= max(w_cubic(t), w_est) - 2.5
    plateau = [cw for t, cw in r["trace"] if abs(t - k) < 0.5]
    assert all(abs(cw - w0) < 3 for cw in plateau)
    assert r["trace"][-1][1] > w0 + 10            # convex growth beyond W_max


def test_congestion_control_is_chosen_per_connection():
    p = open_sender(cc="newreno")
    assert p.eng.info(p.cid)["cc"] == "newreno"
    before = p.eng.info(p.cid)["cwnd"]
    p.eng.set_cc(p.cid, "cubic")
    i = p.eng.info(p.cid)
    assert i["cc"] == "cubic" and i["cwnd"] == before     # the window carries over
    with pytest.raises(ValueError):
        p.eng.set_cc(p.cid, "bbr")
    with pytest.raises(ValueError):
        TcpEngine(p.pool, 4, cc="vegas")
    p.done()


def test_newreno_avoidance_adds_one_mss_per_rtt():
    r = cc_trace("newreno", 1000, 20, 0.1, 10, loss=False)
    assert [round(cw) for _, cw in r["trace"]] == list(range(21, 31))


def test_nagle_holds_small_writes_while_data_is_unacknowledged():
    p = open_sender()
    p.eng.send(p.cid, b"a", p.now)
    assert payload(p.one()) == b"a"               # nothing outstanding: goes at once
    p.eng.send(p.cid, b"b", p.now)
    p.eng.send(p.cid, b"c", p.now)
    assert p.out() == []                          # held: "a" is not acknowledged yet
    p.send(ack=p.a_seq + 1)
    assert payload(p.one()) == b"bc"              # coalesced once the ACK came
    p.eng.set_nodelay(p.cid, True, p.now)
    p.eng.send(p.cid, b"d", p.now)
    assert payload(p.one()) == b"d"               # TCP_NODELAY: no waiting
    p.done()


def test_sender_waits_for_a_useful_window_instead_of_sending_slivers():
    p = open_sender(nodelay=True)
    mss = p.eng.info(p.cid)["snd_mss"]
    p.send(win=3 * mss + 100)                     # the largest window seen: 3 MSS + 100
    p.eng.send(p.cid, bytes(10 * mss), p.now)
    sizes = [len(payload(s)) for s in p.out()]
    assert sizes == [mss] * 3                     # the 100-byte sliver waits (RFC 9293 3.8.6.2.1)
    p.send(ack=p.a_seq + 3 * mss, win=3 * mss + 100)
    assert [len(payload(s)) for s in p.out()] == [mss] * 3
    p.done()


def test_set_nodelay_flushes_what_nagle_held():
    p = open_sender()
    p.eng.send(p.cid, b"x", p.now)
    p.one()
    p.eng.send(p.cid, b"y", p.now)
    assert p.out() == []
    p.eng.set_nodelay(p.cid, True, p.now)
    assert payload(p.one()) == b"y"
    p.done()


def test_keepalive_probes_an_idle_peer_then_times_out():
    p = open_sender()
    p.eng.set_keepalive(p.cid, idle=10.0, interval=2.0, count=2, now=p.now)
    assert p.eng.deadline() == p.now + 10_000 * MS
    p.until_deadline()
    probe = p.one()
    assert probe.seq == p.a_seq - 1 and payload(probe) == b""
    p.send()                                      # the peer answers: idle again
    assert p.eng.deadline() == p.now + 10_000 * MS
    p.until_deadline()
    p.one()
    p.until_deadline()                            # interval: second probe
    p.one()
    p.until_deadline()                            # count reached without an answer
    assert "timed_out" in dict(p.eng.events())[p.cid]
    assert p.eng.state(p.cid) == "CLOSED"
    assert p.eng.counters()["keepalive_probes"] == 3
    p.done()


def test_challenge_acks_are_rate_limited():
    p = Peer(challenge_ack_limit=3)
    p.plain_open()
    for k in range(5):
        p.send(flags="R", seq=p.seq + 10 + k)
    assert len(p.out()) == 3
    c = p.eng.counters()
    assert c["challenge_acks"] == 3 and c["challenge_acks_limited"] == 2
    p.advance(1000 * MS)                          # a new second, a new budget
    p.send(flags="R", seq=p.seq + 10)
    assert len(p.out()) == 1
    p.done()


def test_flow_table_survives_connection_churn():
    p = Peer()
    for k in range(500):
        cid = p.eng.connect(A, 0, B, BPORT, p.now)
        syn = p.one()
        p.feed(pkt(BISS, syn.seq + 1, "SA", sport=BPORT, dport=syn.sport))
        p.one()
        assert p.eng.state(cid) == "ESTABLISHED", k
        p.eng.abort(cid, p.now)
        p.eng.close(cid, p.now)
        assert p.one().flags == "R"
        p.now += MS
    assert p.eng.counters()["conns"] == 0
    # a segment for a flow that no longer exists finds nothing and gets a RST
    p.feed(pkt(BISS + 1, 0, "A", sport=BPORT, dport=61000))
    assert p.one().flags == "R"
    p.done()


def test_fin_is_retransmitted_on_timeout():
    p = open_sender(rto_init=1.0, rto_min=1.0)
    p.eng.send(p.cid, b"last", p.now)
    p.eng.close(p.cid, p.now)
    segs = p.out()
    assert payload(segs[0]) == b"last" and "F" in str(segs[-1].flags)
    p.send(ack=p.a_seq + 4)                        # data acked, the FIN lost
    assert p.eng.state(p.cid) == "FIN-WAIT-1"
    p.until_deadline()
    fin = p.one()
    assert fin.flags == "FA" and fin.seq == p.a_seq + 4 and payload(fin) == b""
    p.send(ack=p.a_seq + 5)
    assert p.eng.state(p.cid) == "FIN-WAIT-2"
    p.done()


def test_data_queued_in_syn_sent_goes_after_the_handshake():
    p = Peer(timestamps=False)
    cid = p.eng.connect(A, 5555, B, BPORT, p.now)
    syn = p.one()
    assert p.eng.send(cid, b"early", p.now) == 5
    assert p.out() == []                           # nothing but the SYN before ESTABLISHED
    p.feed(pkt(BISS, syn.seq + 1, "SA", options=[("MSS", 1460)], sport=BPORT, dport=5555))
    segs = p.out()
    assert [payload(s) for s in segs if payload(s)] == [b"early"]
    assert all(s.ack == BISS + 1 for s in segs)
    p.done()


def test_ack_below_the_window_gets_challenge_ack():
    p = open_sender()
    p.eng.send(p.cid, b"x" * 100, p.now)
    p.one()
    p.send(ack=p.a_seq + 100)
    # RFC 5961 5.2: SEG.ACK < SND.UNA - MAX.SND.WND is answered and dropped
    p.data(b"data", ack=p.a_seq - 70_000)
    ack = p.one()
    assert ack.ack == p.seq                        # the data was not taken
    assert p.eng.counters()["challenge_acks"] == 1
    p.done()


def test_abort_sends_rst_from_snd_nxt():
    p = open_sender()
    p.eng.send(p.cid, b"x" * 10, p.now)
    p.one()
    p.eng.abort(p.cid, p.now)
    rst = p.one()
    assert rst.flags == "R" and rst.seq == p.a_seq + 10
    assert p.eng.state(p.cid) == "CLOSED"
    p.done()


def test_accept_queue_full_drops_the_final_ack():
    p = Peer(syncookies=False)
    lid = p.eng.listen(A, APORT, backlog=1)
    p.feed(pkt(BISS, 0, "S", sport=1))
    sa1 = p.one()
    p.feed(pkt(BISS + 1, sa1.seq + 1, "A", sport=1))
    assert p.out() == []                           # queued for accept()
    p.feed(pkt(BISS, 0, "S", sport=2))
    sa2 = p.one()
    p.feed(pkt(BISS + 1, sa2.seq + 1, "A", sport=2))
    assert p.eng.counters()["accept_queue_full"] == 1
    first = p.eng.accept(lid)
    assert p.eng.info(first)["state"] == "ESTABLISHED"
    assert p.eng.accept(lid) is None               # the second is still half-open
    p.feed(pkt(BISS + 1, sa2.seq + 1, "A", sport=2))   # its ACK again, now with room
    assert p.eng.accept(lid) is not None
    p.done()


def test_closing_a_listener_aborts_children_not_yet_accepted():
    p = Peer()
    lid = p.eng.listen(A, APORT)
    p.feed(pkt(BISS, 0, "S", sport=1))
    sa = p.one()
    p.feed(pkt(BISS + 1, sa.seq + 1, "A", sport=1))
    p.feed(pkt(BISS, 0, "S", sport=2))
    p.one()
    p.eng.close(lid, p.now)
    rsts = p.out()
    assert sorted(s.dport for s in rsts) == [1, 2] and all("R" in str(s.flags) for s in rsts)
    assert p.eng.counters()["conns"] == 0
    p.done()


def shuttle(a, b, now):
    """Deliver every pending segment both ways until both engines are quiet."""
    for _ in range(20):
        sa, sb = a.segments(), b.segments()
        if not sa and not sb:
            return
        for s in sa:
            b.feed(s, now)
        for s in sb:
            a.feed(s, now)
    raise AssertionError("no quiescence")


def test_two_engines_simultaneous_open_and_simultaneous_close():
    pools = FramePool(64), FramePool(64)
    a = TcpEngine(pools[0], 4, seed=1, msl=1.0)
    b = TcpEngine(pools[1], 4, seed=2, msl=1.0)
    now = T0
    ca = a.connect(A, 7000, B, 7001, now)
    cb = b.connect(B, 7001, A, 7000, now)
    sa, sb = a.segments(), b.segments()            # both SYNs cross on the wire
    for s in sa:
        b.feed(s, now)
    for s in sb:
        a.feed(s, now)
    assert a.state(ca) == b.state(cb) == "SYN-RECEIVED"
    shuttle(a, b, now)
    assert a.state(ca) == b.state(cb) == "ESTABLISHED"
    assert a.info(ca)["ts_ok"] and a.info(ca)["sack_ok"] and a.info(ca)["ws_ok"]
    a.send(ca, b"ping", now)
    shuttle(a, b, now)
    assert b.recv(cb, now) == b"ping"
    a.shutdown(ca, now)
    b.shutdown(cb, now)
    sa, sb = a.segments(), b.segments()            # both FINs cross
    for s in sa:
        b.feed(s, now)
    for s in sb:
        a.feed(s, now)
    assert a.state(ca) == b.state(cb) == "CLOSING"
    shuttle(a, b, now)
    assert a.state(ca) == b.state(cb) == "TIME-WAIT"
    now += 2 * 1000 * MS
    a.on_timer_(now)
    b.on_timer_(now)
    assert a.state(ca) == b.state(cb) == "CLOSED"
    for e, cid in ((a, ca), (b, cb)):
        e.close(cid, now)
        assert not e.exists(cid)
        assert e.counters()["bad_transitions"] == 0
    for pool in pools:
        pool.check_frames(expect_idle=True)


# -- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize("mss", [0, 1, 12])
def test_tiny_peer_mss_is_raised_to_a_floor(mss):
    p = Peer()
    p.passive_open(options=(("MSS", mss), ("Timestamp", (5, 0))))
    assert p.eng.info(p.cid)["snd_mss"] == 64
    p.eng.send(p.cid, bytes(200), p.now)
    assert [len(payload(s)) for s in p.out()] == [64, 64, 64]   # the 8-byte tail: Nagle
    p.done()


def test_bad_checksum_is_dropped_and_counted():
    p = Peer()
    p.plain_open()
    raw = bytearray(pkt(p.seq, p.a_seq, "PA", payload=b"evil"))
    raw[-1] ^= 0xFF
    assert not p.feed(bytes(raw))
    assert p.eng.counters()["bad_checksum"] == 1
    assert p.eng.info(p.cid)["rq_bytes"] == 0 and p.out() == []
    p.done()


@pytest.mark.parametrize("raw_opts", [
    b"\x02\x00\x05\xb4",                 # MSS with length 0
    b"\x08\x01\x00\x00",                 # length 1
    b"\x01\x01\x08\x0a\x00\x00\x00\x01",  # timestamps running past the header
    b"\x01\x01\x01\x05",                 # kind with no room for a length
])
def test_malformed_options_rejected_without_crash(raw_opts):
    p = Peer()
    p.plain_open()
    t = TCP(sport=BPORT, dport=APORT, seq=p.seq, ack=p.a_seq, flags="PA", window=100,
            dataofs=5 + len(raw_opts) // 4)
    raw = with_tcp_csum(bytes(t)[:20] + raw_opts + b"data")
    assert p.feed(raw)            # passes the checksum/offset check ...
    assert p.eng.counters()["bad_options"] == 1   # ... and is dropped for its options
    assert p.eng.info(p.cid)["rq_bytes"] == 0
    p.done()


@pytest.mark.parametrize("dataofs", [0, 4, 15])
def test_bogus_data_offset_rejected(dataofs):
    p = Peer()
    p.plain_open()
    t = TCP(sport=BPORT, dport=APORT, seq=p.seq, ack=p.a_seq, flags="A", dataofs=dataofs)
    raw = bytes(IP(src=B, dst=A) / t)
    assert not p.feed(raw)
    assert p.eng.counters()["bad_offset"] == 1
    p.done()


def test_truncated_packets_are_counted():
    p = Peer()
    raw = pkt(1, 0, "S")
    for n in (0, 10, 20, 30):
        if n:
            assert not p.feed(raw[:n])
    c = p.eng.counters()
    assert c["bad_ip"] + c["bad_len"] == 3
    p.done()


@settings(max_examples=300, deadline=None)
@given(mutations=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 255)), max_size=8),
       flags=st.sampled_from(["A", "PA", "S", "R", "F", "FA", "SA", "RA", "", "FSRPAU"]),
       seq_off=st.integers(-2**31, 2**31 - 1), ack_off=st.integers(-2**31, 2**31 - 1),
       data=st.binary(max_size=200), state=st.sampled_from(["est", "listen", "syn_sent"]))
def test_hostile_segments_never_crash_or_leak(mutations, flags, seq_off, ack_off, data,
                                               state):
    """Random headers, flags, sequence/ack numbers and option bytes, with valid
    checksums: the engine counts or ignores them, and gives every frame back."""
    p = Peer()
    if state == "est":
        p.passive_open()
    elif state == "listen":
        p.eng.listen(A, APORT)
        p.a_seq = 0
    else:
        cid = p.eng.connect(A, APORT, B, BPORT, p.now)
        p.a_seq = p.one().seq + 1
        p.cid = cid
    opts_bytes = bytearray(b"\x01" * 40)
    hdr = bytearray(bytes(TCP(sport=BPORT, dport=APORT, seq=(p.seq + seq_off) % 2**32,
                              ack=(p.a_seq + ack_off) % 2**32, flags=flags, dataofs=15,
                              window=1000))[:20] + opts_bytes)
    for pos, val in mutations:
        hdr[20 + pos % 40 if pos >= 12 else pos] = val    # options, or ports/seq/ack/flags
    hdr[12] = (hdr[12] & 0x0F) | (min(15, max(5, hdr[12] >> 4)) << 4)
    p.feed(with_tcp_csum(bytes(hdr) + data))
    p.out()
    p.advance(100_000 * MS)                       # let any timer run
    p.out()
    p.done()


# -- two engines back to back over a lossy link ----------------------------------------------


class Link:
    """A and B joined by an in-memory link that loses, duplicates and reorders packets,
    with a simulated clock: each packet arrives after a delay with random jitter."""

    def __init__(self, rng, loss, dup, jitter, delay=5 * MS, **kw):
        self.rng, self.loss, self.dup, self.jitter, self.delay = rng, loss, dup, jitter, delay
        self.pools = [FramePool(1024), FramePool(1024)]
        self.engs = [TcpEngine(self.pools[0], 8, seed=1, msl=0.5, rto_min=0.05, **kw),
                     TcpEngine(self.pools[1], 8, seed=2, msl=0.5, rto_min=0.05, **kw)]
        self.now = T0
        self.wire = []          # (arrival, n, to_index, packet)
        self.n = 0

    def pump(self):
        for i, e in enumerate(self.engs):
            for s in e.segments():
                if self.rng.random() < self.loss:
                    continue
                for _ in range(2 if self.rng.random() < self.dup else 1):
                    t = self.now + self.delay + int(self.rng.random() * self.jitter)
                    self.n += 1
                    self.wire.append((t, self.n, 1 - i, s))

    def step(self):
        self.pump()
        # the network thread's O(1) hint: possibly early, never late
        nxt = [d for d in (e.deadline_hint() for e in self.engs) if d is not None]
        if self.wire:
            nxt.append(min(self.wire)[0])
        if not nxt:
            return False
        self.now = max(self.now, min(nxt))
        self.wire.sort()
        while self.wire and self.wire[0][0] <= self.now:
            _, _, to, s = self.wire.pop(0)
            self.engs[to].feed(s, self.now)
        for e in self.engs:
            e.on_timer_(self.now)
        self.pump()
        return True


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.1, 0.3]),
       dup=st.sampled_from([0.0, 0.2]), jitter=st.sampled_from([0, 10 * MS]),
       n=st.integers(0, 20_000))
def test_simultaneous_open_and_close_over_a_lossy_link(seed, loss, dup, jitter, n):
    rng = random.Random(seed)
    link = Link(rng, loss, dup, jitter, max_retries=30, syn_retries=30)
    a, b = link.engs
    ca = a.connect(A, 7000, B, 7001, link.now)
    cb = b.connect(B, 7001, A, 7000, link.now)
    d_ab, d_ba = rng.randbytes(n), rng.randbytes(n // 2)
    ends = [(a, ca, d_ab, bytearray(), d_ba), (b, cb, d_ba, bytearray(), d_ab)]
    sent = [0, 0]
    shut = [False, False]
    for _ in range(100_000):
        for k, (e, cid, out, got, _want) in enumerate(ends):
            state = e.state(cid)
            if state in ("ESTABLISHED", "CLOSE-WAIT") and sent[k] < len(out):
                sent[k] += e.send(cid, out[sent[k]:sent[k] + 4096], link.now)
            got += e.recv(cid, link.now)
            if sent[k] == len(out) and not shut[k] and state in ("ESTABLISHED", "CLOSE-WAIT"):
                e.shutdown(cid, link.now)       # both shut down as soon as they can
                shut[k] = True
        if all(e.state(cid) in ("TIME-WAIT", "CLOSED") for e, cid, *_ in ends):
            break
        if not link.step():
            break
    for e, cid, _out, got, want in ends:
        assert bytes(got) == want
        assert e.state(cid) in ("TIME-WAIT", "CLOSED")
        e.close(cid, link.now)
    while link.step():                  # TIME-WAIT runs out
        pass
    for e in link.engs:
        assert e.counters()["conns"] == 0 and e.counters()["bad_transitions"] == 0
    for pool in link.pools:
        pool.check_frames(expect_idle=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.1, 0.3]),
       steps=st.integers(0, 400), who=st.sampled_from(["abort_a", "abort_b", "close_a"]))
def test_abort_or_close_mid_transfer_returns_every_frame(seed, loss, steps, who):
    """Cut a transfer at a random moment (RST, or close with unread data); the other side
    gets the RST or times out; every frame ends back in the pools either way."""
    rng = random.Random(seed)
    link = Link(rng, loss, 0.05, 3 * MS, rcv_buf=16384, max_retries=6, syn_retries=4)
    a, b = link.engs
    lid = b.listen(B, 80)
    ca = a.connect(A, 0, B, 80, link.now)
    cb = None
    data = rng.randbytes(100_000)
    sent = 0
    for k in range(100_000):
        if cb is None:
            cb = b.accept(lid)
        if a.exists(ca) and a.state(ca) == "ESTABLISHED" and sent < len(data):
            sent += a.send(ca, data[sent:sent + 8192], link.now)
        if cb is not None and k % 3 == 0:
            b.recv(cb, link.now, 3000)
        if k == steps:
            if who == "abort_a":
                a.abort(ca, link.now)
            elif who == "abort_b" and cb is not None:
                b.abort(cb, link.now)
            elif who == "close_a":
                a.close(ca, link.now)
        if not link.step() and k > steps:
            break
        a.events()
        b.events()
    for e, cid in ((a, ca), (b, cb)):
        if cid is not None and e.exists(cid):
            assert e.state(cid) in ("CLOSED", "TIME-WAIT", "ESTABLISHED", "FIN-WAIT-2",
                                    "CLOSE-WAIT")
            e.abort(cid, link.now)
            if e.exists(cid):            # a released handle is freed by the abort itself
                e.close(cid, link.now)
    b.close(lid, link.now)
    for e in link.engs:
        e.segments()
        assert e.counters()["conns"] == 0 and e.counters()["bad_transitions"] == 0
    for pool in link.pools:
        pool.check_frames(expect_idle=True)
        assert pool.stats()["bad_ops"] == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.05, 0.2]),
       dup=st.sampled_from([0.0, 0.1]), jitter=st.sampled_from([0, 3 * MS, 20 * MS]),
       n_ab=st.integers(0, 60_000), n_ba=st.integers(0, 30_000),
       cc=st.sampled_from(["newreno", "cubic"]), mss=st.sampled_from([536, 1460]),
       read_max=st.sampled_from([-1, 700]), nodelay=st.booleans(),
       options=st.booleans())
def test_lossy_link_delivers_exact_streams_and_returns_every_frame(
        seed, loss, dup, jitter, n_ab, n_ba, cc, mss, read_max, nodelay, options):
    """read_max 700: a slow reader, so windows close and reopen (persist probes)."""
    rng = random.Random(seed)
    link = Link(rng, loss, dup, jitter, cc=cc, rcv_buf=16384, max_retries=30,
                syn_retries=30, mss=mss, nodelay=nodelay, timestamps=options,
                wscale=options, sack=options)
    a, b = link.engs
    data_ab, data_ba = rng.randbytes(n_ab), rng.randbytes(n_ba)
    lid = b.listen(B, 80)
    ends = [{"e": a, "cid": a.connect(A, 0, B, 80, link.now), "data": data_ab,
             "expect": n_ba},
            {"e": b, "cid": None, "data": data_ba, "expect": n_ab}]
    for d in ends:
        d.update(sent=0, got=bytearray(), shut=False, closed=False)
    idle_mark = -1
    for _ in range(200_000):
        if ends[1]["cid"] is None:
            ends[1]["cid"] = b.accept(lid)
        for d in ends:
            e, cid = d["e"], d["cid"]
            if cid is None or d["closed"]:
                continue
            state = e.state(cid)
            if d["sent"] < len(d["data"]) and state in ("ESTABLISHED", "CLOSE-WAIT"):
                d["sent"] += e.send(cid, d["data"][d["sent"]:d["sent"] + 8192], link.now)
            d["got"] += e.recv(cid, link.now, read_max)
            if d["sent"] == len(d["data"]) and not d["shut"] and state in (
                    "ESTABLISHED", "CLOSE-WAIT"):
                e.shutdown(cid, link.now)       # half close: keep reading
                d["shut"] = True
            if d["shut"] and len(d["got"]) == d["expect"] and e.state(cid) in (
                    "LAST-ACK", "CLOSING", "TIME-WAIT", "CLOSED"):
                e.close(cid, link.now)
                d["closed"] = True
        if all(d["closed"] and not d["e"].exists(d["cid"]) for d in ends):
            break
        progress = sum(len(d["got"]) for d in ends)
        if not link.step() and progress == idle_mark:
            break       # nothing in flight, no timer armed, nothing left to read: stuck
        idle_mark = progress
        a.events()
        b.events()
    assert bytes(ends[1]["got"]) == data_ab
    assert bytes(ends[0]["got"]) == data_ba
    assert all(d["closed"] and not d["e"].exists(d["cid"]) for d in ends)
    b.close(lid, link.now)
    for e in link.engs:
        e.segments()
        c = e.counters()
        assert c["bad_transitions"] == 0 and c["timeouts"] == 0
    for pool in link.pools:
        pool.check_frames(expect_idle=True)
        assert pool.stats()["bad_ops"] == 0
