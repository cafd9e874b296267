# The TCP protocol engine (sans-IO): segments and time in, segments and events out.
# The network thread cimports this and drives it through the cdef API of TcpEngine, all
# `noexcept nogil`, all on the network thread (one engine per thread; not thread-safe):
#
#   per received frame (IPv4 header at UMEM address ip_addr, avail bytes from it):
#       if eng.validate(pool.frame_ptr(ip_addr), avail) == 0: eng.input(ip_addr, now)
#       then drop the RX reference as usual: the engine took its own for kept payload
#   timers: poll() with timeout next_deadline() - now (0 = nothing armed; O(1), may be early,
#       never late), then on_timer(now) (returns at once when nothing can be due)
#   output, after input/on_timer/app calls: while (n = eng.pop_out(frame, cap)): TX frame[:n]
#       (a complete IPv4 packet; prepend Ethernet; checksums are done)
#   events for the app: while (cid = eng.pop_event(&mask)) != NO_CONN: hand (cid, mask) over
#   app requests, relayed from the handoff: c_connect, c_listen, c_accept, c_send (copies),
#       c_send_frame (takes a frame of payload by reference),
#       c_peek (zero-copy fragments) + c_consume, c_shutdown, c_close, c_abort,
#       c_set_nodelay, c_set_keepalive, c_set_cc (another tcp_cc_ops table per connection),
#       c_splice (join two connections: received frames are re-sent on the other one)
#   output of spliced frames and of frames taken by reference without a copy:
#       pop_out_inplace() before pop_out()
# Time is ns of a monotonic clock; addresses in network order, ports in host order.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from vtlstack._port cimport FramePool
from vtlstack.proto.tcp cimport tcp_opts


cdef extern from "siphash.h" nogil:
    uint64_t siphash24(const uint8_t *data, size_t n, uint64_t k0, uint64_t k1)
    uint64_t siphash_words(const uint64_t *w, size_t n, uint64_t k0, uint64_t k1)


cdef extern from "tcp_cc.h" nogil:
    struct tcp_cc:
        uint32_t cwnd
        uint32_t ssthresh
        uint32_t mss
        double w_max
        double k
        double w_est
        uint64_t epoch_ns

    struct tcp_cc_ops:
        const char *name
        void (*init)(tcp_cc *cc, uint32_t mss) noexcept nogil
        void (*on_ack)(tcp_cc *cc, uint32_t acked, uint64_t srtt_ns, uint64_t now_ns) noexcept nogil
        void (*on_loss)(tcp_cc *cc, uint32_t flight, uint64_t now_ns) noexcept nogil
        void (*on_rto)(tcp_cc *cc, uint32_t flight, uint64_t now_ns) noexcept nogil

    const tcp_cc_ops tcp_cc_newreno
    const tcp_cc_ops tcp_cc_cubic


# RFC 9293 3.3.2 connection states.
cdef enum:
    ST_CLOSED = 0
    ST_LISTEN = 1
    ST_SYN_SENT = 2
    ST_SYN_RECEIVED = 3
    ST_ESTABLISHED = 4
    ST_FIN_WAIT_1 = 5
    ST_FIN_WAIT_2 = 6
    ST_CLOSE_WAIT = 7
    ST_CLOSING = 8
    ST_LAST_ACK = 9
    ST_TIME_WAIT = 10
    ST_NSTATES = 11

# Event bits reported per connection (coalesced until the app reads them).
cdef enum:
    EV_CONNECTED = 0x01     # handshake done (active open) / a child is ready (listener)
    EV_READABLE = 0x02      # new in-order bytes
    EV_WRITABLE = 0x04      # send queue space freed
    EV_PEER_CLOSED = 0x08   # FIN received in order: no more bytes will come
    EV_RESET = 0x10         # RST received (ECONNRESET / ECONNREFUSED in SYN-SENT)
    EV_TIMEOUT = 0x20       # retransmissions exhausted (ETIMEDOUT)
    EV_CLOSED = 0x40        # reached CLOSED after a graceful close
    EV_SPLICE_DONE = 0x80   # both connections of a splice have ended (see c_splice)

# Per-connection fixed-size queues (each has a counter when it is full).
cdef enum:
    RQ_MAX = 256        # in-order fragments not yet consumed
    OOO_MAX = 256       # out-of-order fragments: a whole receive window of segments
    SQ_MAX = 512        # send queue frames (unsent + unacknowledged)
    ACCEPTQ_MAX = 128
    SB_MAX = 8          # SACK scoreboard: ranges the peer holds above SND.UNA
    MAX_LISTENERS = 16
    NO_CONN = -1


# A span of payload in a UMEM frame. The holder owns one FramePool reference on the frame
# (any address inside a frame names it). seq is the sequence number of the first byte.
ctypedef struct tcp_frag:
    uint64_t addr
    uint32_t seq
    uint32_t len


# A segment the engine wants sent. With len > 0 the descriptor holds one reference on the
# payload frame until pop_out() has copied it into an output frame.
ctypedef struct tcp_seg_out:
    int32_t cid
    uint32_t lip            # network order
    uint32_t rip
    uint16_t lport
    uint16_t rport
    uint32_t seq
    uint32_t ack
    uint16_t win
    uint8_t flags
    uint8_t optlen
    uint8_t opts[40]
    uint64_t addr
    uint32_t len


ctypedef struct tcp_config:
    uint32_t mss            # MSS we advertise (MTU - 40)
    uint32_t rcv_buf        # receive buffer: bytes not yet consumed
    uint32_t snd_buf        # send queue limit in bytes
    uint64_t msl_ns         # TIME-WAIT lasts 2 * MSL
    uint64_t rto_init_ns
    uint64_t rto_min_ns
    uint64_t rto_max_ns
    uint64_t delack_ns
    uint32_t max_retries    # data/FIN retransmissions before ETIMEDOUT
    uint32_t syn_retries
    uint16_t eph_lo         # ephemeral port range for connect() without a port
    uint16_t eph_hi
    uint8_t wscale          # offer window scaling
    uint8_t timestamps      # offer timestamps
    uint8_t sack            # offer SACK-permitted
    uint8_t nodelay         # new connections start with Nagle off
    uint8_t syncookies      # answer SYNs with cookies when a listener's backlog is full
    uint32_t challenge_ack_limit    # RFC 5961 7: challenge ACKs per second, engine-wide
    uint32_t splice_b0      # adaptive alpha: bytes held for downstream where alpha = 0.1
    uint32_t splice_pair_cap    # bytes a splice may hold for one direction
    uint64_t splice_cap     # bytes all splices together may hold
    const tcp_cc_ops *cc


ctypedef struct tcp_counters:
    uint64_t segs_in
    uint64_t segs_out
    uint64_t bad_ip
    uint64_t bad_len
    uint64_t bad_offset
    uint64_t bad_checksum
    uint64_t bad_options
    uint64_t no_conn_rst        # RST sent for a segment without a connection
    uint64_t rst_in
    uint64_t challenge_acks     # RFC 5961
    uint64_t paws_drops         # RFC 7323 5
    uint64_t unacceptable       # failed the sequence test
    uint64_t retransmits
    uint64_t rto_fired
    uint64_t fast_retransmits
    uint64_t sack_retransmits   # holes retransmitted from the SACK scoreboard
    uint64_t persist_probes
    uint64_t dup_segments       # data entirely below RCV.NXT
    uint64_t ooo_segments
    uint64_t ooo_full           # OOO queue full: segment dropped
    uint64_t rq_full            # in-order fragment list full: segment dropped
    uint64_t pool_drops         # data dropped because the pool ran short (the peer resends)
    uint64_t ooo_pruned         # out-of-order segments dropped to make room for in-order ones
    uint64_t sq_full            # send queue limit hit (send accepted fewer bytes)
    uint64_t no_frames          # the pool had no frame for the send queue
    uint64_t out_full           # output descriptor array full: segment dropped
    uint64_t conn_table_full
    uint64_t syn_backlog_full
    uint64_t accept_queue_full
    uint64_t bad_transitions
    uint64_t timeouts
    uint64_t evq_full
    uint64_t challenge_acks_limited
    uint64_t syncookies_sent
    uint64_t syncookies_ok
    uint64_t syncookies_bad
    uint64_t keepalive_probes
    uint64_t splice_bytes       # bytes moved from one spliced connection to the other
    uint64_t splice_inplace     # spliced segments sent from the received frame itself
    uint64_t splice_copied      # spliced segments copied (retransmitted while on TX, split)
    uint64_t send_inplace       # app segments sent from the app's own frame (c_send_frame)
    uint64_t send_copied        # ... copied from it (retransmitted while on TX, split)
    uint64_t splice_held_peak   # the most bytes all spliced send queues held at once


ctypedef struct tcp_conn:
    uint8_t in_use
    uint8_t state
    uint8_t released        # the app closed its handle; free the slot once CLOSED
    uint8_t ws_ok
    uint8_t ts_ok
    uint8_t sack_ok
    uint8_t snd_wscale
    uint8_t rcv_wscale
    uint8_t fin_queued      # app shut down the send side: FIN follows the queued data
    uint8_t rcv_fin_pending # FIN seen beyond RCV.NXT (out of order)
    uint8_t ack_now
    uint8_t ack_batched     # owes an ACK at the end of this receive batch (on acks list)
    uint8_t wnd_pressed     # its window was held back by a short pool (on pressed list)
    uint8_t timing          # an RTT measurement is running (Karn: never on a retransmit)
    uint8_t in_recovery
    uint8_t retries
    uint8_t persist_shift
    uint8_t have_rtt
    uint8_t nodelay         # Nagle off (RFC 9293 3.7.4: the app MUST be able to disable it)
    uint8_t ka_count        # keep-alive probes without an answer before ETIMEDOUT
    uint8_t ka_sent
    uint8_t splice_fin      # the FIN received has been passed on to the spliced peer
    uint8_t sq_spliced      # the send queue holds spliced frames (counted in splice_held)
    uint8_t splice_gated    # only bytes before splice_gate may go on (an inspector's say)
    uint8_t splice_soft     # a reset here unsplices instead of resetting the peer
    uint8_t splice_hold_fin # the FIN received waits for the inspector's word
    int32_t parent          # listener cid of a child not yet accepted, else NO_CONN
    int32_t lidx            # listener index when state == LISTEN
    int32_t splice          # the connection its received bytes go to, else NO_CONN
    uint32_t splice_gate    # with splice_gated: the sequence number bytes may go up to
    uint32_t ev_pending
    uint32_t lip            # network order
    uint32_t rip
    uint16_t lport
    uint16_t rport
    uint16_t snd_mss        # effective send MSS (payload bytes, options excluded)
    uint16_t rcv_mss
    # send sequence space (RFC 9293 3.3.1); snd_max is the highest sequence sent + 1
    uint32_t iss
    uint32_t snd_una
    uint32_t snd_nxt
    uint32_t snd_max
    uint32_t snd_end        # sequence after the last byte queued by the app
    uint32_t snd_wnd
    uint32_t max_snd_wnd
    uint32_t snd_wl1
    uint32_t snd_wl2
    # receive sequence space; rcv_adv is the right edge we advertised (never moves left)
    uint32_t irs
    uint32_t rcv_nxt
    uint32_t rcv_adv
    uint32_t rcv_fin_seq
    uint32_t last_ack_sent
    uint32_t ts_recent
    uint32_t ts_offset
    uint32_t ooo_last_seq   # first byte of the newest out-of-order segment (SACK order)
    # timers: absolute ns, 0 = not armed
    uint64_t rtx_at
    uint64_t persist_at
    uint64_t delack_at
    uint64_t tw_at
    uint64_t ka_at
    uint64_t ka_idle_ns     # keep-alive: idle time before the first probe; 0 = off
    uint64_t ka_intvl_ns
    # RFC 6298 state, ns
    uint64_t srtt
    uint64_t rttvar
    uint64_t rto
    uint64_t rtt_start
    uint32_t rtt_seq
    # loss recovery (RFC 6582; RFC 6675 with SACK)
    uint32_t dupacks
    uint32_t recover
    uint32_t high_rxt       # RFC 6675 HighRxt: end of what recovery has retransmitted
    uint32_t sb_n
    uint32_t sb[SB_MAX][2]  # sorted, disjoint [left, right) ranges, within (SND.UNA, SND.MAX]
    tcp_cc cc
    const tcp_cc_ops *ops
    # receive side: in-order fragments (a ring) and the out-of-order queue (sorted)
    uint32_t rq_head
    uint32_t rq_n
    uint32_t rq_bytes
    uint32_t ooo_n
    uint32_t ooo_bytes
    # send side: frames holding [snd_una, snd_end), a ring
    uint32_t sq_head
    uint32_t sq_n
    uint32_t sq_bytes
    # statistics
    uint64_t bytes_in
    uint64_t bytes_acked
    uint64_t retransmits
    uint64_t sb_full        # SACK blocks dropped because the scoreboard was full
    uint64_t splice_moved   # received bytes passed on to the spliced peer
    tcp_frag rq[RQ_MAX]
    tcp_frag ooo[OOO_MAX]
    tcp_frag sq[SQ_MAX]


ctypedef struct tcp_listener:
    uint8_t in_use
    int32_t cid
    uint32_t lip
    uint16_t lport
    uint32_t backlog
    uint32_t half_open
    uint32_t aq_head
    uint32_t aq_n
    int32_t acceptq[ACCEPTQ_MAX]


cdef class TcpEngine:
    cdef FramePool pool
    cdef tcp_config cfg
    cdef tcp_counters cnt
    cdef tcp_conn *conns
    cdef uint32_t max_conns
    cdef uint32_t nconns
    cdef uint32_t nconns_peak    # the most slots held at once (listeners included)
    cdef int32_t *free_cids
    cdef int32_t *acks          # connections owing an ACK at the end of the receive batch
    cdef uint32_t acks_n
    cdef int32_t *pressed       # connections whose window the pool held back, to reopen
    cdef uint32_t sq_frames     # frames held by send queues: at most 3/8 of the pool
    cdef uint32_t pressed_n
    cdef uint32_t nfree
    cdef uint32_t *ftab         # flow table: cid + 1, 0 empty, FT_TOMB deleted
    cdef uint32_t ftab_mask
    cdef tcp_listener listeners[MAX_LISTENERS]
    cdef tcp_seg_out *out
    cdef uint32_t out_head
    cdef uint32_t out_n
    cdef uint32_t out_cap
    cdef int32_t *evq           # cids with pending events, a ring
    cdef uint32_t evq_head
    cdef uint32_t evq_n
    cdef uint32_t evq_cap
    cdef uint64_t key[2]        # SipHash key for ISNs, timestamp offsets and SYN cookies
    cdef uint16_t ip_ident
    cdef uint16_t eph_next
    cdef uint64_t transitions[ST_NSTATES][ST_NSTATES]
    cdef uint64_t ca_window_start
    cdef uint64_t tmin          # lower bound of every armed timer (0: none armed)
    cdef uint32_t ca_count
    # Where each frame's received payload started, or the app's payload of a frame taken by
    # reference (c_send_frame); 0: neither. A segment starting there may get its headers
    # written in front of it, over the ones it came with (pop_out_inplace); one starting
    # elsewhere shares the frame and is copied.
    cdef uint16_t *zc_off
    cdef uint64_t splice_held   # bytes in spliced send queues, all splices
    cdef uint8_t splice_over    # a window was held back by splice_cap (reopen when under)

    # -- network thread: input, timers, output --
    cdef int validate(self, const uint8_t *ip, uint32_t avail) noexcept nogil
    cdef void input(self, uint64_t ip_addr, uint64_t now) noexcept nogil
    cdef void flush_acks(self, uint64_t now) noexcept nogil
    cdef void defer_ack(self, tcp_conn *c) noexcept nogil
    cdef uint64_t next_deadline(self) noexcept nogil
    cdef void on_timer(self, uint64_t now) noexcept nogil
    cdef uint32_t pop_out(self, uint8_t *buf, uint32_t cap) noexcept nogil
    cdef uint32_t pop_out_inplace(self, uint32_t hroom, uint64_t *ip_addr) noexcept nogil
    # -- application calls (made on the network thread, from the handoff) --
    cdef int32_t c_connect(self, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport,
                           uint64_t now) noexcept nogil
    cdef int32_t c_listen(self, uint32_t lip, uint16_t lport, uint32_t backlog) noexcept nogil
    cdef int32_t c_accept(self, int32_t lcid) noexcept nogil
    cdef int64_t c_send(self, int32_t cid, const uint8_t *data, uint32_t n,
                        uint64_t now) noexcept nogil
    cdef int64_t c_send_frame(self, int32_t cid, uint64_t addr, uint32_t n,
                              uint64_t now) noexcept nogil
    cdef uint32_t c_peek(self, int32_t cid, tcp_frag *out, uint32_t max_n) noexcept nogil
    cdef void c_consume(self, int32_t cid, uint32_t n, uint64_t now) noexcept nogil
    cdef void c_shutdown(self, int32_t cid, uint64_t now) noexcept nogil
    cdef void c_close(self, int32_t cid, uint64_t now) noexcept nogil
    cdef void c_abort(self, int32_t cid, uint64_t now) noexcept nogil
    cdef void c_set_nodelay(self, int32_t cid, bint on, uint64_t now) noexcept nogil
    cdef void c_set_cc(self, int32_t cid, const tcp_cc_ops *ops) noexcept nogil
    cdef void c_set_keepalive(self, int32_t cid, uint64_t idle_ns, uint64_t intvl_ns,
                              uint8_t count, uint64_t now) noexcept nogil
    cdef int c_splice(self, int32_t a, int32_t b, uint64_t now) noexcept nogil
    cdef void c_splice_gate(self, int32_t cid, uint32_t seq, uint64_t now) noexcept nogil
    cdef void c_unsplice(self, int32_t cid) noexcept nogil
    cdef int32_t pop_event(self, uint32_t *mask) noexcept nogil
    cdef void release_all(self) noexcept nogil
    # -- internals --
    cdef void set_state(self, tcp_conn *c, uint8_t to) noexcept nogil
    cdef int32_t ft_find(self, uint32_t lip, uint16_t lport, uint32_t rip,
                         uint16_t rport) noexcept nogil
    cdef int ft_insert(self, int32_t cid) noexcept nogil
    cdef void ft_remove(self, int32_t cid) noexcept nogil
    cdef int32_t conn_alloc(self) noexcept nogil
    cdef void conn_release_frames(self, tcp_conn *c, bint rx_too) noexcept nogil
    cdef void conn_free(self, tcp_conn *c) noexcept nogil
    cdef void conn_closed(self, tcp_conn *c, uint32_t ev) noexcept nogil
    cdef void event(self, tcp_conn *c, uint32_t ev) noexcept nogil
    cdef tcp_seg_out *emit(self, tcp_conn *c, uint32_t seq, uint8_t flags, uint64_t addr,
                           uint32_t plen, uint64_t now) noexcept nogil
    cdef void emit_rst(self, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport,
                       uint32_t seq, uint32_t ack, uint8_t flags) noexcept nogil
    cdef uint32_t rcv_window(self, tcp_conn *c) noexcept nogil
    cdef void output(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef void sq_push(self, tcp_conn *c, uint64_t addr, uint32_t n) noexcept nogil
    cdef uint32_t send_at(self, tcp_conn *c, uint32_t seq, uint32_t room,
                          uint64_t now) noexcept nogil
    cdef void conn_input(self, tcp_conn *c, const uint8_t *t, const tcp_opts *o, uint32_t plen,
                         uint64_t paddr, uint64_t now) noexcept nogil
    cdef void listen_input(self, tcp_listener *li, uint32_t lip, uint32_t rip,
                           const uint8_t *t, const tcp_opts *o, uint32_t plen,
                           uint64_t paddr, uint64_t now) noexcept nogil
    cdef uint32_t cookie(self, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport,
                         uint32_t irs, uint32_t idx, uint64_t t) noexcept nogil
    cdef bint cookie_open(self, tcp_listener *li, uint32_t lip, uint32_t rip,
                          const uint8_t *t, const tcp_opts *o, uint32_t plen, uint64_t paddr,
                          uint64_t now) noexcept nogil
    cdef void syn_sent_input(self, tcp_conn *c, const uint8_t *t, const tcp_opts *o,
                             uint64_t now) noexcept nogil
    cdef bint ack_input(self, tcp_conn *c, const uint8_t *t, const tcp_opts *o,
                        uint32_t plen, uint64_t now) noexcept nogil
    cdef void sack_output(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef void ooo_insert(self, tcp_conn *c, uint32_t seq, uint64_t addr,
                         uint32_t plen) noexcept nogil
    cdef void negotiate(self, tcp_conn *c, const tcp_opts *o) noexcept nogil
    cdef void conn_init(self, tcp_conn *c, uint32_t lip, uint16_t lport, uint32_t rip,
                        uint16_t rport, uint64_t now) noexcept nogil
    cdef void time_wait(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef uint8_t our_wscale(self) noexcept nogil
    cdef uint32_t ts_offset(self, uint32_t lip, uint16_t lport, uint32_t rip,
                            uint16_t rport) noexcept nogil
    cdef void _drop_out(self) noexcept nogil
    cdef uint32_t pool_room(self) noexcept nogil
    cdef bint pool_roomy(self) noexcept nogil
    cdef inline uint64_t rx_budget(self) noexcept nogil
    cdef uint32_t free_window(self, tcp_conn *c) noexcept nogil
    cdef bint window_can_open(self, tcp_conn *c) noexcept nogil
    cdef void reopen_windows(self, uint64_t now) noexcept nogil
    cdef void rtt_sample(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef void challenge_ack(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef tcp_conn *_conn(self, int cid) except NULL
    cdef void data_input(self, tcp_conn *c, uint32_t seq, uint64_t addr, uint32_t plen,
                         uint64_t now) noexcept nogil
    cdef void fin_input(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef void established(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef void rto_fire(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef void arm(self, uint64_t t) noexcept nogil
    cdef uint64_t exact_deadline(self) noexcept nogil
    cdef void timer_conn(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef uint32_t splice_room(self, tcp_conn *c) noexcept nogil
    cdef void splice_pump(self, tcp_conn *a, uint64_t now) noexcept nogil
    cdef void splice_run(self, tcp_conn *c, uint64_t now) noexcept nogil
    cdef void splice_update(self, tcp_conn *a, uint64_t now) noexcept nogil
    cdef void splice_freed(self, tcp_conn *c, uint32_t n, uint64_t now) noexcept nogil
    cdef void splice_ended(self, tcp_conn *c, uint32_t ev) noexcept nogil
