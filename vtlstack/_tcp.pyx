# The TCP protocol engine, sans-IO: (segment, now) in, segments and events out.
#
# Input: an IPv4+TCP packet held in a FramePool frame, checked once by validate() (IPv4
# header, TCP length/offset/checksum; failures counted). input() then trusts it. The caller
# keeps its own reference on the frame; the engine takes one more per payload fragment it
# keeps, so received bytes are never copied: in-order bytes sit in the fragment list (rq)
# until the app consumes them, out-of-order bytes in the OOO queue (sorted, overlaps trimmed).
#
# Output: segment descriptors (tcp_seg_out) in a FIFO; pop_out() writes the next one as a
# complete IPv4+TCP packet (checksums computed) into a buffer the caller supplies and drops
# the descriptor's reference on its payload frame.
#
# Time: every entry point takes now (ns, monotonic). next_deadline() says (O(1), possibly
# early, never late) when on_timer() may have work: retransmission, persist, delayed ACK,
# TIME-WAIT, keep-alive.
#
# Loss recovery: RFC 6298 timer with Karn and backoff; RFC 6582 NewReno fast recovery, or
# RFC 6675 with a SACK scoreboard when SACK is negotiated. Congestion control is a table of
# C function pointers (tcp_cc.h: NewReno, CUBIC), chosen per connection.
#
# Listeners: bounded half-open and accept queues; SYN cookies when the half-open queue is
# full. ISNs, timestamp offsets, cookies and the flow table use a SipHash key.
#
# Send side: c_send() copies the app's bytes into pool frames (the one copy), one frame per
# segment-sized chunk; they stay referenced until acknowledged.
#
# Connection states change only through set_state(), which checks the edge against
# _ALLOWED (the RFC 9293 3.3.2 diagram as data) and counts every transition.
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memmove, memset

from vtlstack._includes.posix cimport now_ns
from vtlstack._port cimport FRAME_FILL, FRAME_FREE, FRAME_HELD, VTL_NO_FRAME, FramePool
from vtlstack.proto.ipv4 cimport (
    IPPROTO_TCP_,
    IPV4_MIN_HLEN,
    IPV4_OK,
    ipv4_check,
    ipv4_dst,
    ipv4_hlen,
    ipv4_proto,
    ipv4_src,
    ipv4_tot_len,
    ipv4_write,
)
from vtlstack.proto.tcp cimport *

import os
import socket

__all__ = ["TcpEngine", "STATE_NAMES", "EVENT_NAMES", "cc_trace", "emit_options", "parse_options",
           "siphash"]

STATE_NAMES = ("CLOSED", "LISTEN", "SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1",
               "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT")
EVENT_NAMES = {EV_CONNECTED: "connected", EV_READABLE: "readable", EV_WRITABLE: "writable",
               EV_PEER_CLOSED: "peer_closed", EV_RESET: "reset", EV_TIMEOUT: "timed_out",
               EV_CLOSED: "closed", EV_SPLICE_DONE: "splice_done"}

cdef enum:
    COOKIE_NMSS = 6
    MIN_SND_MSS = 64            # floor for the peer's MSS option (Linux uses 48)
    FT_TOMB = 0xFFFFFFFF
    DEFAULT_MSS = 536           # RFC 9293 3.7.1: the MSS assumed without the option
    TS_OPTLEN = 12              # timestamps option with its two NOPs
    CLOCK_G_NS = 1000000        # RFC 6298 G: clock granularity we assume (1 ms)
    PERSIST_MAX_SHIFT = 8
    NO_DEADLINE = 0             # a timer field of 0 is not armed


# The MSS values a SYN cookie can carry (3 bits; the largest not above the peer's MSS).
cdef uint32_t _COOKIE_MSS[COOKIE_NMSS]
_COOKIE_MSS[:] = [536, 1220, 1400, 1440, 1460, 8960]


# -- sequence arithmetic (RFC 9293 3.4: modulo 2**32) ---------------------------------------

cdef inline bint SEQ_LT(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) < 0


cdef inline bint SEQ_LE(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) <= 0


cdef inline bint SEQ_GT(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) > 0


cdef inline bint SEQ_GE(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) >= 0


cdef inline uint32_t umin(uint32_t a, uint32_t b) noexcept nogil:
    return a if a < b else b


cdef inline uint32_t umax(uint32_t a, uint32_t b) noexcept nogil:
    return a if a > b else b


cdef inline uint64_t earliest(uint64_t best, uint64_t t) noexcept nogil:
    return t if t and (best == 0 or t < best) else best


cdef inline uint32_t flow_hash(const uint64_t *key, uint32_t lip, uint16_t lport,
                               uint32_t rip, uint16_t rport) noexcept nogil:
    # keyed, so a peer cannot pick 4-tuples that collide in the flow table
    cdef uint64_t w[2]
    w[0] = <uint64_t>lip << 32 | rip
    w[1] = <uint64_t>lport << 16 | rport
    return <uint32_t>siphash_words(w, 2, key[1], key[0])


# -- the state diagram as data (RFC 9293 3.3.2, Figure 5) ------------------------------------

cdef uint32_t _ALLOWED[ST_NSTATES]
_ALLOWED[ST_CLOSED] = (1 << ST_LISTEN) | (1 << ST_SYN_SENT) | (1 << ST_SYN_RECEIVED)
_ALLOWED[ST_LISTEN] = (1 << ST_CLOSED)
# SYN-SENT: rcv SYN,ACK -> ESTABLISHED; rcv SYN (simultaneous open) -> SYN-RECEIVED;
# close, RST or timeout -> CLOSED
_ALLOWED[ST_SYN_SENT] = (1 << ST_ESTABLISHED) | (1 << ST_SYN_RECEIVED) | (1 << ST_CLOSED)
_ALLOWED[ST_SYN_RECEIVED] = (1 << ST_ESTABLISHED) | (1 << ST_CLOSED)
# ESTABLISHED: close -> FIN-WAIT-1; rcv FIN -> CLOSE-WAIT
_ALLOWED[ST_ESTABLISHED] = (1 << ST_FIN_WAIT_1) | (1 << ST_CLOSE_WAIT) | (1 << ST_CLOSED)
# FIN-WAIT-1: ACK of FIN -> FIN-WAIT-2; rcv FIN -> CLOSING (simultaneous close)
_ALLOWED[ST_FIN_WAIT_1] = (1 << ST_FIN_WAIT_2) | (1 << ST_CLOSING) | (1 << ST_CLOSED)
_ALLOWED[ST_FIN_WAIT_2] = (1 << ST_TIME_WAIT) | (1 << ST_CLOSED)
_ALLOWED[ST_CLOSE_WAIT] = (1 << ST_LAST_ACK) | (1 << ST_CLOSED)
_ALLOWED[ST_CLOSING] = (1 << ST_TIME_WAIT) | (1 << ST_CLOSED)
_ALLOWED[ST_LAST_ACK] = (1 << ST_CLOSED)
# TIME-WAIT: 2 MSL timeout -> CLOSED
_ALLOWED[ST_TIME_WAIT] = (1 << ST_CLOSED)


cdef inline bint synchronized_can_send(uint8_t st) noexcept nogil:
    """States in which queued data (and a queued FIN) may still go out."""
    return st == ST_ESTABLISHED or st == ST_CLOSE_WAIT or st == ST_FIN_WAIT_1 \
        or st == ST_CLOSING or st == ST_LAST_ACK


cdef inline bint may_receive_data(uint8_t st) noexcept nogil:
    # RFC 9293 3.10.7.4 seventh: text is processed in ESTABLISHED, FIN-WAIT-1, FIN-WAIT-2
    return st == ST_ESTABLISHED or st == ST_FIN_WAIT_1 or st == ST_FIN_WAIT_2


cdef inline uint32_t flight_size(const tcp_conn *c) noexcept nogil:
    return c.snd_max - c.snd_una


cdef inline uint64_t conn_deadline(const tcp_conn *c) noexcept nogil:
    cdef uint64_t best = earliest(0, c.rtx_at)
    best = earliest(best, c.persist_at)
    best = earliest(best, c.delack_at)
    best = earliest(best, c.tw_at)
    return earliest(best, c.ka_at)


# -- SACK scoreboard (RFC 6675 2, 4) ----------------------------------------------------------

cdef void sb_add(tcp_conn *c, uint32_t left, uint32_t right) noexcept nogil:
    """Merge a SACK block into the scoreboard; blocks outside (SND.UNA, SND.MAX] or empty
    are ignored. When the board is full the highest range is dropped (that only makes the
    sender retransmit more)."""
    cdef uint32_t i = 0, j, k
    if not SEQ_LT(left, right) or not SEQ_GT(right, c.snd_una) or SEQ_GT(right, c.snd_max):
        return
    if SEQ_LT(left, c.snd_una):
        left = c.snd_una
    while i < c.sb_n and SEQ_LT(c.sb[i][1], left):
        i += 1
    # ranges [i, j) touch or overlap the block: fold them into it
    j = i
    while j < c.sb_n and SEQ_LE(c.sb[j][0], right):
        if SEQ_LT(c.sb[j][0], left):
            left = c.sb[j][0]
        if SEQ_GT(c.sb[j][1], right):
            right = c.sb[j][1]
        j += 1
    if j == i:
        if c.sb_n == SB_MAX:
            c.sb_full += 1
            if i == SB_MAX:
                return
            c.sb_n -= 1
        for j in range(c.sb_n, i, -1):
            c.sb[j][0] = c.sb[j - 1][0]
            c.sb[j][1] = c.sb[j - 1][1]
        c.sb_n += 1
    else:
        for k in range(j, c.sb_n):
            c.sb[i + 1 + k - j][0] = c.sb[k][0]
            c.sb[i + 1 + k - j][1] = c.sb[k][1]
        c.sb_n -= j - i - 1
    c.sb[i][0] = left
    c.sb[i][1] = right


cdef void sb_prune(tcp_conn *c) noexcept nogil:
    """Forget what SND.UNA has passed."""
    cdef uint32_t i = 0, j
    while i < c.sb_n and SEQ_LE(c.sb[i][1], c.snd_una):
        i += 1
    if i:
        for j in range(i, c.sb_n):
            c.sb[j - i][0] = c.sb[j][0]
            c.sb[j - i][1] = c.sb[j][1]
        c.sb_n -= i
    if c.sb_n and SEQ_LT(c.sb[0][0], c.snd_una):
        c.sb[0][0] = c.snd_una


cdef inline uint32_t sb_end_of(const tcp_conn *c, uint32_t seq) noexcept nogil:
    """The end of the SACKed range holding seq, or seq itself when it is not SACKed."""
    cdef uint32_t i
    for i in range(c.sb_n):
        if SEQ_LE(c.sb[i][0], seq) and SEQ_LT(seq, c.sb[i][1]):
            return c.sb[i][1]
    return seq


cdef bint sb_is_lost(const tcp_conn *c, uint32_t seq) noexcept nogil:
    # RFC 6675 4 IsLost(SeqNum): "DupThresh discontiguous SACKed sequences have arrived
    # above 'SeqNum' or more than (DupThresh - 1) * SMSS bytes with sequence numbers
    # greater than 'SeqNum' have been SACKed"
    cdef uint32_t i, ranges = 0, nbytes = 0
    for i in range(c.sb_n):
        if SEQ_GT(c.sb[i][0], seq):
            ranges += 1
            nbytes += c.sb[i][1] - c.sb[i][0]
    return ranges >= 3 or nbytes > 2 * <uint32_t>c.snd_mss


cdef uint32_t sb_pipe(const tcp_conn *c) noexcept nogil:
    # RFC 6675 4 SetPipe(): every unSACKed octet in flight counts once if not IsLost, and
    # once more if it was retransmitted (<= HighRxt); done per hole between SACKed ranges
    cdef uint32_t pipe = 0, a = c.snd_una, b, i = 0
    while SEQ_LT(a, c.snd_max):
        b = c.sb[i][0] if i < c.sb_n else c.snd_max
        if SEQ_LT(a, b):
            if not sb_is_lost(c, a):
                pipe += b - a
            if SEQ_GT(c.high_rxt, a):
                pipe += (b if SEQ_LT(b, c.high_rxt) else c.high_rxt) - a
        if i < c.sb_n:
            a = c.sb[i][1]
            i += 1
        else:
            break
    return pipe


cdef class TcpEngine:
    """A set of TCP connections over one FramePool: flow table, listeners, state machines,
    timers and congestion control. Python methods drive it from tests and the control plane;
    the network thread uses the cdef API declared in _tcp.pxd. Packets are IPv4+TCP (no
    Ethernet header); addresses are dotted strings in Python, network order in C."""

    def __cinit__(self, FramePool pool not None, uint32_t max_conns=1024, *,
                  uint32_t mss=1460, uint32_t rcv_buf=262144, uint32_t snd_buf=524288,
                  double msl=30.0, double rto_init=1.0, double rto_min=0.2,
                  double rto_max=60.0, double delack=0.04, uint32_t max_retries=8,
                  uint32_t syn_retries=5, str cc="newreno", bint wscale=True,
                  bint timestamps=True, bint sack=True, bint nodelay=False,
                  bint syncookies=True,
                  uint32_t challenge_ack_limit=1000, uint32_t out_cap=4096,
                  uint32_t splice_b0=1 << 20, uint32_t splice_pair_cap=1 << 21,
                  uint64_t splice_cap=64 << 20,
                  uint16_t eph_lo=61000, uint16_t eph_hi=65535, seed=None):
        cdef uint32_t i, size = 16
        if max_conns == 0:
            raise ValueError("max_conns must be at least 1")
        if mss < 64 or mss + 40 > pool.frame_size:
            raise ValueError(f"mss {mss} does not fit a {pool.frame_size}-byte frame")
        if eph_lo == 0 or eph_lo > eph_hi:
            raise ValueError("bad ephemeral port range")
        if snd_buf > SQ_MAX * (pool.frame_size // 2):
            # the send queue must take every byte of snd_buf (the app sends within it
            # without waiting for an answer)
            raise ValueError(f"snd_buf {snd_buf} is above {SQ_MAX} frames of half "
                             f"{pool.frame_size} bytes ({SQ_MAX * (pool.frame_size // 2)})")
        self.cfg.cc = _cc_ops(cc)
        self.pool = pool
        self.cfg.mss = mss
        self.cfg.rcv_buf = rcv_buf
        self.cfg.snd_buf = snd_buf
        self.cfg.msl_ns = <uint64_t>(msl * 1e9)
        self.cfg.rto_init_ns = <uint64_t>(rto_init * 1e9)
        self.cfg.rto_min_ns = <uint64_t>(rto_min * 1e9)
        self.cfg.rto_max_ns = <uint64_t>(rto_max * 1e9)
        self.cfg.delack_ns = <uint64_t>(delack * 1e9)
        self.cfg.max_retries = max_retries
        self.cfg.syn_retries = syn_retries
        self.cfg.wscale = wscale
        self.cfg.timestamps = timestamps
        self.cfg.sack = sack
        self.cfg.nodelay = nodelay
        self.cfg.syncookies = syncookies
        self.cfg.challenge_ack_limit = challenge_ack_limit
        if splice_b0 == 0:
            raise ValueError("splice_b0 must be at least 1 byte")
        self.cfg.splice_b0 = splice_b0
        self.cfg.splice_pair_cap = splice_pair_cap
        self.cfg.splice_cap = splice_cap
        self.cfg.eph_lo = eph_lo
        self.cfg.eph_hi = eph_hi
        self.eph_next = eph_lo
        # the key of RFC 6528's F(): random unless a seed makes runs repeatable (tests)
        if seed is None:
            k = os.urandom(16)
            self.key[0] = int.from_bytes(k[:8], "little")
            self.key[1] = int.from_bytes(k[8:], "little")
        else:
            self.key[0] = <uint64_t>seed
            self.key[1] = <uint64_t>seed ^ <uint64_t>0x9E3779B97F4A7C15ULL
        self.max_conns = max_conns
        while size < 2 * max_conns:
            size <<= 1
        self.ftab_mask = size - 1
        self.conns = <tcp_conn *>calloc(max_conns, sizeof(tcp_conn))
        self.free_cids = <int32_t *>calloc(max_conns, sizeof(int32_t))
        self.acks = <int32_t *>calloc(max_conns, sizeof(int32_t))
        self.pressed = <int32_t *>calloc(max_conns, sizeof(int32_t))
        self.ftab = <uint32_t *>calloc(size, sizeof(uint32_t))
        self.out_cap = out_cap
        self.out = <tcp_seg_out *>calloc(out_cap, sizeof(tcp_seg_out))
        self.evq_cap = 2 * max_conns + 16
        self.evq = <int32_t *>calloc(self.evq_cap, sizeof(int32_t))
        self.zc_off = <uint16_t *>calloc(pool.frame_count, sizeof(uint16_t))
        if not self.conns or not self.free_cids or not self.acks or not self.pressed \
                or not self.ftab or not self.out or not self.evq or not self.zc_off:
            raise MemoryError()
        for i in range(max_conns):
            self.free_cids[i] = max_conns - 1 - i
        self.nfree = max_conns

    def __dealloc__(self):
        if self.conns != NULL and self.pool is not None:
            self.release_all()
        free(self.conns)
        free(self.free_cids)
        free(self.acks)
        free(self.pressed)
        free(self.ftab)
        free(self.out)
        free(self.evq)
        free(self.zc_off)

    cdef void release_all(self) noexcept nogil:
        """Give every frame back to the pool (the network thread has stopped): the
        connections' queues and the segments still waiting to be sent."""
        cdef uint32_t i
        for i in range(self.max_conns):
            if self.conns[i].in_use:
                self.conn_release_frames(&self.conns[i], True)
        while self.out_n:
            self._drop_out()

    cdef void _drop_out(self) noexcept nogil:
        cdef tcp_seg_out *s = &self.out[self.out_head]
        if s.len:
            self.pool.unref(s.addr)
        self.out_head = (self.out_head + 1) % self.out_cap
        self.out_n -= 1

    # -- states, flow table, connection slots -----------------------------------------------

    cdef void set_state(self, tcp_conn *c, uint8_t to) noexcept nogil:
        if not (_ALLOWED[c.state] >> to) & 1:
            self.cnt.bad_transitions += 1
        self.transitions[c.state][to] += 1
        c.state = to

    cdef int32_t ft_find(self, uint32_t lip, uint16_t lport, uint32_t rip,
                         uint16_t rport) noexcept nogil:
        cdef uint32_t i = flow_hash(self.key, lip, lport, rip, rport) & self.ftab_mask, n, v
        cdef tcp_conn *c
        for n in range(self.ftab_mask + 1):
            v = self.ftab[i]
            if v == 0:
                return NO_CONN
            if v != FT_TOMB:
                c = &self.conns[v - 1]
                if c.lip == lip and c.lport == lport and c.rip == rip and c.rport == rport:
                    return <int32_t>(v - 1)
            i = (i + 1) & self.ftab_mask
        return NO_CONN

    cdef int ft_insert(self, int32_t cid) noexcept nogil:
        cdef tcp_conn *c = &self.conns[cid]
        cdef uint32_t i = flow_hash(self.key, c.lip, c.lport, c.rip, c.rport) & self.ftab_mask, n
        for n in range(self.ftab_mask + 1):
            if self.ftab[i] == 0 or self.ftab[i] == FT_TOMB:
                self.ftab[i] = <uint32_t>cid + 1
                return 0
            i = (i + 1) & self.ftab_mask
        return -1   # cannot happen: the table has twice as many slots as connections

    cdef void ft_remove(self, int32_t cid) noexcept nogil:
        cdef tcp_conn *c = &self.conns[cid]
        cdef uint32_t i = flow_hash(self.key, c.lip, c.lport, c.rip, c.rport) & self.ftab_mask, n
        for n in range(self.ftab_mask + 1):
            if self.ftab[i] == 0:
                return
            if self.ftab[i] == <uint32_t>cid + 1:
                self.ftab[i] = FT_TOMB
                # a run of tombstones that ends at an empty slot ends no probe chain:
                # empty it, so churn does not leave the table full of tombstones
                if self.ftab[(i + 1) & self.ftab_mask] == 0:
                    while self.ftab[i] == FT_TOMB:
                        self.ftab[i] = 0
                        i = (i - 1) & self.ftab_mask
                return
            i = (i + 1) & self.ftab_mask

    cdef int32_t conn_alloc(self) noexcept nogil:
        cdef int32_t cid
        if self.nfree == 0:
            self.cnt.conn_table_full += 1
            return NO_CONN
        self.nfree -= 1
        cid = self.free_cids[self.nfree]
        memset(&self.conns[cid], 0, sizeof(tcp_conn))
        self.conns[cid].in_use = 1
        self.conns[cid].parent = NO_CONN
        self.conns[cid].lidx = -1
        self.conns[cid].splice = NO_CONN
        self.nconns += 1
        if self.nconns > self.nconns_peak:
            self.nconns_peak = self.nconns
        return cid

    cdef void conn_release_frames(self, tcp_conn *c, bint rx_too) noexcept nogil:
        cdef uint32_t i
        for i in range(c.sq_n):
            self.pool.unref(c.sq[(c.sq_head + i) % SQ_MAX].addr)
        self.sq_frames -= c.sq_n
        if c.sq_spliced:
            self.splice_held -= c.sq_bytes
        c.sq_n = 0
        c.sq_bytes = 0
        for i in range(c.ooo_n):
            self.pool.unref(c.ooo[i].addr)
        self.pool.rx_held -= c.ooo_n
        c.ooo_n = 0
        c.ooo_bytes = 0
        if rx_too:
            for i in range(c.rq_n):
                self.pool.unref(c.rq[(c.rq_head + i) % RQ_MAX].addr)
            self.pool.rx_held -= c.rq_n
            c.rq_n = 0
            c.rq_bytes = 0

    cdef void conn_free(self, tcp_conn *c) noexcept nogil:
        cdef int32_t cid = <int32_t>(c - self.conns)
        self.conn_release_frames(c, True)
        self.ft_remove(cid)
        c.in_use = 0
        c.ev_pending = 0
        self.free_cids[self.nfree] = cid
        self.nfree += 1
        self.nconns -= 1

    cdef void event(self, tcp_conn *c, uint32_t ev) noexcept nogil:
        if c.parent != NO_CONN:
            # a child the app has not accepted yet: its events wait for accept()
            c.ev_pending |= ev
            return
        if c.ev_pending == 0:
            if self.evq_n == self.evq_cap:
                self.cnt.evq_full += 1
                return
            self.evq[(self.evq_head + self.evq_n) % self.evq_cap] = <int32_t>(c - self.conns)
            self.evq_n += 1
        c.ev_pending |= ev

    cdef int32_t pop_event(self, uint32_t *mask) noexcept nogil:
        """The next connection with events and its event bits (cleared); NO_CONN if none."""
        cdef int32_t cid
        cdef tcp_conn *c
        while self.evq_n:
            cid = self.evq[self.evq_head]
            self.evq_head = (self.evq_head + 1) % self.evq_cap
            self.evq_n -= 1
            c = &self.conns[cid]
            if c.in_use and c.ev_pending:
                mask[0] = c.ev_pending
                c.ev_pending = 0
                return cid
        return NO_CONN

    cdef void conn_closed(self, tcp_conn *c, uint32_t ev) noexcept nogil:
        """The connection reached CLOSED: timers off, out of the flow table, send side and
        OOO frames back to the pool. Bytes already acknowledged stay readable (also after a
        reset or a timeout) until the app lets go. Unaccepted children and released handles
        free their slot."""
        cdef uint8_t was = c.state
        cdef int32_t cid = <int32_t>(c - self.conns)
        cdef tcp_listener *li
        cdef uint32_t i, j
        if c.state != ST_CLOSED:
            self.set_state(c, ST_CLOSED)
        c.rtx_at = c.persist_at = c.delack_at = c.tw_at = c.ka_at = NO_DEADLINE
        self.ft_remove(cid)
        self.conn_release_frames(c, c.released)
        if c.parent != NO_CONN:
            li = &self.listeners[self.conns[c.parent].lidx]
            if was == ST_SYN_RECEIVED:
                li.half_open -= 1
            else:
                j = 0
                for i in range(li.aq_n):
                    if li.acceptq[(li.aq_head + i) % ACCEPTQ_MAX] != cid:
                        li.acceptq[(li.aq_head + j) % ACCEPTQ_MAX] = \
                            li.acceptq[(li.aq_head + i) % ACCEPTQ_MAX]
                        j += 1
                li.aq_n = j
            self.conn_free(c)
            return
        self.event(c, ev)
        self.splice_ended(c, ev)
        if c.released:
            self.conn_free(c)

    cdef uint8_t our_wscale(self) noexcept nogil:
        """The shift that lets the window field say the whole receive buffer."""
        cdef uint8_t ws = 0
        while ws < TCP_MAX_WSCALE and (self.cfg.rcv_buf >> ws) > 0xFFFF:
            ws += 1
        return ws

    cdef uint32_t ts_offset(self, uint32_t lip, uint16_t lport, uint32_t rip,
                            uint16_t rport) noexcept nogil:
        # RFC 7323 5.4: a per-connection random offset for TSval (a keyed hash of the
        # 4-tuple, so a SYN cookie's SYN,ACK uses the one the connection will have)
        cdef uint64_t w[2]
        w[0] = <uint64_t>lip << 32 | rip
        w[1] = <uint64_t>lport << 16 | rport
        return <uint32_t>(siphash_words(w, 2, self.key[1], self.key[0]) >> 32)

    cdef void conn_init(self, tcp_conn *c, uint32_t lip, uint16_t lport, uint32_t rip,
                        uint16_t rport, uint64_t now) noexcept nogil:
        cdef uint64_t w[2]
        c.lip = lip
        c.lport = lport
        c.rip = rip
        c.rport = rport
        # RFC 9293 3.4.1 / RFC 6528: ISN = M + F(localip, localport, remoteip, remoteport,
        # secretkey), M a 4 us clock and F a keyed hash (SipHash-2-4)
        w[0] = <uint64_t>lip << 32 | rip
        w[1] = <uint64_t>lport << 16 | rport
        c.iss = <uint32_t>(now // 4000) + <uint32_t>siphash_words(w, 2, self.key[0],
                                                                   self.key[1])
        c.snd_una = c.snd_nxt = c.snd_max = c.iss
        c.snd_end = c.iss + 1
        c.recover = c.iss
        c.rto = self.cfg.rto_init_ns
        c.ws_ok = self.cfg.wscale
        c.ts_ok = self.cfg.timestamps
        c.sack_ok = self.cfg.sack
        c.rcv_wscale = self.our_wscale() if c.ws_ok else 0
        c.ts_offset = self.ts_offset(lip, lport, rip, rport)
        c.snd_mss = DEFAULT_MSS
        c.rcv_mss = <uint16_t>self.cfg.mss
        c.ops = self.cfg.cc
        c.ops.init(&c.cc, c.snd_mss)
        c.nodelay = self.cfg.nodelay

    cdef void negotiate(self, tcp_conn *c, const tcp_opts *o) noexcept nogil:
        """Settle the options of the handshake from the peer's SYN or SYN,ACK: each is on
        only if we offered it and the peer sent it."""
        cdef uint32_t peer_mss = o.mss if o.has & OPT_MSS else DEFAULT_MSS
        cdef uint32_t optsz
        # RFC 7323 1.3: "Window scaling ... takes effect only if both sides send the option"
        c.ws_ok = c.ws_ok and (o.has & OPT_WSCALE) != 0
        if c.ws_ok:
            c.snd_wscale = o.wscale
        else:
            c.snd_wscale = 0
            c.rcv_wscale = 0
        # RFC 7323 3.2: timestamps are used only if both SYNs carried the option
        c.ts_ok = c.ts_ok and (o.has & OPT_TS) != 0
        if c.ts_ok:
            c.ts_recent = o.tsval
        c.sack_ok = c.sack_ok and (o.has & OPT_SACK_PERM) != 0
        # RFC 9293 3.7.1: Eff.snd.MSS = min(SendMSS+20, MMS_S) - TCPhdrsize - IPoptionsize
        # A hostile or broken MSS (0, or below the option room) is raised to MIN_SND_MSS
        # so segments always carry data
        optsz = TS_OPTLEN if c.ts_ok else 0
        if peer_mss < MIN_SND_MSS + optsz:
            peer_mss = MIN_SND_MSS + optsz
        c.snd_mss = <uint16_t>(umin(peer_mss, self.cfg.mss) - optsz)
        c.rcv_mss = <uint16_t>(self.cfg.mss - optsz)
        c.ops.init(&c.cc, c.snd_mss)

    # -- output -----------------------------------------------------------------------------

    cdef uint32_t pool_room(self) noexcept nogil:
        """Frames receive windows may still promise: those free or in the fill ring
        (received data lands in the latter), less a quarter of the pool kept for the send
        queues and the app. Every connection's window is backed by the same frames."""
        cdef uint64_t have = self.pool.count[FRAME_FREE] + self.pool.count[FRAME_FILL]
        cdef uint64_t keep = self.pool.frame_count // 4
        cdef uint64_t budget = self.rx_budget()
        have = have - keep if have > keep else 0
        budget = budget - self.pool.rx_held if budget > self.pool.rx_held else 0
        return umin(umin(<uint32_t>have, <uint32_t>budget), RQ_MAX)

    cdef bint pool_roomy(self) noexcept nogil:
        """Can the pool back a useful window: half a buffer, or a quarter of the receive
        budget when the pool is small?"""
        cdef uint64_t want = umin(self.cfg.rcv_buf // 2,
                                  <uint32_t>(self.rx_budget() // 4 * self.cfg.mss))
        return self.pool_room() * <uint64_t>self.cfg.mss >= want

    cdef inline uint64_t rx_budget(self) noexcept nogil:
        """Frames receive queues may hold: half the pool (see FramePool.rx_held) less what
        the fill ring always keeps to receive ACKs into."""
        return self.pool.frame_count // 2 - self.pool.frame_count // 16

    cdef uint32_t free_window(self, tcp_conn *c) noexcept nogil:
        """What we could accept now: buffer minus unconsumed bytes, bounded by free fragment
        slots, by the pool (see pool_room) and by what the window field can say."""
        cdef uint32_t free_b = self.cfg.rcv_buf - c.rq_bytes if self.cfg.rcv_buf > c.rq_bytes else 0
        cdef uint32_t slots = RQ_MAX - c.rq_n if c.rq_n < RQ_MAX else 0
        slots = umin(slots, self.pool_room())
        free_b = umin(free_b, slots * <uint32_t>c.rcv_mss)
        if c.splice != NO_CONN:
            free_b = umin(free_b, self.splice_room(c))
        return umin(free_b, <uint32_t>0xFFFF << c.rcv_wscale)

    cdef bint window_can_open(self, tcp_conn *c) noexcept nogil:
        cdef uint32_t free_b = self.free_window(c)
        cdef uint32_t cur = c.rcv_adv - c.rcv_nxt if SEQ_GT(c.rcv_adv, c.rcv_nxt) else 0
        # RFC 9293 3.8.6.2.2: move the right edge only when it can move by at least
        # min(RCV.BUFF / 2, Eff.snd.MSS) (receiver-side silly window avoidance)
        return free_b > cur and free_b - cur >= umin(self.cfg.rcv_buf // 2, c.rcv_mss)

    cdef uint32_t rcv_window(self, tcp_conn *c) noexcept nogil:
        if self.window_can_open(c):
            c.rcv_adv = c.rcv_nxt + self.free_window(c)
        if SEQ_LT(c.rcv_adv, c.rcv_nxt):
            c.rcv_adv = c.rcv_nxt
        if c.rcv_adv - c.rcv_nxt < self.cfg.rcv_buf // 2 and not c.wnd_pressed and \
                not self.pool_roomy() and self.pressed_n < self.max_conns:
            # The pool, not the app, keeps this window small. Nothing on this connection
            # will say when frames come back (its app may have nothing left to read), so
            # reopen_windows() sends the update then; otherwise only the peer's persist
            # probes, backing off to minutes, would find the window open again.
            c.wnd_pressed = 1
            self.pressed[self.pressed_n] = <int32_t>(c - self.conns)
            self.pressed_n += 1
        # RFC 9293 3.8.6.2.2: the right edge never moves left (no shrinking)
        return c.rcv_adv - c.rcv_nxt

    cdef tcp_seg_out *emit(self, tcp_conn *c, uint32_t seq, uint8_t flags, uint64_t addr,
                           uint32_t plen, uint64_t now) noexcept nogil:
        cdef tcp_seg_out *s
        cdef tcp_opts o
        cdef uint32_t wnd, i, n, start, end, nb = 0, first = 0
        cdef uint32_t runs[OOO_MAX][2]
        if self.out_n == self.out_cap:
            self.cnt.out_full += 1
            return NULL
        memset(&o, 0, sizeof(tcp_opts))
        s = &self.out[(self.out_head + self.out_n) % self.out_cap]
        self.out_n += 1
        s.cid = <int32_t>(c - self.conns)
        s.lip = c.lip
        s.rip = c.rip
        s.lport = c.lport
        s.rport = c.rport
        s.seq = seq
        s.flags = flags
        if flags & TH_SYN:
            o.has |= OPT_MSS
            o.mss = <uint16_t>self.cfg.mss
            if c.ws_ok:
                o.has |= OPT_WSCALE
                o.wscale = c.rcv_wscale
            if c.sack_ok:
                o.has |= OPT_SACK_PERM
            # RFC 7323 2.2: "The window field in a segment where the SYN bit is set ...
            # MUST NOT be scaled"
            wnd = umin(self.cfg.rcv_buf, 0xFFFF)
            s.win = <uint16_t>wnd
            if flags & TH_ACK:
                c.rcv_adv = c.rcv_nxt + wnd
        else:
            wnd = self.rcv_window(c)
            s.win = <uint16_t>umin(wnd >> c.rcv_wscale, 0xFFFF)
        if c.ts_ok:
            # RFC 7323 3.2: once negotiated, every non-RST segment carries TSopt
            o.has |= OPT_TS
            o.tsval = <uint32_t>(now // 1000000) + c.ts_offset
            o.tsecr = c.ts_recent if flags & TH_ACK else 0
        if c.sack_ok and c.ooo_n and not (flags & TH_SYN):
            # RFC 2018 4: one block per contiguous run of queued out-of-order data; "the
            # first SACK block MUST specify the contiguous block ... which includes the
            # segment which triggered this ACK"
            n = 0
            for i in range(c.ooo_n):
                start = c.ooo[i].seq
                end = start + c.ooo[i].len
                if n and runs[n - 1][1] == start:
                    runs[n - 1][1] = end
                else:
                    runs[n][0] = start
                    runs[n][1] = end
                    n += 1
                if SEQ_LE(start, c.ooo_last_seq) and SEQ_LT(c.ooo_last_seq, end):
                    first = n - 1
            o.has |= OPT_SACK
            o.sack[0][0] = runs[first][0]
            o.sack[0][1] = runs[first][1]
            nb = 1
            for i in range(n):
                if nb == TCP_MAX_SACK:
                    break
                if i != first:
                    o.sack[nb][0] = runs[i][0]
                    o.sack[nb][1] = runs[i][1]
                    nb += 1
            o.nsack = <uint8_t>nb
        s.optlen = tcp_emit_opts(s.opts, &o)
        if flags & TH_ACK:
            s.ack = c.rcv_nxt
            c.last_ack_sent = c.rcv_nxt
            c.ack_now = 0
            c.delack_at = NO_DEADLINE
        else:
            s.ack = 0
        s.addr = addr
        s.len = plen
        if plen:
            self.pool.ref(addr)
        self.cnt.segs_out += 1
        return s

    cdef void emit_rst(self, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport,
                       uint32_t seq, uint32_t ack, uint8_t flags) noexcept nogil:
        cdef tcp_seg_out *s
        if self.out_n == self.out_cap:
            self.cnt.out_full += 1
            return
        s = &self.out[(self.out_head + self.out_n) % self.out_cap]
        self.out_n += 1
        s.cid = NO_CONN
        s.lip = lip
        s.rip = rip
        s.lport = lport
        s.rport = rport
        s.seq = seq
        s.ack = ack
        s.flags = TH_RST | flags
        s.win = 0
        s.optlen = 0
        s.addr = 0
        s.len = 0
        self.cnt.segs_out += 1

    cdef uint32_t pop_out(self, uint8_t *buf, uint32_t cap) noexcept nogil:
        """Write the next pending segment into `buf` as an IPv4+TCP packet and return its
        length; 0 when nothing is pending. A segment that does not fit `cap` is dropped and
        counted (out_full)."""
        cdef tcp_seg_out *s
        cdef uint32_t tlen, tot
        cdef uint8_t *t
        while self.out_n:
            s = &self.out[self.out_head]
            tlen = TCP_MIN_HLEN + s.optlen + s.len
            tot = IPV4_MIN_HLEN + tlen
            if tot > cap:
                self.cnt.out_full += 1
                self._drop_out()
                continue
            ipv4_write(buf, <uint16_t>tot, self.ip_ident, IPPROTO_TCP_, s.lip, s.rip)
            self.ip_ident += 1
            t = buf + IPV4_MIN_HLEN
            tcp_write(t, s.lport, s.rport, s.seq, s.ack, s.flags, s.win, s.opts, s.optlen)
            if s.len:
                memcpy(t + TCP_MIN_HLEN + s.optlen, self.pool.frame_ptr(s.addr), s.len)
                if self.zc_off[self.pool.frame_index(s.addr)]:
                    # a received frame or the app's, sent by copy
                    if self.conns[s.cid].sq_spliced:
                        self.cnt.splice_copied += 1
                    else:
                        self.cnt.send_copied += 1
            tcp_set_csum(t, <uint16_t>tlen, s.lip, s.rip)
            self._drop_out()
            return tot
        return 0

    cdef uint32_t send_at(self, tcp_conn *c, uint32_t seq, uint32_t room,
                          uint64_t now) noexcept nogil:
        """Send one segment starting at `seq` (data from the send queue, at most `room`
        bytes and one MSS; the FIN if it is next). Returns the sequence space it covers."""
        cdef uint32_t lo = 0, hi = c.sq_n, mid, off, n = 0, avail
        cdef tcp_frag *f = NULL
        cdef uint8_t flags = TH_ACK
        cdef uint64_t addr = 0
        if SEQ_LT(seq, c.snd_end):
            # the queue is contiguous and sorted: binary search for the frame holding seq
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if SEQ_LE(c.sq[(c.sq_head + mid) % SQ_MAX].seq, seq):
                    lo = mid
                else:
                    hi = mid
            if c.sq_n:
                f = &c.sq[(c.sq_head + lo) % SQ_MAX]
                if not (SEQ_LE(f.seq, seq) and SEQ_LT(seq, f.seq + f.len)):
                    f = NULL
            if f == NULL or room == 0:
                return 0
            off = seq - f.seq
            avail = umin(f.len - off, c.snd_mss)
            n = umin(avail, room)
            if n < c.snd_mss and seq == c.snd_max and c.snd_max != c.snd_una:
                if c.snd_end - seq < c.snd_mss and not c.nodelay and not c.fin_queued:
                    # RFC 9293 3.7.4 (Nagle): "queue the data ... until all outstanding data
                    # has been acknowledged or until the TCP can send a full-sized segment";
                    # a shut-down send side flushes
                    return 0
                if n < avail and n < c.snd_end - seq and n < c.max_snd_wnd // 2:
                    # RFC 9293 3.8.6.2.1 (sender silly window avoidance): with more queued
                    # than the window allows, wait for min(D,U) >= Eff.snd.MSS or
                    # >= Fs * max(SND.WND); the ACKs of the data in flight reopen it. Only
                    # when the window cut the segment short: a spliced frame's segment is
                    # as long as the one it came in
                    return 0
            addr = f.addr + off
            if seq + n == c.snd_end:
                flags |= TH_PSH
        if c.fin_queued and seq + n == c.snd_end:
            flags |= TH_FIN
        elif n == 0:
            return 0
        if self.emit(c, seq, flags, addr, n, now) == NULL:
            return 0
        if SEQ_LT(seq, c.snd_max):
            # RFC 6298 3 (Karn): no RTT sample from a retransmitted segment
            c.timing = 0
            c.retransmits += 1
            self.cnt.retransmits += 1
        elif not c.timing:
            c.timing = 1
            c.rtt_seq = seq + n
            c.rtt_start = now
        if c.rtx_at == NO_DEADLINE:
            # RFC 6298 5.1: start the timer when a segment with data (or SYN/FIN) is sent
            c.rtx_at = now + c.rto
            self.arm(c.rtx_at)
        return n + (1 if flags & TH_FIN else 0)

    cdef void output(self, tcp_conn *c, uint64_t now) noexcept nogil:
        """Send what the state, the windows and the queues allow, then any owed ACK."""
        cdef uint32_t wnd, inflight, room, n
        cdef uint64_t t
        if c.state == ST_SYN_SENT or c.state == ST_SYN_RECEIVED:
            if c.snd_nxt == c.iss:
                # RFC 9293 3.10.1 / 3.10.7.3: <SEQ=ISS><CTL=SYN> or <SEQ=ISS><ACK=RCV.NXT>
                # <CTL=SYN,ACK>
                if self.emit(c, c.iss, TH_SYN | (TH_ACK if c.state == ST_SYN_RECEIVED else 0),
                             0, 0, now) == NULL:
                    return
                if c.snd_max != c.iss:
                    c.timing = 0
                    c.retransmits += 1
                    self.cnt.retransmits += 1
                else:
                    c.timing = 1
                    c.rtt_seq = c.iss + 1
                    c.rtt_start = now
                c.snd_nxt = c.snd_max = c.iss + 1
                if c.rtx_at == NO_DEADLINE:
                    c.rtx_at = now + c.rto
                    self.arm(c.rtx_at)
            elif c.ack_now and c.state == ST_SYN_RECEIVED:
                self.emit(c, c.snd_max, TH_ACK, 0, 0, now)
            return
        if synchronized_can_send(c.state) and c.in_recovery and c.sack_ok:
            self.sack_output(c, now)
        elif synchronized_can_send(c.state):
            while SEQ_LT(c.snd_nxt, c.snd_end) or (c.fin_queued and c.snd_nxt == c.snd_end):
                if c.sb_n and sb_end_of(c, c.snd_nxt) != c.snd_nxt:
                    # go-back-N after a timeout skips what the peer reported SACKed
                    c.snd_nxt = sb_end_of(c, c.snd_nxt)
                    continue
                wnd = umin(c.snd_wnd, c.cc.cwnd)
                inflight = c.snd_nxt - c.snd_una
                room = wnd - inflight if wnd > inflight else 0
                n = self.send_at(c, c.snd_nxt, room, now)
                if n == 0:
                    break
                c.snd_nxt += n
                if SEQ_GT(c.snd_nxt, c.snd_max):
                    c.snd_max = c.snd_nxt
            if c.snd_wnd == 0 and SEQ_LT(c.snd_nxt, c.snd_end) and c.snd_nxt == c.snd_una \
                    and c.persist_at == NO_DEADLINE:
                # RFC 9293 3.8.6.1: with a zero window the sender must keep probing
                t = c.rto << c.persist_shift
                c.persist_at = now + (t if t < self.cfg.rto_max_ns else self.cfg.rto_max_ns)
                self.arm(c.persist_at)
                c.rtx_at = NO_DEADLINE
        if c.ack_now and c.state != ST_CLOSED and c.state != ST_LISTEN:
            # <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>: RFC 9293's SND.NXT is our snd_max (snd_nxt
            # moves back to SND.UNA for go-back-N after a timeout); an ACK carrying an old
            # sequence number would fail the peer's sequence test and be dropped unread
            self.emit(c, c.snd_max, TH_ACK, 0, 0, now)

    cdef void sack_output(self, tcp_conn *c, uint64_t now) noexcept nogil:
        """RFC 6675 5 (loss recovery with SACK): "while (cwnd - pipe) >= 1 SMSS", send
        NextSeg(): first the lowest unSACKed, lost byte above HighRxt, else new data."""
        cdef uint32_t pipe, seq, end, room, n, i
        cdef bint sent
        while True:
            pipe = sb_pipe(c)
            if c.cc.cwnd <= pipe or c.cc.cwnd - pipe < c.snd_mss:
                return
            sent = False
            # NextSeg (1): "the smallest unSACKed sequence number S2 > HighRxt ... with
            # IsLost(S2)"
            seq = c.high_rxt if SEQ_GT(c.high_rxt, c.snd_una) else c.snd_una
            while SEQ_LT(seq, c.snd_max):
                end = sb_end_of(c, seq)
                if end != seq:
                    seq = end
                    continue
                if not sb_is_lost(c, seq):
                    break
                end = c.snd_max
                for i in range(c.sb_n):
                    if SEQ_GT(c.sb[i][0], seq):
                        end = c.sb[i][0]
                        break
                n = self.send_at(c, seq, umin(end - seq, c.snd_mss), now)
                if n:
                    c.high_rxt = seq + n
                    self.cnt.sack_retransmits += 1
                    sent = True
                break
            if not sent:
                # NextSeg (2): new data the receiver's window allows
                if not (SEQ_LT(c.snd_max, c.snd_end) or
                        (c.fin_queued and c.snd_max == c.snd_end)):
                    return
                room = c.snd_wnd - (c.snd_max - c.snd_una) \
                    if c.snd_wnd > c.snd_max - c.snd_una else 0
                n = self.send_at(c, c.snd_max, umin(room, c.cc.cwnd - pipe), now)
                if n == 0:
                    return
                c.snd_max += n
                c.snd_nxt = c.snd_max

    cdef void challenge_ack(self, tcp_conn *c, uint64_t now) noexcept nogil:
        # RFC 5961 3.2 / 4.2 / 5.2: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
        # RFC 5961 7: "An implementation SHOULD include an ACK throttling mechanism"
        if now - self.ca_window_start >= 1000000000:
            self.ca_window_start = now
            self.ca_count = 0
        if self.ca_count >= self.cfg.challenge_ack_limit:
            self.cnt.challenge_acks_limited += 1
            return
        self.ca_count += 1
        self.cnt.challenge_acks += 1
        self.emit(c, c.snd_max, TH_ACK, 0, 0, now)

    # -- input ------------------------------------------------------------------------------

    cdef int validate(self, const uint8_t *ip, uint32_t avail) noexcept nogil:
        """The one check of a received IPv4+TCP packet (`avail` bytes from the IP header):
        0 when input() may take it, else a reason, counted."""
        cdef uint16_t hl, tot
        cdef int r
        if ipv4_check(ip, avail) != IPV4_OK or ipv4_proto(ip) != IPPROTO_TCP_:
            self.cnt.bad_ip += 1
            return -1
        hl = ipv4_hlen(ip)
        tot = ipv4_tot_len(ip)
        r = tcp_check(ip + hl, tot - hl, ipv4_src(ip), ipv4_dst(ip))
        if r == TCP_TRUNCATED:
            self.cnt.bad_len += 1
        elif r == TCP_BAD_OFFSET:
            self.cnt.bad_offset += 1
        elif r == TCP_BAD_CHECKSUM:
            self.cnt.bad_checksum += 1
        return r

    cdef void input(self, uint64_t ip_addr, uint64_t now) noexcept nogil:
        """One validated IPv4+TCP packet at UMEM address `ip_addr` (the caller keeps its own
        reference on the frame and drops it afterwards)."""
        cdef const uint8_t *ip = self.pool.frame_ptr(ip_addr)
        cdef uint16_t hl = ipv4_hlen(ip), tot = ipv4_tot_len(ip), thl
        cdef const uint8_t *t = ip + hl
        cdef tcp_opts o
        cdef uint32_t lip = ipv4_dst(ip), rip = ipv4_src(ip), plen, i
        cdef uint16_t lport = tcp_dport(t), rport = tcp_sport(t)
        cdef uint8_t flags = tcp_flags(t)
        cdef int32_t cid
        cdef tcp_conn *c
        cdef tcp_listener *li
        self.cnt.segs_in += 1
        if tcp_parse_opts(t, &o) < 0:
            self.cnt.bad_options += 1
            return
        thl = tcp_hlen(t)
        plen = tot - hl - thl
        if plen:
            self.zc_off[self.pool.frame_index(ip_addr)] = \
                <uint16_t>((ip_addr + hl + thl) % self.pool.frame_size)
        cid = self.ft_find(lip, lport, rip, rport)
        li = NULL
        for i in range(<uint32_t>MAX_LISTENERS):
            if self.listeners[i].in_use and self.listeners[i].lport == lport and \
                    (self.listeners[i].lip == lip or self.listeners[i].lip == 0):
                li = &self.listeners[i]
                break
        if cid != NO_CONN:
            c = &self.conns[cid]
            if c.state == ST_TIME_WAIT and li != NULL and \
                    flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN and \
                    (SEQ_GT(tcp_seq(t), c.rcv_nxt) or
                     (c.ts_ok and o.has & OPT_TS and SEQ_GT(o.tsval, c.ts_recent))):
                # RFC 9293 3.10.7.4 / RFC 6191: a SYN whose sequence number (or timestamp)
                # is beyond the old incarnation's may reopen a connection in TIME-WAIT
                self.conn_closed(c, EV_CLOSED)
                self.listen_input(li, lip, rip, t, &o, plen, ip_addr + hl + thl, now)
                return
            self.conn_input(c, t, &o, plen, ip_addr + hl + thl, now)
            if c.in_use and c.splice != NO_CONN and c.state != ST_CLOSED:
                self.splice_run(c, now)
            if c.in_use and c.state != ST_CLOSED:
                self.output(c, now)
            return
        if li != NULL:
            self.listen_input(li, lip, rip, t, &o, plen, ip_addr + hl + thl, now)
            return
        # RFC 9293 3.10.7.1: CLOSED. "An incoming segment containing a RST is discarded. An
        # incoming segment not containing a RST causes a RST to be sent in response."
        if flags & TH_RST:
            return
        self.cnt.no_conn_rst += 1
        if flags & TH_ACK:
            # "If the ACK bit is on, <SEQ=SEG.ACK><CTL=RST>"
            self.emit_rst(lip, lport, rip, rport, tcp_ackno(t), 0, 0)
        else:
            # "<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>"
            self.emit_rst(lip, lport, rip, rport, 0,
                          tcp_seq(t) + plen + (1 if flags & TH_SYN else 0)
                          + (1 if flags & TH_FIN else 0), TH_ACK)

    cdef uint32_t cookie(self, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport,
                         uint32_t irs, uint32_t idx, uint64_t t) noexcept nogil:
        """A SYN cookie: a keyed hash of the 4-tuple, the peer's ISN, a 68.7 s time slot and
        the MSS index, with the index itself in the low 3 bits."""
        cdef uint64_t w[3]
        w[0] = <uint64_t>lip << 32 | rip
        w[1] = <uint64_t>lport << 48 | <uint64_t>rport << 32 | irs
        w[2] = t << 8 | idx
        return (<uint32_t>siphash_words(w, 3, self.key[0], self.key[1]) & ~7u) | idx

    cdef bint cookie_open(self, tcp_listener *li, uint32_t lip, uint32_t rip,
                          const uint8_t *t, const tcp_opts *o, uint32_t plen, uint64_t paddr,
                          uint64_t now) noexcept nogil:
        """An ACK to a listener that carries a valid SYN cookie (ACK - 1): rebuild the
        SYN-RECEIVED connection it stands for and let the ACK complete it. The MSS comes
        from the cookie; window scaling and SACK from the echoed TSval when the peer uses
        timestamps (without them, a cookie connection has none of the three)."""
        cdef uint32_t ack = tcp_ackno(t), seq = tcp_seq(t), ck = ack - 1, idx = ck & 7
        cdef uint32_t bits, optsz
        cdef uint16_t lport = tcp_dport(t), rport = tcp_sport(t)
        cdef uint64_t slot = now >> 36
        cdef int32_t cid
        cdef tcp_conn *c
        if idx >= COOKIE_NMSS or (ck != self.cookie(lip, lport, rip, rport, seq - 1, idx, slot)
                                  and ck != self.cookie(lip, lport, rip, rport, seq - 1, idx,
                                                        slot - 1)):
            self.cnt.syncookies_bad += 1
            return False
        if li.aq_n >= li.backlog:
            self.cnt.accept_queue_full += 1
            return True         # valid, but no room: dropped like an ACK in SYN-RECEIVED
        cid = self.conn_alloc()
        if cid == NO_CONN:
            return True
        c = &self.conns[cid]
        self.conn_init(c, lip, lport, rip, rport, now)
        c.iss = ck
        c.snd_una = c.recover = ck
        c.snd_nxt = c.snd_max = c.snd_end = ack
        c.irs = seq - 1
        c.rcv_nxt = c.last_ack_sent = seq
        c.rcv_adv = seq + umin(self.cfg.rcv_buf, 0xFFFF)   # what the SYN,ACK offered
        c.ws_ok = c.ts_ok = c.sack_ok = 0
        c.rcv_wscale = 0
        optsz = 0
        if o.has & OPT_TS and self.cfg.timestamps:
            # the options our cookie SYN,ACK carried in its TSval, echoed in TSecr
            bits = o.tsecr & 0x3F
            c.ts_ok = 1
            c.ts_recent = o.tsval
            optsz = TS_OPTLEN
            c.sack_ok = (bits & 0x10) != 0 and self.cfg.sack
            if bits & 0xF <= TCP_MAX_WSCALE and self.cfg.wscale:
                c.ws_ok = 1
                c.snd_wscale = bits & 0xF
                c.rcv_wscale = self.our_wscale()
        c.snd_mss = <uint16_t>(umin(_COOKIE_MSS[idx], self.cfg.mss) - optsz)
        c.rcv_mss = <uint16_t>(self.cfg.mss - optsz)
        c.ops.init(&c.cc, c.snd_mss)
        c.parent = li.cid
        li.half_open += 1
        self.set_state(c, ST_SYN_RECEIVED)
        self.ft_insert(cid)
        self.cnt.syncookies_ok += 1
        self.conn_input(c, t, o, plen, paddr, now)
        if c.in_use and c.state != ST_CLOSED:
            self.output(c, now)
        return True

    cdef void listen_input(self, tcp_listener *li, uint32_t lip, uint32_t rip,
                           const uint8_t *t, const tcp_opts *o, uint32_t plen,
                           uint64_t paddr, uint64_t now) noexcept nogil:
        cdef uint8_t flags = tcp_flags(t)
        cdef int32_t cid
        cdef uint32_t idx, ck, irs, bits, tsnow
        cdef tcp_conn *c
        cdef tcp_seg_out *s
        cdef tcp_opts so
        # RFC 9293 3.10.7.2: "First, check for a RST: An incoming RST segment could not be
        # valid since it could not have been sent in response to anything sent by this
        # incarnation of the connection. An incoming RST should be ignored."
        if flags & TH_RST:
            return
        # "Second, check for an ACK: Any acknowledgment is bad if it arrives on a connection
        # still in the LISTEN state. An acceptable reset segment should be formed for any
        # arriving ACK-bearing segment. The RST should be formatted as <SEQ=SEG.ACK><CTL=RST>"
        if flags & TH_ACK:
            if self.cfg.syncookies and not (flags & TH_SYN) and \
                    self.cookie_open(li, lip, rip, t, o, plen, paddr, now):
                return
            self.cnt.no_conn_rst += 1
            self.emit_rst(lip, tcp_dport(t), rip, tcp_sport(t), tcp_ackno(t), 0, 0)
            return
        if not (flags & TH_SYN):
            return
        if li.half_open >= li.backlog:
            self.cnt.syn_backlog_full += 1
            if not self.cfg.syncookies or self.out_n == self.out_cap:
                return
            # The half-open queue is full: answer statelessly with a SYN cookie as the ISS
            # (RFC 4987 3.6); the MSS travels in its low 3 bits
            idx = 0
            while idx + 1 < COOKIE_NMSS and _COOKIE_MSS[idx + 1] <= \
                    (o.mss if o.has & OPT_MSS else DEFAULT_MSS):
                idx += 1
            irs = tcp_seq(t)
            ck = self.cookie(lip, tcp_dport(t), rip, tcp_sport(t), irs, idx, now >> 36)
            s = &self.out[(self.out_head + self.out_n) % self.out_cap]
            self.out_n += 1
            memset(s, 0, sizeof(tcp_seg_out))
            memset(&so, 0, sizeof(tcp_opts))
            so.has = OPT_MSS
            so.mss = <uint16_t>self.cfg.mss
            s.cid = NO_CONN
            s.lip = lip
            s.rip = rip
            s.lport = tcp_dport(t)
            s.rport = tcp_sport(t)
            s.seq = ck
            s.ack = irs + 1
            s.flags = TH_SYN | TH_ACK
            s.win = <uint16_t>umin(self.cfg.rcv_buf, 0xFFFF)
            if o.has & OPT_TS and self.cfg.timestamps:
                # As Linux does: the options the SYN offered ride in the low 6 bits of our
                # TSval (the peer's window shift, 15 for none; SACK-permitted) and come back
                # in the ACK's TSecr. The TSval is moved back, never forward in time.
                bits = (o.wscale if o.has & OPT_WSCALE and self.cfg.wscale else 0xF) | \
                    (0x10 if o.has & OPT_SACK_PERM and self.cfg.sack else 0)
                tsnow = <uint32_t>(now // 1000000) + \
                    self.ts_offset(lip, tcp_dport(t), rip, tcp_sport(t))
                so.tsval = (tsnow & ~0x3Fu) | bits
                if SEQ_GT(so.tsval, tsnow):
                    so.tsval -= 64
                so.tsecr = o.tsval
                so.has |= OPT_TS
                if bits & 0x10:
                    so.has |= OPT_SACK_PERM
                if bits & 0xF != 0xF:
                    so.has |= OPT_WSCALE
                    so.wscale = self.our_wscale()
            s.optlen = tcp_emit_opts(s.opts, &so)
            self.cnt.segs_out += 1
            self.cnt.syncookies_sent += 1
            return
        cid = self.conn_alloc()
        if cid == NO_CONN:
            return
        c = &self.conns[cid]
        self.conn_init(c, lip, tcp_dport(t), rip, tcp_sport(t), now)
        # "Third, check for a SYN: ... Set RCV.NXT to SEG.SEQ+1, IRS is set to SEG.SEQ ...
        # ISS should be selected and a SYN segment sent of the form
        # <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>"
        c.irs = tcp_seq(t)
        c.rcv_nxt = c.irs + 1
        self.negotiate(c, o)
        c.snd_wnd = c.max_snd_wnd = tcp_win(t)
        c.snd_wl1 = c.irs
        c.snd_wl2 = c.iss
        c.parent = li.cid
        li.half_open += 1
        self.set_state(c, ST_SYN_RECEIVED)
        self.ft_insert(cid)
        self.output(c, now)

    cdef void syn_sent_input(self, tcp_conn *c, const uint8_t *t, const tcp_opts *o,
                             uint64_t now) noexcept nogil:
        cdef uint8_t flags = tcp_flags(t)
        cdef uint32_t seq = tcp_seq(t), ack = tcp_ackno(t)
        cdef bint ack_ok = False
        if flags & TH_ACK:
            # RFC 9293 3.10.7.3: "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset
            # (unless the RST bit is set, if so drop the segment and return)
            # <SEQ=SEG.ACK><CTL=RST>"
            if SEQ_LE(ack, c.iss) or SEQ_GT(ack, c.snd_max):
                if not (flags & TH_RST):
                    self.emit_rst(c.lip, c.lport, c.rip, c.rport, ack, 0, 0)
                return
            ack_ok = True
        if flags & TH_RST:
            # "If the ACK was acceptable, then signal to the user 'error: connection reset',
            # drop the segment, enter CLOSED state ... Otherwise (no ACK), drop the segment"
            if ack_ok:
                self.cnt.rst_in += 1
                self.conn_closed(c, EV_RESET)
            return
        if not (flags & TH_SYN):
            return
        c.irs = seq
        c.rcv_nxt = seq + 1
        # the right edge our SYN offered (unscaled); a zero one would be read modulo 2**32,
        # half the time as a window of gigabytes
        c.rcv_adv = c.rcv_nxt + umin(self.cfg.rcv_buf, 0xFFFF)
        self.negotiate(c, o)
        # RFC 7323 2.2: the window of a <SYN,ACK> is not scaled
        c.snd_wnd = c.max_snd_wnd = tcp_win(t)
        c.snd_wl1 = seq
        c.snd_wl2 = ack
        if ack_ok:
            # "If SND.UNA > ISS (our SYN has been ACKed), change the connection state to
            # ESTABLISHED, form an ACK segment <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> and send it"
            c.snd_una = ack
            if c.timing and SEQ_GE(ack, c.rtt_seq):
                self.rtt_sample(c, now)
            c.rtx_at = NO_DEADLINE
            c.retries = 0
            c.ack_now = 1
            self.established(c, now)
        else:
            # "Otherwise, enter SYN-RECEIVED, form a SYN,ACK segment
            # <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK> and send it" (simultaneous open)
            self.set_state(c, ST_SYN_RECEIVED)
            c.snd_nxt = c.iss
            c.rtx_at = NO_DEADLINE

    cdef void established(self, tcp_conn *c, uint64_t now) noexcept nogil:
        cdef tcp_listener *li
        cdef int32_t cid = <int32_t>(c - self.conns)
        self.set_state(c, ST_ESTABLISHED)
        if c.parent != NO_CONN:
            li = &self.listeners[self.conns[c.parent].lidx]
            li.half_open -= 1
            li.acceptq[(li.aq_head + li.aq_n) % ACCEPTQ_MAX] = cid
            li.aq_n += 1
            self.event(&self.conns[c.parent], EV_CONNECTED)
        else:
            self.event(c, EV_CONNECTED | EV_WRITABLE)
        if c.fin_queued:
            # RFC 9293 3.10.4 CLOSE in SYN-RECEIVED: the FIN was queued "for processing
            # after entering ESTABLISHED state"
            self.set_state(c, ST_FIN_WAIT_1)

    cdef void rtt_sample(self, tcp_conn *c, uint64_t now) noexcept nogil:
        cdef uint64_t r = now - c.rtt_start, d
        c.timing = 0
        if not c.have_rtt:
            # RFC 6298 2.2: SRTT <- R, RTTVAR <- R/2
            c.srtt = r
            c.rttvar = r // 2
            c.have_rtt = 1
        else:
            # RFC 6298 2.3: RTTVAR <- 3/4 RTTVAR + 1/4 |SRTT - R'|; SRTT <- 7/8 SRTT + 1/8 R'
            d = c.srtt - r if c.srtt > r else r - c.srtt
            c.rttvar = (3 * c.rttvar + d) // 4
            c.srtt = (7 * c.srtt + r) // 8
        # RTO <- SRTT + max(G, K*RTTVAR), K = 4; clamped (2.4, 2.5)
        c.rto = c.srtt + (4 * c.rttvar if 4 * c.rttvar > CLOCK_G_NS else CLOCK_G_NS)
        if c.rto < self.cfg.rto_min_ns:
            c.rto = self.cfg.rto_min_ns
        if c.rto > self.cfg.rto_max_ns:
            c.rto = self.cfg.rto_max_ns

    cdef void conn_input(self, tcp_conn *c, const uint8_t *t, const tcp_opts *o, uint32_t plen,
                         uint64_t paddr, uint64_t now) noexcept nogil:
        cdef uint8_t flags = tcp_flags(t)
        cdef uint32_t seq = tcp_seq(t), ack = tcp_ackno(t), seglen, wnd, cut, fseq
        cdef uint32_t plen_in = plen    # before trimming: a segment with data is no dup ACK
        cdef bint acceptable
        if c.state == ST_SYN_SENT:
            self.syn_sent_input(c, t, o, now)
            return
        if c.ka_idle_ns:
            # RFC 9293 3.8.4: keep-alive probes only after an idle interval; anything heard
            # from the peer restarts it
            c.ka_sent = 0
            c.ka_at = now + c.ka_idle_ns
            self.arm(c.ka_at)
        if c.state == ST_SYN_RECEIVED and flags & TH_SYN and seq == c.irs \
                and not (flags & TH_RST):
            if flags & TH_ACK and ack == c.iss + 1:
                # RFC 9293 3.5 Figure 8 (simultaneous open): the peer's <SYN,ACK> that
                # acknowledges our SYN takes SYN-RECEIVED to ESTABLISHED
                c.snd_una = ack
                c.snd_wnd = c.max_snd_wnd = tcp_win(t)
                c.snd_wl1 = seq
                c.snd_wl2 = ack
                c.rtx_at = NO_DEADLINE
                c.retries = 0
                c.ack_now = 1
                self.established(c, now)
            elif not (flags & TH_ACK):
                # the peer retransmitted its SYN: our SYN,ACK was lost, send it again
                c.snd_nxt = c.iss
            return
        # RFC 7323 5.3 (PAWS): "If SEG.TSval < TS.Recent and the RST bit is off ... send an
        # acknowledgment in reply ... and drop the segment". Segments without data, SYN or
        # FIN are exempt, as in Linux (tcp_disordered_ack): PAWS guards data against old
        # duplicates, and answering reordered ACKs with ACKs would make duplicate ACKs
        if c.ts_ok and o.has & OPT_TS and not (flags & (TH_RST | TH_SYN | TH_FIN)) \
                and plen and SEQ_LT(o.tsval, c.ts_recent):
            self.cnt.paws_drops += 1
            c.ack_now = 1
            return
        # RFC 9293 3.10.7.4 first: the sequence number test (the table of four cases)
        seglen = plen + (1 if flags & TH_SYN else 0) + (1 if flags & TH_FIN else 0)
        wnd = c.rcv_adv - c.rcv_nxt if SEQ_GT(c.rcv_adv, c.rcv_nxt) else 0
        if seglen == 0:
            if wnd == 0:
                acceptable = seq == c.rcv_nxt
            else:
                acceptable = SEQ_LE(c.rcv_nxt, seq) and SEQ_LT(seq, c.rcv_nxt + wnd)
        elif wnd == 0:
            acceptable = False
        else:
            acceptable = (SEQ_LE(c.rcv_nxt, seq) and SEQ_LT(seq, c.rcv_nxt + wnd)) or \
                (SEQ_LE(c.rcv_nxt, seq + seglen - 1) and SEQ_LT(seq + seglen - 1, c.rcv_nxt + wnd))
        if not acceptable:
            if flags & TH_RST:
                # RFC 5961 3.2: "If the RST bit is set and the sequence number is outside the
                # current receive window, silently drop the segment"
                return
            if flags & TH_SYN:
                # RFC 5961 4.2: a SYN, "irrespective of the sequence number", gets a
                # challenge ACK
                self.challenge_ack(c, now)
                return
            if wnd == 0 and seq == c.rcv_nxt:
                # RFC 9293 3.10.7.4: "If the RCV.WND is zero, no segments will be acceptable,
                # but special allowance should be made to accept valid ACKs, URGs, and RSTs"
                plen = 0
                flags &= ~TH_FIN
                c.ack_now = 1
            else:
                # "If an incoming segment is not acceptable, an acknowledgment should be sent
                # in reply (unless the RST bit is set ...)"
                self.cnt.unacceptable += 1
                if SEQ_LE(seq + seglen, c.rcv_nxt):
                    self.cnt.dup_segments += 1
                if c.state == ST_TIME_WAIT and flags & TH_FIN:
                    # RFC 9293 3.10.7.4 eighth, TIME-WAIT: a retransmitted FIN: "Restart the
                    # 2 MSL time-wait timeout"
                    c.tw_at = now + 2 * self.cfg.msl_ns
                    self.arm(c.tw_at)
                c.ack_now = 1
                return
        # RFC 7323 4.3: "If SEG.TSval >= TS.Recent and SEG.SEQ =< Last.ACK.sent then
        # SEG.TSval is copied to TS.Recent"
        if c.ts_ok and o.has & OPT_TS and SEQ_LE(seq, c.last_ack_sent) \
                and SEQ_GE(o.tsval, c.ts_recent):
            c.ts_recent = o.tsval
        # Trim to the window: bytes below RCV.NXT were received already, bytes beyond the
        # right edge are not accepted (and a FIN past it is not seen).
        if SEQ_LT(seq, c.rcv_nxt) and not (flags & TH_SYN):
            cut = c.rcv_nxt - seq
            if cut > plen:
                flags &= ~TH_FIN    # that FIN was received already
                plen = 0
            else:
                paddr += cut
                plen -= cut
            seq = c.rcv_nxt
            self.cnt.dup_segments += 1
            c.ack_now = 1
        if plen and SEQ_GT(seq + plen, c.rcv_nxt + wnd):
            plen = c.rcv_nxt + wnd - seq
            flags &= ~TH_FIN
        # second: the RST bit
        if flags & TH_RST:
            if c.state == ST_TIME_WAIT:
                # RFC 1337 4 (TIME-WAIT assassination, fix F1): "Ignore RST segments in
                # TIME-WAIT state"; the 2 MSL timer ends it
                return
            if seq == c.rcv_nxt:
                # RFC 5961 3.2: "If the RST bit is set and the sequence number exactly
                # matches the next expected sequence number (RCV.NXT), then TCP MUST reset
                # the connection"
                self.cnt.rst_in += 1
                self.conn_closed(c, EV_RESET)
            else:
                # "Otherwise (in the window, not exact), TCP MUST send an ACK (challenge
                # ACK)"
                self.challenge_ack(c, now)
            return
        # fourth: RFC 5961 4.2 a SYN in a synchronized state gets a challenge ACK
        if flags & TH_SYN:
            self.challenge_ack(c, now)
            return
        # fifth: "if the ACK bit is off, drop the segment and return"
        if not (flags & TH_ACK):
            return
        if c.state == ST_SYN_RECEIVED:
            # "If SND.UNA < SEG.ACK =< SND.NXT, then enter ESTABLISHED state ... If the
            # segment acknowledgment is not acceptable, form a reset segment
            # <SEQ=SEG.ACK><CTL=RST>"
            if not (SEQ_LT(c.snd_una, ack) and SEQ_LE(ack, c.snd_max)):
                self.emit_rst(c.lip, c.lport, c.rip, c.rport, ack, 0, 0)
                return
            if c.parent != NO_CONN and \
                    self.listeners[self.conns[c.parent].lidx].aq_n >= \
                    self.listeners[self.conns[c.parent].lidx].backlog:
                # the accept queue is full: drop the ACK; our SYN,ACK will be retransmitted
                self.cnt.accept_queue_full += 1
                return
            # "... and continue processing with the variables below set to:
            # SND.WND <- SEG.WND, SND.WL1 <- SEG.SEQ, SND.WL2 <- SEG.ACK"
            c.snd_wnd = <uint32_t>tcp_win(t) << c.snd_wscale
            c.max_snd_wnd = umax(c.max_snd_wnd, c.snd_wnd)
            c.snd_wl1 = seq
            c.snd_wl2 = ack
            self.established(c, now)
        if not self.ack_input(c, t, o, plen_in, now):
            return
        if not c.in_use or c.state == ST_CLOSED:
            return
        # seventh: the segment text
        if plen and may_receive_data(c.state):
            self.data_input(c, seq, paddr, plen, now)
        # eighth: the FIN bit
        if flags & TH_FIN and c.state != ST_CLOSED and c.state != ST_TIME_WAIT:
            fseq = seq + plen
            if fseq == c.rcv_nxt:
                self.fin_input(c, now)
            elif SEQ_GT(fseq, c.rcv_nxt):
                c.rcv_fin_pending = 1
                c.rcv_fin_seq = fseq
                c.ack_now = 1

    cdef bint ack_input(self, tcp_conn *c, const uint8_t *t, const tcp_opts *o,
                        uint32_t plen, uint64_t now) noexcept nogil:
        """RFC 9293 3.10.7.4 fifth (ESTABLISHED and later). False: drop the segment."""
        cdef uint32_t ack = tcp_ackno(t), seq = tcp_seq(t), acked, freed = 0, data_to, k
        cdef uint32_t win = <uint32_t>tcp_win(t) << c.snd_wscale
        cdef uint8_t flags = tcp_flags(t)
        cdef tcp_frag *f
        if SEQ_GT(ack, c.snd_max):
            # "If the ACK acks something not yet sent (SEG.ACK > SND.NXT), then send an ACK,
            # drop the segment, and return"
            c.ack_now = 1
            return False
        # RFC 5961 5.2: acceptable only if SND.UNA - MAX.SND.WND =< SEG.ACK; "All incoming
        # segments whose ACK value doesn't satisfy the above condition MUST be discarded and
        # an ACK sent back"
        if SEQ_LT(ack, c.snd_una - c.max_snd_wnd):
            self.challenge_ack(c, now)
            return False
        if c.sack_ok and o.has & OPT_SACK:
            for k in range(o.nsack):
                sb_add(c, o.sack[k][0], o.sack[k][1])
        if SEQ_GT(ack, c.snd_una):
            acked = ack - c.snd_una
            # free the acknowledged bytes of the send queue (the FIN and SYN hold none)
            data_to = ack if SEQ_LE(ack, c.snd_end) else c.snd_end
            while c.sq_n:
                f = &c.sq[c.sq_head]
                if SEQ_LE(f.seq + f.len, data_to):
                    freed += f.len
                    c.sq_bytes -= f.len
                    self.pool.unref(f.addr)
                    c.sq_head = (c.sq_head + 1) % SQ_MAX
                    c.sq_n -= 1
                    self.sq_frames -= 1
                elif SEQ_LT(f.seq, data_to):
                    k = data_to - f.seq
                    f.addr += k
                    f.seq += k
                    f.len -= k
                    c.sq_bytes -= k
                    freed += k
                    break
                else:
                    break
            c.bytes_acked += freed
            if c.sq_spliced and freed:
                self.splice_freed(c, freed, now)
            c.snd_una = ack
            if SEQ_LT(c.snd_nxt, c.snd_una):
                c.snd_nxt = c.snd_una
            if SEQ_LT(c.high_rxt, c.snd_una):
                c.high_rxt = c.snd_una
            sb_prune(c)
            c.retries = 0
            if c.timing and SEQ_GE(ack, c.rtt_seq):
                self.rtt_sample(c, now)
            if c.in_recovery:
                if SEQ_GT(ack, c.recover):
                    # RFC 6582 3.2 step 3 (full acknowledgment): "Set cwnd to
                    # min (ssthresh, max(FlightSize, SMSS) + SMSS)" and exit recovery
                    c.in_recovery = 0
                    c.cc.cwnd = umin(c.cc.ssthresh,
                                     umax(flight_size(c), c.snd_mss) + c.snd_mss)
                elif not c.sack_ok:
                    # RFC 6582 3.2 step 4 (partial acknowledgment): retransmit the first
                    # unacknowledged segment, deflate cwnd by the amount acknowledged, add
                    # back SMSS if at least SMSS was acknowledged
                    self.send_at(c, c.snd_una, c.snd_mss, now)
                    c.cc.cwnd = c.cc.cwnd - acked if c.cc.cwnd > acked else c.snd_mss
                    if acked >= c.snd_mss:
                        c.cc.cwnd += c.snd_mss
            elif freed:
                # growth counts data bytes only (not the SYN or FIN)
                c.ops.on_ack(&c.cc, freed, c.srtt, now)
            c.dupacks = 0
            # RFC 6298 5.2: "When all outstanding data has been acknowledged, turn off the
            # retransmission timer"; 5.3: "When an ACK is received that acknowledges new
            # data, restart the retransmission timer"
            c.rtx_at = NO_DEADLINE if c.snd_una == c.snd_max else now + c.rto
            self.arm(c.rtx_at)
            if freed and c.sq_bytes < self.cfg.snd_buf:
                self.event(c, EV_WRITABLE)
            if c.fin_queued and SEQ_GT(c.snd_una, c.snd_end):
                # our FIN is acknowledged
                if c.state == ST_FIN_WAIT_1:
                    # RFC 9293 3.10.7.4: "if the FIN segment is now acknowledged, then enter
                    # FIN-WAIT-2 and continue processing in that state"
                    self.set_state(c, ST_FIN_WAIT_2)
                elif c.state == ST_CLOSING:
                    # "if the ACK acknowledges our FIN, then enter the TIME-WAIT state"
                    self.time_wait(c, now)
                elif c.state == ST_LAST_ACK:
                    # "If our FIN is now acknowledged, delete the TCB, enter the CLOSED state"
                    self.conn_closed(c, EV_CLOSED)
                    return False
        elif ack == c.snd_una and plen == 0 and not (flags & (TH_SYN | TH_FIN)) \
                and win == c.snd_wnd and c.snd_max != c.snd_una:
            # RFC 5681 2: a duplicate ACK (no data, no window change, data outstanding)
            c.dupacks += 1
            if c.in_recovery and not c.sack_ok:
                # step 3 of RFC 6582 3.2: "For each additional duplicate ACK received ...
                # increment cwnd by SMSS" (inflation)
                c.cc.cwnd += c.snd_mss
        if not c.in_recovery and SEQ_GT(c.snd_una, c.recover) and c.snd_max != c.snd_una \
                and (c.dupacks >= 3 or (c.sack_ok and sb_is_lost(c, c.snd_una))):
            # RFC 6582 3.2 step 2 / RFC 6675 5 (with SACK, also when IsLost(HighACK + 1)):
            # ssthresh from the CC module, record recover (RecoveryPoint = HighData),
            # retransmit the first unacknowledged segment
            c.ops.on_loss(&c.cc, flight_size(c), now)
            c.recover = c.snd_max - 1
            c.in_recovery = 1
            self.cnt.fast_retransmits += 1
            k = self.send_at(c, c.snd_una, c.snd_mss, now)
            c.high_rxt = c.snd_una + k
            if not c.sack_ok:
                # RFC 6582: cwnd = ssthresh + 3*SMSS (the three segments that left)
                c.cc.cwnd = c.cc.ssthresh + 3 * c.snd_mss
        # "If SND.UNA =< SEG.ACK =< SND.NXT, the send window should be updated. If
        # (SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK)), set
        # SND.WND <- SEG.WND, set SND.WL1 <- SEG.SEQ, and set SND.WL2 <- SEG.ACK"
        if SEQ_GE(ack, c.snd_una) and (SEQ_LT(c.snd_wl1, seq) or
                                       (c.snd_wl1 == seq and SEQ_LE(c.snd_wl2, ack))):
            c.snd_wnd = win
            c.max_snd_wnd = umax(c.max_snd_wnd, win)
            c.snd_wl1 = seq
            c.snd_wl2 = ack
            if win:
                c.persist_at = NO_DEADLINE
                c.persist_shift = 0
        return True

    cdef void ooo_insert(self, tcp_conn *c, uint32_t seq, uint64_t addr,
                         uint32_t plen) noexcept nogil:
        """Queue [seq, seq+plen) out of order, trimmed against what is queued already so
        the queue stays sorted with node.seq + node.len <= next.seq (no byte twice)."""
        cdef uint32_t s = seq, e = seq + plen, a, b, i = 0, j
        while i < c.ooo_n:
            a = c.ooo[i].seq
            b = a + c.ooo[i].len
            if SEQ_LE(b, s):
                i += 1
                continue
            if SEQ_GE(a, e):
                break
            if SEQ_LE(a, s) and SEQ_GE(b, e):
                self.cnt.dup_segments += 1      # all of it is queued already
                return
            if SEQ_LE(s, a) and SEQ_GE(e, b):
                # the new segment covers a queued one: that one goes
                self.pool.unref(c.ooo[i].addr)
                c.ooo_bytes -= c.ooo[i].len
                for j in range(i, c.ooo_n - 1):
                    c.ooo[j] = c.ooo[j + 1]
                c.ooo_n -= 1
                self.pool.rx_held -= 1
                continue
            if SEQ_LT(a, s):
                addr += b - s       # a queued one overlaps our head: trim it
                s = b
                i += 1
                continue
            e = a                   # a queued one overlaps our tail: trim it
            break
        if c.ooo_n == OOO_MAX:
            self.cnt.ooo_full += 1
            return
        j = c.ooo_n
        while j > i:
            c.ooo[j] = c.ooo[j - 1]
            j -= 1
        self.pool.ref(addr)
        c.ooo[i].addr = addr
        c.ooo[i].seq = s
        c.ooo[i].len = e - s
        c.ooo_n += 1
        self.pool.rx_held += 1
        c.ooo_bytes += e - s
        c.ooo_last_seq = s

    cdef void data_input(self, tcp_conn *c, uint32_t seq, uint64_t addr, uint32_t plen,
                         uint64_t now) noexcept nogil:
        cdef bint had_ooo = c.ooo_n > 0
        cdef tcp_frag *f
        cdef uint32_t k, j
        if c.released:
            # RFC 1122 4.2.2.13: "if new data is received after CLOSE is called, its TCP
            # SHOULD send a RST to show that data was lost"
            self.emit_rst(c.lip, c.lport, c.rip, c.rport, c.snd_max, 0, 0)
            self.conn_closed(c, EV_RESET)
            return
        if seq == c.rcv_nxt:
            # In-order data comes first: out-of-order data queued beyond it goes (from the
            # far end) while the receive budget is spent, as Linux prunes its ofo queue.
            # Else queues full of holes would hold the budget that the data filling those
            # holes needs.
            while c.ooo_n and self.pool.rx_held >= self.rx_budget():
                c.ooo_n -= 1
                c.ooo_bytes -= c.ooo[c.ooo_n].len
                self.pool.unref(c.ooo[c.ooo_n].addr)
                self.pool.rx_held -= 1
                self.cnt.ooo_pruned += 1
        if self.pool.rx_held >= self.rx_budget() or \
                self.pool.count[FRAME_FREE] + self.pool.count[FRAME_FILL] < self.pool.frame_count // 8:
            # Windows promise more than the pool holds once many are open. Data beyond the
            # receive budget, or that would take the last frames, is dropped, as Linux drops
            # what it cannot charge to tcp_mem: the frames go back to the fill ring, so the
            # ACKs that empty the send queues still arrive, and the peer resends the data.
            self.cnt.pool_drops += 1
            return
        if seq != c.rcv_nxt:
            # RFC 5681 4.2: "A TCP receiver SHOULD send an immediate duplicate ACK when an
            # out-of-order segment arrives"
            self.cnt.ooo_segments += 1
            self.ooo_insert(c, seq, addr, plen)
            c.ack_now = 1
            return
        if c.rq_n == RQ_MAX:
            self.cnt.rq_full += 1
            return
        self.pool.ref(addr)
        f = &c.rq[(c.rq_head + c.rq_n) % RQ_MAX]
        f.addr = addr
        f.seq = seq
        f.len = plen
        c.rq_n += 1
        self.pool.rx_held += 1
        c.rq_bytes += plen
        c.rcv_nxt += plen
        c.bytes_in += plen
        # the hole may be filled: move what now follows in order from the OOO queue
        while c.ooo_n and SEQ_LE(c.ooo[0].seq, c.rcv_nxt) and c.rq_n < RQ_MAX:
            f = &c.ooo[0]
            if SEQ_LE(f.seq + f.len, c.rcv_nxt):
                self.pool.unref(f.addr)
                self.pool.rx_held -= 1      # else its reference moves to the rq
            else:
                k = c.rcv_nxt - f.seq
                c.rq[(c.rq_head + c.rq_n) % RQ_MAX].addr = f.addr + k
                c.rq[(c.rq_head + c.rq_n) % RQ_MAX].seq = c.rcv_nxt
                c.rq[(c.rq_head + c.rq_n) % RQ_MAX].len = f.len - k
                c.rq_n += 1
                c.rq_bytes += f.len - k
                c.rcv_nxt += f.len - k
                c.bytes_in += f.len - k
            c.ooo_bytes -= f.len
            for j in range(c.ooo_n - 1):
                c.ooo[j] = c.ooo[j + 1]
            c.ooo_n -= 1
        self.event(c, EV_READABLE)
        if had_ooo:
            # RFC 5681 4.2: "an immediate ACK when the segment fills in all or part of a gap"
            c.ack_now = 1
        elif c.rcv_nxt - c.last_ack_sent >= 2 * <uint32_t>c.rcv_mss:
            # RFC 9293 3.8.6.3: "an ACK SHOULD be generated for at least every second
            # full-sized segment": one ACK for all that a receive batch brought, as Linux
            # sends one per GRO batch (each ACK sent costs a syscall and the peer a wakeup)
            self.defer_ack(c)
        elif c.delack_at == NO_DEADLINE:
            # "... MUST NOT excessively delay acknowledgments ... the delay MUST be less than
            # 0.5 seconds"
            c.delack_at = now + self.cfg.delack_ns
            self.arm(c.delack_at)
        if c.rcv_fin_pending and c.rcv_nxt == c.rcv_fin_seq:
            self.fin_input(c, now)

    cdef void defer_ack(self, tcp_conn *c) noexcept nogil:
        if c.ack_batched:
            return
        if self.acks_n == self.max_conns:
            c.ack_now = 1       # no room on the list (cids freed and reused): ACK at once
            return
        c.ack_batched = 1
        self.acks[self.acks_n] = <int32_t>(c - self.conns)
        self.acks_n += 1

    cdef void flush_acks(self, uint64_t now) noexcept nogil:
        """End of a receive batch: send the ACKs it made owed (see defer_ack)."""
        cdef uint32_t i
        cdef tcp_conn *c
        for i in range(self.acks_n):
            c = &self.conns[self.acks[i]]
            if not c.in_use or not c.ack_batched:
                continue    # closed since (a reused slot starts with the flag clear)
            c.ack_batched = 0
            if c.rcv_nxt != c.last_ack_sent and c.state != ST_CLOSED and c.state != ST_LISTEN:
                c.ack_now = 1
                self.output(c, now)
        self.acks_n = 0

    cdef void reopen_windows(self, uint64_t now) noexcept nogil:
        """Window updates for the connections whose window the pool held back, once the
        pool has room again (see rcv_window and pool_roomy)."""
        cdef uint32_t i, n = self.pressed_n
        cdef tcp_conn *c
        if n == 0 or not self.pool_roomy():
            return
        for i in range(n):
            c = &self.conns[self.pressed[i]]
            if not c.in_use or not c.wnd_pressed:
                continue    # closed since (a reused slot starts with the flag clear)
            c.wnd_pressed = 0
            if may_receive_data(c.state) and self.window_can_open(c):
                c.ack_now = 1
                self.output(c, now)     # may append it again, past n
        self.pressed_n -= n
        memmove(self.pressed, self.pressed + n, self.pressed_n * sizeof(int32_t))

    cdef void fin_input(self, tcp_conn *c, uint64_t now) noexcept nogil:
        # RFC 9293 3.10.7.4 eighth: "advance RCV.NXT over the FIN, and send an
        # acknowledgment for the FIN"
        c.rcv_nxt += 1
        c.rcv_fin_pending = 0
        c.ack_now = 1
        self.event(c, EV_PEER_CLOSED)
        if c.state == ST_SYN_RECEIVED or c.state == ST_ESTABLISHED:
            # "SYN-RECEIVED STATE, ESTABLISHED STATE: Enter the CLOSE-WAIT state"
            self.set_state(c, ST_CLOSE_WAIT)
        elif c.state == ST_FIN_WAIT_1:
            # "If our FIN has been ACKed ... enter TIME-WAIT ... otherwise, enter the CLOSING
            # state" (an ACK of our FIN took us to FIN-WAIT-2 already)
            self.set_state(c, ST_CLOSING)
        elif c.state == ST_FIN_WAIT_2:
            # "Enter the TIME-WAIT state. Start the time-wait timer"
            self.time_wait(c, now)

    cdef void time_wait(self, tcp_conn *c, uint64_t now) noexcept nogil:
        self.set_state(c, ST_TIME_WAIT)
        c.tw_at = now + 2 * self.cfg.msl_ns
        self.arm(c.tw_at)
        c.rtx_at = c.persist_at = NO_DEADLINE
        self.conn_release_frames(c, False)
        self.splice_ended(c, 0)

    # -- timers -----------------------------------------------------------------------------

    cdef inline void arm(self, uint64_t t) noexcept nogil:
        """Every timer set goes through here: tmin stays a lower bound of them all."""
        if t and (self.tmin == 0 or t < self.tmin):
            self.tmin = t

    cdef uint64_t next_deadline(self) noexcept nogil:
        """When on_timer() may have work (ns), or 0 when no timer is armed. O(1): a lower
        bound, so it may be early (a timer since cancelled or pushed back), never late;
        an early on_timer() finds nothing due and sets the exact value."""
        return self.tmin

    cdef uint64_t exact_deadline(self) noexcept nogil:
        cdef uint64_t best = 0
        cdef uint32_t i
        cdef tcp_conn *c
        for i in range(self.max_conns):
            c = &self.conns[i]
            if c.in_use:
                best = earliest(best, conn_deadline(c))
        return best

    cdef void rto_fire(self, tcp_conn *c, uint64_t now) noexcept nogil:
        cdef bint syn = c.state == ST_SYN_SENT or c.state == ST_SYN_RECEIVED
        self.cnt.rto_fired += 1
        c.rtx_at = NO_DEADLINE
        if c.retries >= (self.cfg.syn_retries if syn else self.cfg.max_retries):
            self.cnt.timeouts += 1
            self.conn_closed(c, EV_TIMEOUT)
            return
        c.retries += 1
        # RFC 6298 5.5: "The host MUST set RTO <- RTO * 2 ("back off the timer")", with the
        # maximum of 2.5
        c.rto = c.rto * 2 if c.rto * 2 < self.cfg.rto_max_ns else self.cfg.rto_max_ns
        if not syn:
            c.ops.on_rto(&c.cc, flight_size(c), now)
            c.in_recovery = 0
            c.recover = c.snd_max - 1
            c.dupacks = 0
            # RFC 2018 8: "after a retransmit timeout the data sender SHOULD turn off all
            # of the SACKed bits" (the receiver may have reneged)
            c.sb_n = 0
        # RFC 6298 5.4: "Retransmit the earliest segment that has not been acknowledged";
        # sending resumes from SND.UNA as the (now one-segment) window allows
        c.timing = 0
        c.snd_nxt = c.snd_una

    cdef void on_timer(self, uint64_t now) noexcept nogil:
        """Fire every timer due at `now` and send what follows. Before next_deadline() it
        returns at once (after the window updates the pool now allows, see rcv_window);
        otherwise one pass over the connections, which also recomputes the exact next
        deadline."""
        cdef uint32_t i
        cdef tcp_conn *c
        cdef uint64_t t, best = 0
        if self.pressed_n:
            self.reopen_windows(now)
        if self.tmin == 0 or now < self.tmin:
            return
        for i in range(self.max_conns):
            c = &self.conns[i]
            if not c.in_use or c.state == ST_CLOSED or c.state == ST_LISTEN:
                continue
            self.timer_conn(c, now)
            if c.in_use:
                best = earliest(best, conn_deadline(c))
        self.tmin = best

    cdef void timer_conn(self, tcp_conn *c, uint64_t now) noexcept nogil:
        """Fire the timers of one connection that are due at `now`."""
        cdef uint64_t t
        if c.tw_at and now >= c.tw_at:
            # RFC 9293 3.10.8: "If the time-wait timeout expires on a connection, delete
            # the TCB, enter the CLOSED state, and return"
            self.conn_closed(c, EV_CLOSED)
            return
        if c.delack_at and now >= c.delack_at:
            c.delack_at = NO_DEADLINE
            c.ack_now = 1
        if c.rtx_at and now >= c.rtx_at:
            self.rto_fire(c, now)
            if not c.in_use or c.state == ST_CLOSED:
                return
        if c.persist_at and now >= c.persist_at:
            # RFC 9293 3.8.6.1 / RFC 1122 4.2.2.17: probe the zero window, backing off;
            # the probe is the segment below the window (SEQ = SND.UNA - 1) that makes
            # the receiver answer with its current window, as Linux does
            self.cnt.persist_probes += 1
            self.emit(c, c.snd_una - 1, TH_ACK, 0, 0, now)
            if c.persist_shift < PERSIST_MAX_SHIFT:
                c.persist_shift += 1
            t = c.rto << c.persist_shift
            c.persist_at = now + (t if t < self.cfg.rto_max_ns else self.cfg.rto_max_ns)
            self.arm(c.persist_at)
        if c.ka_at and now >= c.ka_at:
            if c.snd_max != c.snd_una or c.persist_at or c.state == ST_TIME_WAIT:
                c.ka_at = now + c.ka_idle_ns    # retransmission or persist is at work
                self.arm(c.ka_at)
            elif c.ka_sent >= c.ka_count:
                self.cnt.timeouts += 1
                self.conn_closed(c, EV_TIMEOUT)
                return
            else:
                # RFC 9293 3.8.4: a probe "with SEG.SEQ = SND.NXT-1", which the peer
                # must answer with an ACK
                self.cnt.keepalive_probes += 1
                self.emit(c, c.snd_una - 1, TH_ACK, 0, 0, now)
                c.ka_sent += 1
                c.ka_at = now + c.ka_intvl_ns
                self.arm(c.ka_at)
        self.output(c, now)

    # -- application calls ------------------------------------------------------------------

    cdef int32_t c_connect(self, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport,
                           uint64_t now) noexcept nogil:
        """Active open (RFC 9293 3.10.1); lport 0 takes a free ephemeral port. NO_CONN when
        the 4-tuple is taken, no port is free or the table is full."""
        cdef uint32_t k, span = <uint32_t>self.cfg.eph_hi - self.cfg.eph_lo + 1
        cdef int32_t cid
        cdef tcp_conn *c
        if lport == 0:
            for k in range(span):
                if self.ft_find(lip, self.eph_next, rip, rport) == NO_CONN:
                    lport = self.eph_next
                self.eph_next = self.cfg.eph_lo if self.eph_next == self.cfg.eph_hi \
                    else self.eph_next + 1
                if lport:
                    break
            if lport == 0:
                return NO_CONN
        elif self.ft_find(lip, lport, rip, rport) != NO_CONN:
            return NO_CONN
        cid = self.conn_alloc()
        if cid == NO_CONN:
            return NO_CONN
        c = &self.conns[cid]
        self.conn_init(c, lip, lport, rip, rport, now)
        self.set_state(c, ST_SYN_SENT)
        self.ft_insert(cid)
        self.output(c, now)
        return cid

    cdef int32_t c_listen(self, uint32_t lip, uint16_t lport, uint32_t backlog) noexcept nogil:
        cdef int32_t cid, i, slot = -1
        for i in range(MAX_LISTENERS):
            if self.listeners[i].in_use:
                if self.listeners[i].lport == lport and self.listeners[i].lip == lip:
                    return NO_CONN
            elif slot < 0:
                slot = i
        if slot < 0:
            return NO_CONN
        cid = self.conn_alloc()
        if cid == NO_CONN:
            return NO_CONN
        self.conns[cid].lip = lip
        self.conns[cid].lport = lport
        self.conns[cid].lidx = slot
        self.set_state(&self.conns[cid], ST_LISTEN)
        memset(&self.listeners[slot], 0, sizeof(tcp_listener))
        self.listeners[slot].in_use = 1
        self.listeners[slot].cid = cid
        self.listeners[slot].lip = lip
        self.listeners[slot].lport = lport
        self.listeners[slot].backlog = umax(1, umin(backlog, ACCEPTQ_MAX))
        return cid

    cdef int32_t c_accept(self, int32_t lcid) noexcept nogil:
        cdef tcp_listener *li
        cdef int32_t cid
        cdef uint32_t ev
        if lcid < 0 or <uint32_t>lcid >= self.max_conns or self.conns[lcid].state != ST_LISTEN:
            return NO_CONN
        li = &self.listeners[self.conns[lcid].lidx]
        if li.aq_n == 0:
            return NO_CONN
        cid = li.acceptq[li.aq_head]
        li.aq_head = (li.aq_head + 1) % ACCEPTQ_MAX
        li.aq_n -= 1
        self.conns[cid].parent = NO_CONN
        ev = self.conns[cid].ev_pending
        if ev:
            # what happened before accept() (bytes, FIN) is reported now
            self.conns[cid].ev_pending = 0
            self.event(&self.conns[cid], ev)
        return cid

    cdef int64_t c_send(self, int32_t cid, const uint8_t *data, uint32_t n,
                        uint64_t now) noexcept nogil:
        """Copy up to n bytes into the send queue; returns how many were taken (fewer when
        the queue limit or the pool is hit, both counted), or -1 if the connection cannot
        send (closed, or the send side was shut down)."""
        cdef tcp_conn *c = &self.conns[cid]
        cdef uint32_t room, done = 0, k, chunk, used
        cdef uint64_t base, a
        cdef tcp_frag *f
        if not (c.state == ST_SYN_SENT or c.state == ST_SYN_RECEIVED or
                c.state == ST_ESTABLISHED or c.state == ST_CLOSE_WAIT) or c.fin_queued:
            return -1
        room = self.cfg.snd_buf - c.sq_bytes if self.cfg.snd_buf > c.sq_bytes else 0
        if n > room:
            self.cnt.sq_full += 1
            n = room
        # Whole segments per frame (a segment never spans two): every frame holds more
        # than half a frame of data, so SQ_MAX frames always cover snd_buf (see __cinit__).
        chunk = umin(c.snd_mss, self.pool.frame_size)
        chunk = self.pool.frame_size // chunk * chunk
        while done < n:
            f = &c.sq[(c.sq_head + c.sq_n - 1) % SQ_MAX] if c.sq_n else NULL
            if f != NULL:
                base = f.addr - f.addr % self.pool.frame_size
                used = <uint32_t>(f.addr + f.len - base)
            if f != NULL and used < chunk:
                k = umin(chunk - used, n - done)
                memcpy(self.pool.frame_ptr(f.addr + f.len), data + done, k)
                f.len += k
                c.snd_end += k
                c.sq_bytes += k
            else:
                if c.sq_n == SQ_MAX:
                    self.cnt.sq_full += 1
                    break
                # Send queues get at most 3/8 of the pool (receiving has half, the app's
                # frames to send from an eighth), and never the last sixteenth, which is
                # for segments going out: queued data waits (in the network thread) then.
                a = VTL_NO_FRAME
                if self.pool.count[FRAME_FREE] > self.pool.frame_count // 16 and \
                        self.sq_frames < self.pool.frame_count // 8 * 3:
                    a = self.pool.alloc_frame()
                if a == VTL_NO_FRAME:
                    self.cnt.no_frames += 1
                    break
                k = umin(chunk, n - done)
                self.zc_off[self.pool.frame_index(a)] = 0   # holds no received segment
                memcpy(self.pool.frame_ptr(a), data + done, k)
                self.sq_push(c, a, k)
            done += k
        self.output(c, now)
        return done

    cdef void sq_push(self, tcp_conn *c, uint64_t addr, uint32_t n) noexcept nogil:
        """A frame joins the send queue's tail with the next n bytes of the stream, at addr;
        the caller's reference on it becomes the queue's."""
        cdef tcp_frag *f = &c.sq[(c.sq_head + c.sq_n) % SQ_MAX]
        f.addr = addr
        f.seq = c.snd_end
        f.len = n
        c.sq_n += 1
        self.sq_frames += 1
        c.snd_end += n
        c.sq_bytes += n

    cdef int64_t c_send_frame(self, int32_t cid, uint64_t addr, uint32_t n,
                              uint64_t now) noexcept nogil:
        """Take the n bytes at UMEM address addr into the send queue without a copy: the
        caller's reference on their frame becomes the queue's. Only more than half a frame
        and at most one segment's worth, when the queue has room for all of it: then the
        segment goes out of that frame with its headers written in front of the bytes
        (pop_out_inplace), so the caller leaves room there. Returns n; 0 when it cannot be
        taken so (the caller still holds the frame, and may copy with c_send); -1 if the
        connection cannot send."""
        cdef tcp_conn *c = &self.conns[cid]
        if not (c.state == ST_SYN_SENT or c.state == ST_SYN_RECEIVED or
                c.state == ST_ESTABLISHED or c.state == ST_CLOSE_WAIT) or c.fin_queued:
            return -1
        # The same limits as c_send's: the frame already exists, but frames held by send
        # queues are frames receiving cannot have. Less than half a frame of bytes is
        # copied (into a frame other small sends may share), so that SQ_MAX frames still
        # cover snd_buf.
        if n * 2 <= self.pool.frame_size or n > c.snd_mss or c.sq_n == SQ_MAX or \
                c.sq_bytes + n > self.cfg.snd_buf or \
                self.sq_frames >= self.pool.frame_count // 8 * 3:
            return 0
        self.zc_off[self.pool.frame_index(addr)] = <uint16_t>(addr % self.pool.frame_size)
        self.sq_push(c, addr, n)
        self.output(c, now)
        return n

    cdef uint32_t c_peek(self, int32_t cid, tcp_frag *out, uint32_t max_n) noexcept nogil:
        """The unconsumed in-order bytes as up to max_n fragments (addr, len), no copy."""
        cdef tcp_conn *c = &self.conns[cid]
        cdef uint32_t i, n = umin(max_n, c.rq_n)
        for i in range(n):
            out[i] = c.rq[(c.rq_head + i) % RQ_MAX]
        return n

    cdef void c_consume(self, int32_t cid, uint32_t n, uint64_t now) noexcept nogil:
        """The app is done with the first n unconsumed bytes: fully consumed fragments give
        their frame references back; the window may reopen (then an update is sent)."""
        cdef tcp_conn *c = &self.conns[cid]
        cdef tcp_frag *f
        cdef uint32_t cur
        while n and c.rq_n:
            f = &c.rq[c.rq_head]
            if n >= f.len:
                n -= f.len
                c.rq_bytes -= f.len
                self.pool.unref(f.addr)
                self.pool.rx_held -= 1
                c.rq_head = (c.rq_head + 1) % RQ_MAX
                c.rq_n -= 1
            else:
                f.addr += n
                f.seq += n
                f.len -= n
                c.rq_bytes -= n
                n = 0
        if may_receive_data(c.state) and self.window_can_open(c):
            cur = c.rcv_adv - c.rcv_nxt if SEQ_GT(c.rcv_adv, c.rcv_nxt) else 0
            # a window update when the advertised window had closed below half the buffer;
            # otherwise the next ACK carries the larger window
            if cur < self.cfg.rcv_buf // 2:
                c.ack_now = 1
                self.output(c, now)

    cdef void c_shutdown(self, int32_t cid, uint64_t now) noexcept nogil:
        """No more data from the app: the FIN follows the queued bytes (RFC 9293 3.10.4)."""
        cdef tcp_conn *c = &self.conns[cid]
        if c.fin_queued:
            return
        if c.state == ST_SYN_SENT:
            # "SYN-SENT STATE: Delete the TCB and return 'error: closing' responses to any
            # queued SENDs, or RECEIVEs"
            self.conn_closed(c, EV_CLOSED)
            return
        if c.state == ST_SYN_RECEIVED:
            c.fin_queued = 1        # sent once ESTABLISHED (see established())
        elif c.state == ST_ESTABLISHED:
            # "ESTABLISHED STATE: Queue this until all preceding SENDs have been
            # segmentized, then form a FIN segment and send it. In any case, enter
            # FIN-WAIT-1 state."
            c.fin_queued = 1
            self.set_state(c, ST_FIN_WAIT_1)
        elif c.state == ST_CLOSE_WAIT:
            # "CLOSE-WAIT STATE: Queue this request until all preceding SENDs have been
            # segmentized; then send a FIN segment, enter LAST-ACK state."
            c.fin_queued = 1
            self.set_state(c, ST_LAST_ACK)
        else:
            return
        self.output(c, now)

    cdef void c_close(self, int32_t cid, uint64_t now) noexcept nogil:
        """The app lets go of the handle: the FIN goes out after the queued data and the
        slot is freed once the connection is CLOSED. With unread bytes, or when data comes
        after the close, the connection is reset instead (RFC 1122 4.2.2.13). Closing a
        listener aborts the children it has not handed out."""
        cdef tcp_conn *c = &self.conns[cid]
        cdef tcp_listener *li
        cdef uint32_t i
        if not c.in_use or c.released:
            return
        c.released = 1
        if c.state == ST_LISTEN:
            li = &self.listeners[c.lidx]
            for i in range(self.max_conns):
                if self.conns[i].in_use and self.conns[i].parent == cid:
                    self.conns[i].parent = NO_CONN
                    self.conns[i].released = 1
                    self.c_abort(<int32_t>i, now)
            li.in_use = 0
            self.set_state(c, ST_CLOSED)
            self.conn_free(c)
            return
        if c.state == ST_CLOSED:
            self.conn_free(c)
            return
        if c.rq_bytes:
            # RFC 1122 4.2.2.13: "If such a host issues a CLOSE call while received data is
            # still pending in TCP ... its TCP SHOULD send a RST to show that data was lost"
            self.c_abort(cid, now)
            return
        self.c_shutdown(cid, now)

    cdef void c_abort(self, int32_t cid, uint64_t now) noexcept nogil:
        """ABORT (RFC 9293 3.10.5): in a synchronized state send <SEQ=SND.NXT><CTL=RST>,
        then CLOSED; queued data is dropped."""
        cdef tcp_conn *c = &self.conns[cid]
        if c.state == ST_CLOSED or c.state == ST_LISTEN:
            return
        if c.state != ST_SYN_SENT and c.state != ST_TIME_WAIT:
            self.emit_rst(c.lip, c.lport, c.rip, c.rport, c.snd_max, 0, 0)
        self.conn_closed(c, EV_RESET)

    cdef void c_set_nodelay(self, int32_t cid, bint on, uint64_t now) noexcept nogil:
        self.conns[cid].nodelay = on
        if on and self.conns[cid].state != ST_CLOSED:
            self.output(&self.conns[cid], now)      # send what Nagle held back

    cdef void c_set_cc(self, int32_t cid, const tcp_cc_ops *ops) noexcept nogil:
        """Put another congestion control module behind this connection: its own state
        starts afresh, cwnd and ssthresh carry over."""
        cdef tcp_conn *c = &self.conns[cid]
        cdef uint32_t cwnd = c.cc.cwnd, ssthresh = c.cc.ssthresh
        c.ops = ops
        ops.init(&c.cc, c.snd_mss)
        c.cc.cwnd = cwnd
        c.cc.ssthresh = ssthresh

    cdef void c_set_keepalive(self, int32_t cid, uint64_t idle_ns, uint64_t intvl_ns,
                              uint8_t count, uint64_t now) noexcept nogil:
        """Keep-alive (RFC 9293 3.8.4, off by default): after idle_ns without a segment
        from the peer, probe every intvl_ns; count unanswered probes end the connection
        (ETIMEDOUT). idle_ns 0 turns it off."""
        cdef tcp_conn *c = &self.conns[cid]
        c.ka_idle_ns = idle_ns
        c.ka_intvl_ns = intvl_ns
        c.ka_count = count
        c.ka_sent = 0
        c.ka_at = now + idle_ns if idle_ns and c.state != ST_CLOSED else NO_DEADLINE

    # -- splice -----------------------------------------------------------------------------
    # Two connections joined in the network thread (seed 004, 5.2): the frames one receives
    # in order move to the other's send queue as they are (their references move with
    # them), are sent from there with new headers written in front of the payload
    # (pop_out_inplace) and stay until the other's peer acknowledges them, so
    # retransmissions come from them too. No payload byte is copied on the way.

    cdef int c_splice(self, int32_t a, int32_t b, uint64_t now) noexcept nogil:
        """Join a and b, both ways: the bytes each receives (those not consumed yet
        included) go out on the other, a FIN follows its bytes, and a reset or a timeout of
        one resets the other (with splice_soft, which an inspector sets, the pair comes
        apart instead). EV_SPLICE_DONE is reported on both once both have ended (CLOSED or
        TIME-WAIT), or when they come apart. Returns 0, or -1 if either is not an open
        connection the app holds, or is spliced already."""
        cdef tcp_conn *ca
        cdef tcp_conn *cb
        if a == b or a < 0 or b < 0 or <uint32_t>a >= self.max_conns or \
                <uint32_t>b >= self.max_conns:
            return -1
        ca = &self.conns[a]
        cb = &self.conns[b]
        if not ca.in_use or not cb.in_use or ca.released or cb.released or \
                ca.splice != NO_CONN or cb.splice != NO_CONN or ca.fin_queued or \
                cb.fin_queued or not synchronized_can_send(ca.state) or \
                not synchronized_can_send(cb.state) or ca.parent != NO_CONN or \
                cb.parent != NO_CONN:
            return -1
        ca.splice = b
        cb.splice = a
        ca.sq_spliced = cb.sq_spliced = 1
        # segments keep the sizes they came in with: Nagle would only add delay
        ca.nodelay = cb.nodelay = 1
        self.splice_held += ca.sq_bytes + cb.sq_bytes
        self.splice_run(ca, now)
        self.splice_run(cb, now)
        return 0

    cdef void c_splice_gate(self, int32_t cid, uint32_t seq, uint64_t now) noexcept nogil:
        """Let spliced cid's bytes go on only up to sequence number seq (an inspector
        holds back what it has not vetted); bytes before it go now."""
        cdef tcp_conn *c = &self.conns[cid]
        if c.splice == NO_CONN:
            return
        c.splice_gated = 1
        c.splice_gate = seq
        self.splice_run(c, now)
        # A window update only when the window can at least double, as for ungated bytes:
        # one at every opening was a pure ACK per request (it cost an inspected proxy
        # about 8 % of its requests/s under wrk); else the next ACK carries the window.
        if c.splice != NO_CONN:
            self.splice_update(c, now)

    cdef void c_unsplice(self, int32_t cid) noexcept nogil:
        """End cid's splice without touching either connection (an inspector answers
        the client itself): both report EV_SPLICE_DONE and go on alone; what was queued
        goes out, what is received stays for the app."""
        cdef tcp_conn *c = &self.conns[cid]
        cdef tcp_conn *p
        if c.splice == NO_CONN:
            return
        p = &self.conns[c.splice]
        p.splice = c.splice = NO_CONN
        p.splice_gated = c.splice_gated = 0
        p.splice_soft = c.splice_soft = 0
        p.splice_hold_fin = c.splice_hold_fin = 0
        self.event(c, EV_SPLICE_DONE)
        self.event(p, EV_SPLICE_DONE)

    cdef uint32_t splice_room(self, tcp_conn *a) noexcept nogil:
        """The window a may offer: adaptive alpha, w_s = w_c / (1 + 9 b / b0) with w_c the
        window of the peer downstream and b the bytes held for it, so a slow reader there
        throttles the sender here; never past the per-splice and the global caps."""
        cdef tcp_conn *b = &self.conns[a.splice]
        cdef uint64_t held = <uint64_t>b.sq_bytes + a.rq_bytes
        cdef uint64_t ws = <uint64_t>b.snd_wnd * self.cfg.splice_b0 // \
            (self.cfg.splice_b0 + 9 * held)
        cdef uint64_t room = self.cfg.splice_pair_cap - held \
            if held < self.cfg.splice_pair_cap else 0
        if room < ws:
            ws = room
        room = self.cfg.splice_cap - self.splice_held \
            if self.splice_held < self.cfg.splice_cap else 0
        if room < ws:
            ws = room
            self.splice_over = 1    # splice_freed() reopens windows once under the cap
        return <uint32_t>ws if ws < 0xFFFFFFFFu else 0xFFFFFFFFu

    cdef void splice_pump(self, tcp_conn *a, uint64_t now) noexcept nogil:
        """Move a's in-order fragments to its splice peer's send queue, as far as that
        queue and the send queues' share of the pool allow (the rest waits in a's receive
        queue and keeps a's window shut); then pass a's FIN on once its bytes have gone."""
        cdef tcp_conn *b = &self.conns[a.splice]
        cdef tcp_frag *f
        cdef tcp_frag *g
        cdef uint32_t moved = 0, k
        if not synchronized_can_send(b.state) or b.fin_queued:
            return
        while a.rq_n and b.sq_n < SQ_MAX and \
                self.sq_frames < self.pool.frame_count // 8 * 3:
            f = &a.rq[a.rq_head]
            g = &b.sq[(b.sq_head + b.sq_n) % SQ_MAX]
            if a.splice_gated and SEQ_GT(f.seq + f.len, a.splice_gate):
                if SEQ_LE(a.splice_gate, f.seq):
                    break
                # the gate cuts this fragment: its front goes, on a reference of its own
                k = a.splice_gate - f.seq
                self.pool.ref(f.addr)
                g.addr = f.addr
                g.seq = b.snd_end
                g.len = k
                f.addr += k
                f.seq += k
                f.len -= k
            else:
                g.addr = f.addr
                g.seq = b.snd_end
                g.len = f.len
                self.pool.rx_held -= 1
                a.rq_head = (a.rq_head + 1) % RQ_MAX
                a.rq_n -= 1
            b.sq_n += 1
            b.snd_end += g.len
            b.sq_bytes += g.len
            self.sq_frames += 1
            moved += g.len
            a.rq_bytes -= g.len
        if moved:
            a.splice_moved += moved
            self.splice_held += moved
            if self.splice_held > self.cnt.splice_held_peak:
                self.cnt.splice_held_peak = self.splice_held
            self.cnt.splice_bytes += moved
            self.output(b, now)
        if a.rq_n == 0 and not a.splice_fin and not a.splice_hold_fin and \
                (a.state == ST_CLOSE_WAIT or a.state == ST_CLOSING or
                 a.state == ST_LAST_ACK or a.state == ST_TIME_WAIT):
            a.splice_fin = 1
            self.c_shutdown(a.splice, now)

    cdef void splice_run(self, tcp_conn *c, uint64_t now) noexcept nogil:
        """After a segment on spliced c: its new bytes go to the peer; the room its ACKs
        freed takes the peer's waiting bytes; the peer's window may open again."""
        cdef tcp_conn *p = &self.conns[c.splice]
        self.splice_pump(c, now)
        if c.splice != NO_CONN:
            self.splice_pump(p, now)
        if c.splice != NO_CONN:
            self.splice_update(p, now)

    cdef void splice_update(self, tcp_conn *a, uint64_t now) noexcept nogil:
        """A window update for a when its window can at least double: the ACKs of the data
        flowing carry smaller changes."""
        cdef uint32_t cur
        if not may_receive_data(a.state) or not self.window_can_open(a):
            return
        cur = a.rcv_adv - a.rcv_nxt if SEQ_GT(a.rcv_adv, a.rcv_nxt) else 0
        if cur < self.free_window(a) // 2:
            a.ack_now = 1
            self.output(a, now)

    cdef void splice_freed(self, tcp_conn *c, uint32_t n, uint64_t now) noexcept nogil:
        """n bytes of c's spliced send queue were acknowledged. Once all splices hold at
        most half the global cap again, the windows it held back are reopened."""
        cdef uint32_t i
        self.splice_held -= n
        if self.splice_over and self.splice_held <= self.cfg.splice_cap // 2:
            self.splice_over = 0
            for i in range(self.max_conns):
                if self.conns[i].in_use and self.conns[i].splice != NO_CONN and \
                        &self.conns[i] != c:
                    self.splice_update(&self.conns[i], now)

    cdef void splice_ended(self, tcp_conn *c, uint32_t ev) noexcept nogil:
        """c reached CLOSED (ev) or TIME-WAIT (ev 0). A reset or a timeout resets the peer;
        when both have ended the splice is undone and both report EV_SPLICE_DONE."""
        cdef tcp_conn *p
        if c.splice == NO_CONN:
            return
        p = &self.conns[c.splice]
        if (ev == EV_RESET or ev == EV_TIMEOUT) and p.state != ST_CLOSED and \
                p.state != ST_TIME_WAIT:
            if c.splice_soft:
                # an inspector decides what the other side gets (a 502, a clean close)
                self.c_unsplice(<int32_t>(c - self.conns))
            else:
                self.c_abort(c.splice, 0)   # a RST needs no clock; its call ends the pair
            return
        if (c.state == ST_CLOSED or c.state == ST_TIME_WAIT) and \
                (p.state == ST_CLOSED or p.state == ST_TIME_WAIT):
            p.splice = NO_CONN
            c.splice = NO_CONN
            self.event(c, EV_SPLICE_DONE)
            self.event(p, EV_SPLICE_DONE)

    cdef uint32_t pop_out_inplace(self, uint32_t hroom, uint64_t *ip_addr) noexcept nogil:
        """Send the next pending segment from its payload's own frame if the headers fit in
        front of the payload: a received frame whose segment starts where its payload did
        (so only headers are in front of it, see zc_off), or an app's frame taken by
        reference (c_send_frame) whose segment starts where the app's bytes did, held by
        its send queue and this
        segment only (not on the TX ring, not waiting there in a batch, not read by the app
        or a second fragment), with `hroom` bytes more for the link header. Writes the IPv4
        and TCP headers there and returns the packet's length, *ip_addr its UMEM address;
        the segment's reference on the frame passes to the caller. 0 otherwise: then
        pop_out() copies it."""
        cdef tcp_seg_out *s
        cdef uint32_t idx, off, hlen
        cdef uint8_t *ip
        if self.out_n == 0:
            return 0
        s = &self.out[self.out_head]
        if s.len == 0:
            return 0
        idx = self.pool.frame_index(s.addr)
        off = <uint32_t>(s.addr % self.pool.frame_size)
        hlen = IPV4_MIN_HLEN + TCP_MIN_HLEN + s.optlen
        if self.zc_off[idx] == 0 or self.zc_off[idx] != off or off < hroom + hlen or \
                self.pool.state[idx] != FRAME_HELD or self.pool.refcnt[idx] != 2:
            return 0
        ip = self.pool.frame_ptr(s.addr - hlen)
        ipv4_write(ip, <uint16_t>(hlen + s.len), self.ip_ident, IPPROTO_TCP_, s.lip, s.rip)
        self.ip_ident += 1
        tcp_write(ip + IPV4_MIN_HLEN, s.lport, s.rport, s.seq, s.ack, s.flags, s.win, s.opts,
                  s.optlen)
        tcp_set_csum(ip + IPV4_MIN_HLEN, <uint16_t>(hlen - IPV4_MIN_HLEN + s.len), s.lip, s.rip)
        ip_addr[0] = s.addr - hlen
        self.out_head = (self.out_head + 1) % self.out_cap
        self.out_n -= 1
        if self.conns[s.cid].sq_spliced:
            self.cnt.splice_inplace += 1
        else:
            self.cnt.send_inplace += 1
        return hlen + s.len

    # -- Python API: tests and the control plane --------------------------------------------

    cdef tcp_conn *_conn(self, int cid) except NULL:
        if cid < 0 or <uint32_t>cid >= self.max_conns or not self.conns[cid].in_use:
            raise ValueError(f"no connection {cid}")
        return &self.conns[cid]

    def feed(self, const uint8_t[:] packet, uint64_t now):
        """Receive one IPv4+TCP packet (bytes). Returns True if it passed validate()."""
        cdef uint64_t a
        cdef uint32_t n = len(packet)
        cdef int r
        if n == 0 or n > self.pool.frame_size:
            raise ValueError(f"a {n}-byte packet does not fit a frame")
        a = self.pool.alloc_frame()
        if a == VTL_NO_FRAME:
            raise MemoryError("frame pool exhausted")
        memcpy(self.pool.frame_ptr(a), &packet[0], n)
        r = self.validate(self.pool.frame_ptr(a), n)
        if r == 0:
            self.input(a, now)
            self.flush_acks(now)    # a batch of one
        self.pool.unref(a)
        return r == 0

    def segments(self, bint inplace=False, list on_tx=None):
        """Pop every pending segment as IPv4+TCP packet bytes; with `inplace`, those that
        can be are built in their payload's frame (pop_out_inplace), as the network thread
        does. Such a frame is sent at once, unless `on_tx` is a list: then it stays on the
        (pretend) TX ring, its address appended there, until the caller completes it
        (FramePool._complete)."""
        cdef uint8_t buf[4096]
        cdef uint32_t n
        cdef uint64_t a
        out = []
        while True:
            if inplace:
                n = self.pop_out_inplace(0, &a)
                if n:
                    out.append(PyBytes_FromStringAndSize(<char *>self.pool.frame_ptr(a), n))
                    if on_tx is None:
                        self.pool.unref(a)
                    else:
                        self.pool.to_tx(a)
                        on_tx.append(a)
                    continue
            n = self.pop_out(buf, sizeof(buf))
            if n == 0:
                return out
            out.append(PyBytes_FromStringAndSize(<char *>buf, n))

    def events(self):
        """Pop pending events: a list of (cid, set of event names)."""
        cdef uint32_t mask
        cdef int32_t cid
        out = []
        while True:
            cid = self.pop_event(&mask)
            if cid == NO_CONN:
                return out
            out.append((cid, {name for bit, name in EVENT_NAMES.items() if mask & bit}))

    def connect(self, str lip, uint16_t lport, str rip, uint16_t rport, uint64_t now):
        cdef int32_t cid = self.c_connect(_ip(lip), lport, _ip(rip), rport, now)
        if cid == NO_CONN:
            raise OSError("connect: 4-tuple in use, no free port, or connection table full")
        return cid

    def listen(self, str lip, uint16_t lport, uint32_t backlog=128):
        cdef int32_t cid = self.c_listen(_ip(lip), lport, backlog)
        if cid == NO_CONN:
            raise OSError("listen: address in use or too many listeners")
        return cid

    def accept(self, int lcid):
        cdef int32_t cid = self.c_accept(lcid)
        return None if cid == NO_CONN else cid

    def send(self, int cid, const uint8_t[:] data, uint64_t now):
        self._conn(cid)
        if len(data) == 0:
            return 0
        cdef int64_t n = self.c_send(cid, &data[0], len(data), now)
        if n < 0:
            raise OSError(f"send on connection {cid} in state {self.state(cid)}")
        return n

    def send_frame(self, int cid, uint64_t addr, uint32_t n, uint64_t now):
        """c_send_frame: the n bytes at UMEM address addr (a frame the caller holds), by
        reference. Returns n (the frame is the engine's now), or 0 (still the caller's)."""
        self._conn(cid)
        cdef int64_t r = self.c_send_frame(cid, addr, n, now)
        if r < 0:
            raise OSError(f"send on connection {cid} in state {self.state(cid)}")
        return r

    def peek(self, int cid):
        """Unconsumed bytes as [(umem_addr, length)], straight from the received frames."""
        cdef tcp_frag frags[RQ_MAX]
        cdef uint32_t i, n
        self._conn(cid)
        n = self.c_peek(cid, frags, RQ_MAX)
        return [(frags[i].addr, frags[i].len) for i in range(n)]

    def recv(self, int cid, uint64_t now, int max_bytes=-1):
        """Copy out (and consume) up to max_bytes unconsumed bytes (all with -1)."""
        chunks = []
        total = 0
        for addr, n in self.peek(cid):
            if max_bytes >= 0 and total + n > max_bytes:
                n = max_bytes - total
            if n <= 0:
                break
            chunks.append(self.pool.read(addr, n))
            total += n
        self.c_consume(cid, total, now)
        return b"".join(chunks)

    def consume(self, int cid, uint32_t n, uint64_t now):
        self._conn(cid)
        self.c_consume(cid, n, now)

    def splice(self, int a, int b, uint64_t now):
        if self.c_splice(a, b, now) != 0:
            raise OSError(f"cannot splice {a} and {b}: both must be open connections the "
                          "app holds, neither spliced nor shut down")

    def splice_gate(self, int cid, uint32_t seq, uint64_t now):
        self._conn(cid)
        self.c_splice_gate(cid, seq, now)

    def unsplice(self, int cid):
        self._conn(cid)
        self.c_unsplice(cid)

    def shutdown(self, int cid, uint64_t now):
        self._conn(cid)
        self.c_shutdown(cid, now)

    def close(self, int cid, uint64_t now):
        self._conn(cid)
        self.c_close(cid, now)

    def abort(self, int cid, uint64_t now):
        self._conn(cid)
        self.c_abort(cid, now)

    def set_cc(self, int cid, str name):
        if self._conn(cid).state == ST_LISTEN:
            raise ValueError("a listener has no congestion control")
        self.c_set_cc(cid, _cc_ops(name))

    def set_nodelay(self, int cid, bint on, uint64_t now):
        self._conn(cid)
        self.c_set_nodelay(cid, on, now)

    def set_keepalive(self, int cid, double idle, double interval=75.0, int count=9,
                      uint64_t now=0):
        self._conn(cid)
        if idle < 0 or interval <= 0 or not 0 < count < 256:
            raise ValueError("keep-alive needs idle >= 0, interval > 0, 0 < count < 256")
        self.c_set_keepalive(cid, <uint64_t>(idle * 1e9), <uint64_t>(interval * 1e9),
                             <uint8_t>count, now)

    def on_timer_(self, uint64_t now):
        self.on_timer(now)

    def deadline(self):
        """The earliest armed timer in ns (exact, by a scan), or None."""
        cdef uint64_t t = self.exact_deadline()
        return None if t == 0 else t

    def deadline_hint(self):
        """What next_deadline() tells the network thread: a lower bound, or None."""
        cdef uint64_t t = self.next_deadline()
        return None if t == 0 else t

    def exists(self, int cid):
        return 0 <= cid < <int>self.max_conns and self.conns[cid].in_use == 1

    def state(self, int cid):
        return STATE_NAMES[self._conn(cid).state]

    def info(self, int cid):
        cdef tcp_conn *c = self._conn(cid)
        return {
            "state": STATE_NAMES[c.state], "iss": c.iss, "irs": c.irs,
            "snd_una": c.snd_una, "snd_nxt": c.snd_nxt, "snd_max": c.snd_max,
            "snd_end": c.snd_end, "snd_wnd": c.snd_wnd, "rcv_nxt": c.rcv_nxt,
            "rcv_wnd": c.rcv_adv - c.rcv_nxt if SEQ_GT(c.rcv_adv, c.rcv_nxt) else 0,
            "snd_mss": c.snd_mss, "rcv_mss": c.rcv_mss, "ws_ok": bool(c.ws_ok),
            "ts_ok": bool(c.ts_ok), "sack_ok": bool(c.sack_ok),
            "snd_wscale": c.snd_wscale, "rcv_wscale": c.rcv_wscale,
            "cwnd": c.cc.cwnd, "ssthresh": c.cc.ssthresh,
            "cc": c.ops.name.decode() if c.ops != NULL else None,
            "in_recovery": bool(c.in_recovery), "srtt_ns": c.srtt, "rto_ns": c.rto,
            "rq_bytes": c.rq_bytes, "rq_frags": c.rq_n, "ooo_frags": c.ooo_n,
            "ooo_bytes": c.ooo_bytes, "sq_bytes": c.sq_bytes, "sq_frames": c.sq_n,
            "bytes_in": c.bytes_in, "bytes_acked": c.bytes_acked,
            "retransmits": c.retransmits, "ts_recent": c.ts_recent,
            "sack_board": [(c.sb[i][0], c.sb[i][1]) for i in range(c.sb_n)],
            "sack_board_full": c.sb_full,
            "ooo": [(c.ooo[i].seq, c.ooo[i].len) for i in range(c.ooo_n)],
            "timers": {"rtx": c.rtx_at, "persist": c.persist_at, "delack": c.delack_at,
                       "time_wait": c.tw_at, "keepalive": c.ka_at},
            "nodelay": bool(c.nodelay),
            "splice": c.splice if c.splice != NO_CONN else None,
            "splice_moved": c.splice_moved,
        }

    @property
    def rcv_buf(self):
        """Bytes of receive buffer per connection (the most the window offers)."""
        return self.cfg.rcv_buf

    @property
    def snd_buf(self):
        """Bytes of send queue per connection (what an app may have unacknowledged)."""
        return self.cfg.snd_buf

    def counters(self):
        d = dict(self.cnt)
        d["conns"] = self.nconns
        d["conns_peak"] = self.nconns_peak
        d["pending_out"] = self.out_n
        d["splice_held"] = self.splice_held
        return d

    def open_states(self):
        """{state: count} of the connections that hold a slot (listeners included)."""
        cdef uint32_t i
        out = {}
        for i in range(self.max_conns):
            if self.conns[i].in_use:
                name = STATE_NAMES[self.conns[i].state]
                out[name] = out.get(name, 0) + 1
        return out

    def transition_counts(self):
        """{(from, to): count} of every state change so far."""
        cdef int a, b
        return {(STATE_NAMES[a], STATE_NAMES[b]): self.transitions[a][b]
                for a in range(ST_NSTATES) for b in range(ST_NSTATES) if self.transitions[a][b]}


cdef const tcp_cc_ops *_cc_ops(str name) except NULL:
    if name == "newreno":
        return &tcp_cc_newreno
    if name == "cubic":
        return &tcp_cc_cubic
    raise ValueError(f"unknown congestion control {name!r} (newreno, cubic)")


cdef uint32_t _ip(str s) except? 0:
    return int.from_bytes(socket.inet_aton(s), "little")


def parse_options(const uint8_t[:] header):
    """Parse the options of a TCP header (bytes, data offset as given; the header must be
    complete): a dict of what was found, or None when the option list is malformed."""
    cdef tcp_opts o
    cdef int k
    if len(header) < TCP_MIN_HLEN or tcp_hlen(&header[0]) < TCP_MIN_HLEN \
            or tcp_hlen(&header[0]) > len(header):
        raise ValueError("not a complete TCP header")
    if tcp_parse_opts(&header[0], &o) < 0:
        return None
    d = {}
    if o.has & OPT_MSS:
        d["mss"] = o.mss
    if o.has & OPT_WSCALE:
        d["wscale"] = o.wscale
    if o.has & OPT_SACK_PERM:
        d["sack_perm"] = True
    if o.has & OPT_TS:
        d["ts"] = (o.tsval, o.tsecr)
    if o.has & OPT_SACK:
        d["sack"] = [(o.sack[k][0], o.sack[k][1]) for k in range(o.nsack)]
    return d


def emit_options(dict d):
    """The option bytes tcp_emit_opts() writes for a dict shaped like parse_options()'s."""
    cdef tcp_opts o
    cdef uint8_t buf[TCP_MAX_OPTLEN]
    cdef uint8_t n
    cdef int k
    memset(&o, 0, sizeof(o))
    if "mss" in d:
        o.has |= OPT_MSS
        o.mss = d["mss"]
    if "wscale" in d:
        o.has |= OPT_WSCALE
        o.wscale = d["wscale"]
    if d.get("sack_perm"):
        o.has |= OPT_SACK_PERM
    if "ts" in d:
        o.has |= OPT_TS
        o.tsval, o.tsecr = d["ts"]
    if d.get("sack"):
        o.has |= OPT_SACK
        o.nsack = min(len(d["sack"]), TCP_MAX_SACK)
        for k in range(o.nsack):
            o.sack[k][0], o.sack[k][1] = d["sack"][k]
    n = tcp_emit_opts(buf, &o)
    return PyBytes_FromStringAndSize(<char *>buf, n)


def siphash(bytes key, bytes data):
    """SipHash-2-4 of data under a 16-byte key (the engine's keyed hash, for tests)."""
    if len(key) != 16:
        raise ValueError("the key has 16 bytes")
    return siphash24(<const uint8_t *><char *>data, len(data),
                     int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"))


def cc_trace(str name, uint32_t mss, double w0, double rtt, int rounds, bint loss=True):
    """Drive a congestion control module alone: start in congestion avoidance at w0
    segments, signal one loss at t=0 (if `loss`), then acknowledge a full window every
    RTT for `rounds` RTTs, one ACK per segment. Returns [(t_seconds, cwnd_segments)] at the
    end of each round, plus the module's W_max and K after the loss."""
    cdef tcp_cc cc
    cdef const tcp_cc_ops *ops
    cdef uint64_t now = 1000000000, rtt_ns = <uint64_t>(rtt * 1e9), step
    cdef uint32_t segs, i
    cdef int r
    ops = _cc_ops(name)
    ops.init(&cc, mss)
    cc.cwnd = <uint32_t>(w0 * mss)
    cc.ssthresh = cc.cwnd
    t0 = now
    if loss:
        ops.on_loss(&cc, cc.cwnd, now)
    after = cc.cwnd / mss
    trace = []
    for r in range(rounds):
        segs = cc.cwnd // mss
        step = rtt_ns // (segs if segs else 1)
        for i in range(segs):
            now += step
            ops.on_ack(&cc, mss, rtt_ns, now)
        trace.append(((now - t0) / 1e9, cc.cwnd / mss))
    # CUBIC fixes W_max and K when the avoidance epoch starts (the first ACK after the loss)
    return {"w_max": cc.w_max, "k": cc.k, "cwnd_after_loss": after, "trace": trace}


def bench_rx_append(FramePool pool not None, uint32_t plen, uint64_t packets,
                    bint copy) -> float:
    """Table 3.1 of seed 004, in this engine's terms: ns per in-order segment of plen bytes
    taken by a connection's receive side and consumed again, as data_input() and
    c_consume() do it: a tcp_frag appended to the fragment ring with a frame reference and
    dropped again (zero-copy), or, with `copy`, the payload copied into a linear ring
    buffer of rcv_buf bytes and its tail moved on (mTCP's tcp_ring_buffer). The packets
    are the pool's frames in turn (payload past the headers, as received), so the copies
    read memory that is not all in cache, as the NIC's DMA leaves it."""
    cdef uint32_t nframes = pool.frame_count, i
    cdef uint32_t ring_size = 262144, w = 0
    cdef uint64_t k, t0, t1
    cdef uint64_t *addrs = <uint64_t *>calloc(nframes, sizeof(uint64_t))
    cdef uint8_t *ring = <uint8_t *>calloc(ring_size, 1)
    cdef tcp_frag rq[RQ_MAX]
    cdef uint32_t rq_head = 0, rq_n = 0, rcv_nxt = 0, part
    cdef uint64_t rq_bytes = 0
    cdef tcp_frag *f
    if addrs == NULL or ring == NULL:
        free(addrs)
        free(ring)
        raise MemoryError()
    if plen == 0 or plen + 66 > pool.frame_size:
        free(addrs)
        free(ring)
        raise ValueError(f"plen must be within 1..{pool.frame_size - 66}")
    for i in range(nframes):
        addrs[i] = pool.alloc_frame()
        if addrs[i] == VTL_NO_FRAME:
            for k in range(i):
                pool.unref(addrs[k])
            free(addrs)
            free(ring)
            raise ValueError("the pool must be free for the bench")
        memset(pool.frame_ptr(addrs[i]), <int>(i & 0xFF), pool.frame_size)
    with nogil:
        t0 = now_ns()
        for k in range(packets):
            i = <uint32_t>(k % nframes)
            if copy:
                part = umin(plen, ring_size - w)
                memcpy(ring + w, pool.frame_ptr(addrs[i] + 66), part)
                memcpy(ring, pool.frame_ptr(addrs[i] + 66 + part), plen - part)
                w = (w + plen) % ring_size    # consumed at once: the head follows
                rcv_nxt += plen
            else:
                pool.ref(addrs[i] + 66)
                f = &rq[(rq_head + rq_n) % RQ_MAX]
                f.addr = addrs[i] + 66
                f.seq = rcv_nxt
                f.len = plen
                rq_n += 1
                rq_bytes += plen
                rcv_nxt += plen
                f = &rq[rq_head]        # consumed: the fragment's reference goes
                rq_bytes -= f.len
                pool.unref(f.addr)
                rq_head = (rq_head + 1) % RQ_MAX
                rq_n -= 1
        t1 = now_ns()
    for i in range(nframes):
        pool.unref(addrs[i])
    free(addrs)
    free(ring)
    if rq_bytes != 0 or rcv_nxt != <uint32_t>(packets * plen):
        raise AssertionError("the bench lost bytes")
    return (t1 - t0) / <double>packets
