# The network thread: owns the AF_XDP port and all protocol state; talks to the
# application thread only through the two handoff channels.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from vtlstack._handoff cimport Channel
from vtlstack._includes.spsc cimport vtl_msg
from vtlstack._includes.vtlinsp cimport vi_block, vi_side
from vtlstack._includes.vtlrec cimport vr_stream
from vtlstack._port cimport XskPort, vtl_desc
from vtlstack._tcp cimport TcpEngine, tcp_frag

# Handoff message kinds (vtl_msg.kind), visible to Python as _fastpath.MSG_*. App -> net:
cpdef enum MsgKind:
    MSG_BIND = 1        # lport, sock: deliver UDP datagrams for lport to sock
    MSG_UNBIND = 2      # lport
    MSG_ECHO = 3        # lport: answer UDP datagrams in the network thread
    MSG_NEIGH = 4       # ip, arg = MAC (6 bytes, little-endian packed), lport = port index
    MSG_SEND = 5        # addr (granted frame), len, ip, port, lport: send a UDP datagram
    MSG_FREE = 6        # addr: the app is done with a received frame
    MSG_WANT = 7        # len = number of frames the app wants for sending
    MSG_STOP = 8
    # Net -> app:
    MSG_RECV = 20       # addr (payload), len, ip, port, lport, sock
    MSG_GRANT = 21      # addr: a free frame, now the app's
    # TCP. `sock` is the connection id (cid), `port` its generation: a request whose
    # generation is not the connection's current one is stale and ignored. App -> net:
    MSG_TCP_LISTEN = 30     # lport, arg = backlog -> RESULT (listener cid)
    MSG_TCP_CONNECT = 31    # ip, port = remote port, lport, arg = local ip (0: the first
                            # port's) -> RESULT (cid, gen in port)
    MSG_TCP_ACCEPT = 32     # sock = listener cid -> RESULT (cid or -1, gen in port)
    MSG_TCP_SEND = 33       # addr (granted frame), len -> RESULT (bytes taken)
    MSG_TCP_CONSUME = 34    # len: bytes the app has read (its frames come back as MSG_FREE)
    MSG_TCP_SHUTDOWN = 35
    MSG_TCP_CLOSE = 36
    MSG_TCP_ABORT = 37
    MSG_TCP_PARSE_ATTACH = 38   # addr = a vr_stream the app made: parse the connection into it
    MSG_TCP_PARSE = 39          # the app took events from a stalled record stream: go on
    # Net -> app:
    MSG_TCP_RESULT = 40     # arg = result (int64; negative: failed); for a connection
                            # ip, lport = the peer's address, addr = the local ip
    MSG_TCP_EVENT = 41      # sock = cid, arg = EV_* bits, len = bytes acknowledged (low
                            # 32 bits), lport = the send MSS (what app_send puts in a frame)
    MSG_TCP_DATA = 42       # sock = cid, addr, len: in-order bytes, the frame ref'd for the app
    # App -> net, out of the range above because the numbers were taken:
    MSG_TCP_SPLICE = 43     # sock, port: one connection; arg = the other's cid | gen << 32
                            # -> RESULT (0, or -1 refused, -2 sends still waiting: retry)


cdef enum:
    PARSE_OK = 0
    PARSE_MALFORMED = 1
    PARSE_BAD_CHECKSUM = 2
    PARSE_NOT_OURS = 3


# What the one validation of a received frame found (Ethernet + IPv4, then UDP).
cdef struct udp_view:
    uint32_t src            # network byte order
    uint32_t dst
    uint8_t proto
    uint16_t sport
    uint16_t dport
    uint16_t l4_off         # from the start of the frame
    uint16_t payload_off
    uint16_t payload_len
    uint16_t frame_len      # Ethernet header + IP total length (no padding)


cdef enum:
    NEIGH_BITS = 12
    NEIGH_SLOTS = 1 << NEIGH_BITS
    HINT_BITS = 10              # MACs of senders we hold no connection with (SYNs...)
    HINT_SLOTS = 1 << HINT_BITS
    MAX_PORTS = 4               # AF_XDP ports (interfaces) over one pool, one thread


cdef struct net_counters:
    uint64_t rx_packets
    uint64_t tx_packets
    uint64_t rx_bytes
    uint64_t tx_bytes
    uint64_t echoed
    uint64_t delivered
    uint64_t sent
    uint64_t malformed
    uint64_t bad_checksum
    uint64_t not_ours
    uint64_t no_listener
    uint64_t app_ring_full
    uint64_t tx_no_neigh
    uint64_t synack_no_neigh    # SYN-ACKs to senders with no MAC left (spoofed, flooding)
    uint64_t neigh_evicted
    uint64_t tx_ring_full
    uint64_t polls
    uint64_t loops
    uint64_t tcp_segments
    uint64_t tcp_invalid
    uint64_t tcp_out
    uint64_t tcp_stale
    uint64_t no_frame
    uint64_t linger_ms          # how long the thread waited for connections to close
    uint64_t linger_expired     # it stopped with connections still closing
    uint64_t tcp_send_waits     # sends the engine could not take whole yet (they wait)
    uint64_t tcp_send_refused   # sends on a connection that can no longer send
    uint64_t parse_errors       # record connections closed by a parse error (or a limit)
    uint64_t not_local          # TCP segments for an address that is none of the ports'
    uint64_t tx_no_port         # segments from an address that is none of the ports'


cdef class NetThread:
    cdef XskPort port           # the first port: UDP services, and the pool of them all
    # Every port, the first included, as borrowed pointers (_ports holds the references)
    # so the loop can index them without the GIL; per port its address and MAC.
    cdef void *ports[MAX_PORTS]
    cdef object _ports
    cdef uint32_t nports
    cdef uint32_t port_ip[MAX_PORTS]
    cdef uint8_t port_mac[MAX_PORTS][6]
    cdef uint32_t in_port       # the port the frames being handled came in on
    cdef public bint transparent    # TCP for addresses not ours is taken too (a
                                    # transparent proxy's); set before start()
    cdef readonly Channel to_app
    cdef readonly Channel to_net
    cdef uint16_t owner[65536]
    cdef uint8_t mac[6]
    cdef uint32_t ip
    cdef uint16_t ip_id
    cdef uint32_t neigh_ip[NEIGH_SLOTS]
    cdef uint8_t neigh_mac[NEIGH_SLOTS][6]
    cdef uint8_t neigh_port[NEIGH_SLOTS]    # entries are (ip, port): a MAC is a link's
    cdef uint32_t hint_ip[HINT_SLOTS]
    cdef uint8_t hint_mac[HINT_SLOTS][6]
    cdef uint8_t hint_port[HINT_SLOTS]
    cdef uint32_t batch
    cdef uint64_t busy_poll_ns
    cdef uint64_t linger_ns
    cdef volatile int stopping
    cdef readonly int tid
    cdef net_counters c
    cdef object _thread
    cdef readonly TcpEngine tcp
    cdef uint64_t now
    cdef uint32_t max_conns
    cdef uint32_t *delivered    # per cid: bytes handed to the app, not yet consumed
    cdef uint16_t *gen          # per cid: generation, bumped whenever the cid changes hands
    cdef uint8_t *redeliver     # per cid: data or events wait for room in to_app
    cdef uint32_t *ev_held      # per cid: event bits that found to_app full
    # Sends the engine could not take yet (its send queue or the pool was full): the app's
    # frames wait here in order, per cid, with the shutdown or close that follows them.
    cdef int32_t *pend_head
    cdef int32_t *pend_tail
    cdef uint8_t *pend_then
    cdef uint64_t *pend_addr    # nodes: one per frame at most
    cdef uint32_t *pend_len
    cdef int32_t *pend_next
    cdef int32_t pend_free
    cdef int32_t *pend_cids     # the cids with a queue (or a close behind one)
    cdef uint8_t *pend_listed   # per cid: in pend_cids
    cdef uint32_t pend_ncids
    cdef uint8_t *owned         # per cid: the app holds it (listened, connected, accepted)
    cdef uint32_t redeliver_n
    cdef uint32_t want_owed     # frames the app asked for and has not been granted yet
    cdef vr_stream **recs       # per cid: the record stream it parses into, or NULL
    cdef vi_block **insp        # per cid: the HTTP inspector of its splice, or NULL

    cdef void loop(self) noexcept nogil
    cdef void _push(self, vtl_msg *m, bint wake=*) except *
    cdef void _free(self, uint64_t addr) except *
    cdef int sleep_ms(self) noexcept nogil
    cdef int tcp_closing(self) noexcept nogil
    cdef int input(self, vtl_desc *d, vtl_desc *out) noexcept nogil
    cdef int drop(self, vtl_desc *d) noexcept nogil
    cdef uint32_t drain_app(self, vtl_desc *tx, uint32_t *ntx) noexcept nogil
    cdef int build_udp(self, vtl_msg *m, vtl_desc *out) noexcept nogil
    cdef void transmit(self, vtl_desc *tx, uint32_t n, uint32_t p=*) noexcept nogil
    cdef uint32_t port_of(self, uint32_t ip) noexcept nogil
    cdef void neigh_set(self, uint32_t ip, const uint8_t *mac, uint32_t p=*) noexcept nogil
    cdef void tcp_input(self, vtl_desc *d, uint8_t *f, udp_view *v) noexcept nogil
    cdef uint32_t tcp_output(self, vtl_desc *tx, uint32_t *ntx) noexcept nogil
    cdef void tcp_events(self) noexcept nogil
    cdef void tcp_notify(self, int32_t cid, uint32_t mask, bint data) noexcept nogil
    cdef int tcp_deliver(self, int32_t cid) noexcept nogil
    cdef int tcp_parse(self, int32_t cid) noexcept nogil
    cdef void tcp_unparse(self, int32_t cid) noexcept nogil
    cdef void tcp_retry(self, int32_t cid) noexcept nogil
    cdef void tcp_request(self, vtl_msg *m) noexcept nogil
    cdef int tcp_current(self, vtl_msg *m) noexcept nogil
    cdef void tcp_splice(self, vtl_msg *m) noexcept nogil
    cdef void tcp_inspect(self, int32_t cid) noexcept nogil
    cdef uint32_t inspect_copy(self, vi_side *s, tcp_frag *frags, uint32_t n, uint64_t off,
                               uint32_t length, char *dst, uint32_t cap) noexcept nogil
    cdef void inspect_events(self, vi_block *b, int k, tcp_frag *frags,
                             uint32_t n) noexcept nogil
    cdef void inspect_failed(self, vi_block *b, int k) noexcept nogil
    cdef void inspect_reject(self, vi_block *b) noexcept nogil
    cdef void inspect_end(self, vi_block *b) noexcept nogil
    cdef void inspect_bad_gateway(self, vi_block *b) noexcept nogil
    cdef void inspect_release(self, int32_t cid) noexcept nogil
    cdef void tcp_send(self, vtl_msg *m) noexcept nogil
    cdef int64_t tcp_take(self, int32_t cid, uint64_t addr, uint32_t n) noexcept nogil
    cdef void pend_add(self, int32_t cid, uint64_t addr, uint32_t n) noexcept nogil
    cdef void pend_flush(self, int32_t cid) noexcept nogil
    cdef void pend_drop(self, int32_t cid, bint to_app) noexcept nogil
    cdef void tcp_pending(self) noexcept nogil
    cdef void grant_owed(self) noexcept nogil
    cdef void recycle(self, uint64_t addr) noexcept nogil
    cdef void reply(self, int64_t result, uint16_t gen, uint32_t ip=*,
                    uint16_t port=*, uint32_t lip=*) noexcept nogil
    cdef const uint8_t *neigh_get(self, uint32_t ip, uint32_t p=*) noexcept nogil
    cdef const uint8_t *neigh_find(self, uint32_t ip, uint32_t p=*) noexcept nogil
