# cython: language_level=3
"""The network thread: receive, classify, answer or hand off, transmit; sleep when idle.

Everything below `loop()` runs without the GIL and touches no Python object. The
application thread reaches this state only through the two Channels (see _handoff).
"""

import os
import threading

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset, strlen
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from posix.unistd cimport read, usleep

from vtlstack._handoff cimport Channel
from vtlstack._includes.posix cimport (
    POLLIN, SYS_gettid, now_ns, poll, pollfd, sched_yield, syscall,
)
from vtlstack._includes.spsc cimport spsc_end_sleep, spsc_pop, spsc_prepare_sleep, vtl_msg
from vtlstack._includes.vtlinsp cimport (
    VI_DONE, VI_HTTP_400, VI_HTTP_502, VI_METHOD, VI_OPEN, VI_PENDING, VI_REQ, VI_RESP,
    VI_TARGET, VI_FAILED, vi_block, vi_exchange, vi_log, vi_put, vi_scan, vi_side,
)
from vtlstack._includes.vtlparse cimport VP_EV_RECORD, VP_EV_SPAN, VP_EV_VALUE, vp_event
from vtlstack._includes.vtlrec cimport (
    VR_DONE, VR_FAILED, VR_NO_ROOM, VR_OPEN, vr_fail, vr_finish, vr_parse, vr_put, vr_stream,
)
from vtlstack._port cimport FRAME_FREE, FRAME_TX, VTL_NO_FRAME, XskPort, vtl_desc
from vtlstack._zc cimport FrameQueue, FrameSet
from vtlstack._tcp cimport (
    EV_CLOSED, EV_PEER_CLOSED, EV_READABLE, EV_RESET, EV_SPLICE_DONE, EV_TIMEOUT, NO_CONN,
    RQ_MAX, ST_CLOSE_WAIT, ST_CLOSED, ST_CLOSING, ST_ESTABLISHED, ST_LAST_ACK, ST_LISTEN,
    ST_SYN_RECEIVED, ST_SYN_SENT, ST_TIME_WAIT, TcpEngine, tcp_conn, tcp_frag,
)
from vtlstack.proto.eth cimport (
    ETH_HLEN, ETH_SRC, ETHERTYPE_IPV4, eth_swap_addrs, eth_type, eth_write,
)
from vtlstack.proto.ipv4 cimport (
    IPPROTO_TCP_, IPPROTO_UDP_, IPV4_BAD_CHECKSUM, IPV4_MIN_HLEN, IPV4_OK, ipv4_check, ipv4_dst, ipv4_hlen,
    ipv4_proto, ipv4_src, ipv4_swap_addrs, ipv4_tot_len, ipv4_write,
)
from vtlstack.proto.tcp cimport TH_SYN, tcp_dport, tcp_flags, tcp_sport
from vtlstack.proto.udp cimport (
    UDP_HLEN, udp_checksum_ok, udp_dport, udp_len, udp_sport, udp_swap_ports, udp_write,
)


# Bytes of Ethernet + IPv4 + UDP headers in front of a datagram the app sends.
cdef enum:
    UDP_PAYLOAD = ETH_HLEN + IPV4_MIN_HLEN + UDP_HLEN
UDP_PAYLOAD_OFFSET = UDP_PAYLOAD

# Where app_send puts TCP payload in a frame: Ethernet, IPv4 and the longest TCP header
# (60 bytes) fit in front of it, written there when the segment goes out.
cdef enum:
    TX_HEADROOM = 128

cdef enum:
    MAX_BATCH = 256
    OWNER_NONE = 0
    OWNER_ECHO = 1
    OWNER_SOCK_BASE = 2     # owner value = socket id + OWNER_SOCK_BASE
    IDLE_POLL_MS = 1000     # upper bound on one sleep: stop requests also wake the thread


cdef int l3_parse(const uint8_t *f, uint32_t avail, udp_view *v) noexcept nogil:
    """Validate Ethernet + IPv4 once; after PARSE_OK, v.src/dst/proto/l4_off/frame_len hold."""
    cdef const uint8_t *ip
    cdef int check
    if avail < ETH_HLEN:
        return PARSE_MALFORMED
    if eth_type(f) != ETHERTYPE_IPV4:
        return PARSE_NOT_OURS
    ip = f + ETH_HLEN
    check = ipv4_check(ip, avail - ETH_HLEN)
    if check == IPV4_BAD_CHECKSUM:
        return PARSE_BAD_CHECKSUM
    if check != IPV4_OK:
        return PARSE_MALFORMED
    v.src = ipv4_src(ip)
    v.dst = ipv4_dst(ip)
    v.proto = ipv4_proto(ip)
    v.l4_off = ETH_HLEN + ipv4_hlen(ip)
    v.frame_len = ETH_HLEN + ipv4_tot_len(ip)
    return PARSE_OK


cdef int udp_parse_l4(const uint8_t *f, udp_view *v) noexcept nogil:
    """The UDP part, after l3_parse() said PARSE_OK for a UDP packet."""
    cdef const uint8_t *u = f + v.l4_off
    cdef uint16_t room = v.frame_len - v.l4_off
    cdef uint16_t ulen
    if room < UDP_HLEN:
        return PARSE_MALFORMED
    ulen = udp_len(u)
    # RFC 768: the length covers header and data; it may not exceed what IP carries.
    if ulen < UDP_HLEN or ulen > room:
        return PARSE_MALFORMED
    if not udp_checksum_ok(u, ulen, v.src, v.dst):
        return PARSE_BAD_CHECKSUM
    v.sport = udp_sport(u)
    v.dport = udp_dport(u)
    v.payload_off = v.l4_off + UDP_HLEN
    v.payload_len = ulen - UDP_HLEN
    return PARSE_OK


cdef int udp_parse(const uint8_t *f, uint32_t avail, udp_view *v) noexcept nogil:
    """Validate an Ethernet/IPv4/UDP frame once; after PARSE_OK the view can be trusted."""
    cdef int verdict = l3_parse(f, avail, v)
    if verdict != PARSE_OK:
        return verdict
    if v.proto != IPPROTO_UDP_:
        return PARSE_NOT_OURS
    return udp_parse_l4(f, v)


_VERDICTS = {PARSE_OK: "ok", PARSE_MALFORMED: "malformed", PARSE_BAD_CHECKSUM: "bad_checksum",
             PARSE_NOT_OURS: "not_ours"}


def parse_udp_frame(const uint8_t[::1] frame not None) -> tuple:
    """(verdict, fields) for a frame, through the same code as the network thread."""
    cdef udp_view v
    cdef int verdict = udp_parse(&frame[0] if frame.shape[0] else NULL, frame.shape[0], &v)
    if verdict != PARSE_OK:
        return _VERDICTS[verdict], None
    return "ok", {"src": v.src, "dst": v.dst, "sport": v.sport, "dport": v.dport,
                  "payload_off": v.payload_off, "payload_len": v.payload_len,
                  "frame_len": v.frame_len}


def build_udp_frame(bytes dst_mac not None, bytes src_mac not None, uint32_t src, uint32_t dst,
                    uint16_t sport, uint16_t dport, bytes payload not None) -> bytes:
    """A frame built by the same code the network thread sends with (addresses as from
    stack._ip_to_net)."""
    cdef uint32_t n = len(payload)
    cdef bytearray buf = bytearray(UDP_PAYLOAD + n)
    cdef uint8_t *f = buf
    if len(dst_mac) != 6 or len(src_mac) != 6:
        raise ValueError("MAC addresses are 6 bytes")
    memcpy(f + UDP_PAYLOAD, <const char *>payload, n)
    eth_write(f, <const uint8_t *><const char *>dst_mac, <const uint8_t *><const char *>src_mac,
              ETHERTYPE_IPV4)
    ipv4_write(f + ETH_HLEN, IPV4_MIN_HLEN + UDP_HLEN + n, 1, IPPROTO_UDP_, src, dst)
    udp_write(f + ETH_HLEN + IPV4_MIN_HLEN, sport, dport, UDP_HLEN + n, src, dst)
    return bytes(buf)


cdef inline bint fin_received(uint8_t st) noexcept nogil:
    """Has the peer's FIN arrived (in order) in this state?"""
    return st == ST_CLOSE_WAIT or st == ST_CLOSING or st == ST_LAST_ACK or st == ST_TIME_WAIT


cdef inline uint32_t hint_slot(uint32_t ip) noexcept nogil:
    return (ip * 2654435761u) >> (32 - HINT_BITS)


cdef class NetThread:
    """The network thread of one port, or of several over one pool (`add_port`): one TCP
    engine for them all, each segment sent on the port whose address is its source.
    `start()` runs it; `stop()` joins it."""

    def __cinit__(self, XskPort port, bytes mac not None, uint32_t ip, uint32_t batch=64,
                  uint32_t busy_poll_us=0, uint32_t channel_size=4096,
                  uint32_t max_conns=1024, dict tcp_options=None):
        if len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be within 1..{MAX_BATCH}")
        self.port = port
        self.to_app = Channel(channel_size)
        self.to_net = Channel(channel_size)
        memset(self.owner, 0, sizeof(self.owner))
        memset(self.neigh_ip, 0, sizeof(self.neigh_ip))
        memset(self.hint_ip, 0, sizeof(self.hint_ip))
        memset(&self.c, 0, sizeof(self.c))
        memcpy(self.mac, <const char *>mac, 6)
        self.ip = ip
        self.nports = 0
        self._ports = ()
        self.add_port(port, mac, ip)
        self.batch = batch
        self.busy_poll_ns = <uint64_t>busy_poll_us * 1000
        self.to_app.spin_ns = self.busy_poll_ns     # the app thread's waits poll as long
        self.stopping = 0
        self.tid = 0
        self._thread = None
        self.tcp = TcpEngine(port.pool, max_conns, **(tcp_options or {}))
        self.max_conns = max_conns
        self.delivered = <uint32_t *>calloc(max_conns, sizeof(uint32_t))
        self.gen = <uint16_t *>calloc(max_conns, sizeof(uint16_t))
        self.redeliver = <uint8_t *>calloc(max_conns, sizeof(uint8_t))
        self.owned = <uint8_t *>calloc(max_conns, sizeof(uint8_t))
        self.recs = <vr_stream **>calloc(max_conns, sizeof(vr_stream *))
        self.insp = <vi_block **>calloc(max_conns, sizeof(vi_block *))
        self.ev_held = <uint32_t *>calloc(max_conns, sizeof(uint32_t))
        self.pend_head = <int32_t *>malloc(max_conns * sizeof(int32_t))
        self.pend_tail = <int32_t *>malloc(max_conns * sizeof(int32_t))
        self.pend_then = <uint8_t *>calloc(max_conns, sizeof(uint8_t))
        self.pend_listed = <uint8_t *>calloc(max_conns, sizeof(uint8_t))
        self.pend_cids = <int32_t *>malloc(max_conns * sizeof(int32_t))
        nodes = port.pool.frame_count
        self.pend_addr = <uint64_t *>malloc(nodes * sizeof(uint64_t))
        self.pend_len = <uint32_t *>malloc(nodes * sizeof(uint32_t))
        self.pend_next = <int32_t *>malloc(nodes * sizeof(int32_t))
        if (self.delivered == NULL or self.gen == NULL or self.redeliver == NULL
                or self.owned == NULL or self.ev_held == NULL or self.recs == NULL
                or self.insp == NULL or self.pend_head == NULL
                or self.pend_tail == NULL or self.pend_then == NULL or self.pend_cids == NULL
                or self.pend_listed == NULL
                or self.pend_addr == NULL or self.pend_len == NULL or self.pend_next == NULL):
            raise MemoryError("no memory for the connection tables")
        for i in range(max_conns):
            self.pend_head[i] = -1
            self.pend_tail[i] = -1
        for i in range(nodes):
            self.pend_next[i] = i + 1 if i + 1 < nodes else -1
        self.pend_free = 0
        self.pend_ncids = 0

    def __dealloc__(self):
        free(self.delivered)
        free(self.gen)
        free(self.redeliver)
        free(self.owned)
        if self.recs != NULL:
            for i in range(self.max_conns):
                self.tcp_unparse(i)
        free(self.recs)
        if self.insp != NULL:
            for i in range(self.max_conns):
                self.inspect_release(i)
        free(self.insp)
        free(self.ev_held)
        free(self.pend_head)
        free(self.pend_tail)
        free(self.pend_then)
        free(self.pend_listed)
        free(self.pend_cids)
        free(self.pend_addr)
        free(self.pend_len)
        free(self.pend_next)

    def add_port(self, XskPort port not None, bytes mac not None, uint32_t ip) -> None:
        """Drive `port` too (before start()): it must share the first port's pool
        (XskPort(share_umem=...)). TCP segments from `ip` go out on it, to `mac`'s link."""
        if self._thread is not None:
            raise RuntimeError("ports are added before the network thread starts")
        if len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        if self.nports == MAX_PORTS:
            raise ValueError(f"at most {MAX_PORTS} ports per network thread")
        if port.pool is not self.port.pool:
            raise ValueError(f"the port on {port.ifname} has a pool of its own: create it "
                             f"with share_umem= the first port")
        if ip == 0 or self.port_of(ip) < self.nports:
            raise ValueError("each port needs an address of its own")
        self.ports[self.nports] = <void *>port
        self._ports = self._ports + (port,)
        self.port_ip[self.nports] = ip
        memcpy(self.port_mac[self.nports], <const char *>mac, 6)
        self.nports += 1

    def app_send(self, object frames, const uint8_t[:] data, int cid, int gen,
                 uint32_t seg) -> int:
        """Application thread: copy `data` into frames the app holds (popped from the
        deque `frames`) and hand each to the network thread as a send on connection
        (cid, gen). Returns the bytes handed over: fewer when the frames run out or
        to_net is full. The caller keeps within its send credit.
        Each frame carries at most `seg` bytes (the connection's send MSS), after
        TX_HEADROOM: one segment, with room for its headers in front, so the engine takes
        the frame itself into its send queue and sends the segment out of it (no copy in
        the network thread); a frame it cannot take so is copied there."""
        cdef uint32_t fs = self.port.pool.frame_size
        cdef Py_ssize_t done = 0, n = data.shape[0]
        cdef uint32_t k
        cdef uint32_t room = fs - TX_HEADROOM
        cdef vtl_msg m
        if seg == 0 or seg > room:
            seg = room
        m.kind = MSG_TCP_SEND
        m.sock = cid
        m.port = gen
        m.ip = 0
        m.lport = 0
        m.arg = 0
        while done < n and frames:
            m.addr = <uint64_t>frames.popleft() + TX_HEADROOM
            k = <uint32_t>min(<Py_ssize_t>seg, n - done)
            memcpy(self.port.pool.frame_ptr(m.addr), &data[done], k)
            m.len = k
            if not self.to_net.post(&m):
                frames.appendleft(m.addr - TX_HEADROOM)
                break
            done += k
        # one wakeup for the whole call (as app_recv): woken per frame, a network thread
        # on this core would run (and sleep again) between every two of them
        self.to_net.flush()
        return done

    def app_recv(self, FrameQueue rx, Py_ssize_t bufsize, int cid, int gen,
                 bint consume=True) -> bytes:
        """Application thread: copy up to bufsize bytes out of the received frames, hand
        each emptied frame back, and tell the network thread how much was consumed (its
        window reopens). Without `consume` the caller says it later: bytes before these
        are still held (recv_zc)."""
        cdef Py_ssize_t total = min(<Py_ssize_t>(rx.received - rx.offset), bufsize)
        cdef Py_ssize_t done = 0
        cdef uint64_t addr
        cdef uint32_t length, n
        cdef vtl_msg m
        out = PyBytes_FromStringAndSize(NULL, total)
        cdef char *dst = PyBytes_AS_STRING(out)
        m.ip = 0
        m.lport = 0
        m.arg = 0
        while done < total:
            addr = rx.f_addr[rx.head]
            length = rx.f_len[rx.head]
            n = <uint32_t>min(<Py_ssize_t>length, total - done)
            memcpy(dst + done, self.port.pool.frame_ptr(addr), n)
            done += n
            if n == length:
                rx.pop_front()
                self._free(addr)
            else:
                rx.trim_front(n)
        if total and consume:
            m.kind = MSG_TCP_CONSUME
            m.addr = 0
            m.len = <uint32_t>total
            m.sock = cid
            m.port = gen
            self._push(&m, 0)
        # one wakeup for the whole call: woken per frame, a network thread on this core
        # would run (and sleep again) between every two of them
        self.to_net.flush()
        return out

    def app_free(self, FrameSet held, FrameQueue shares=None) -> None:
        """Application thread: a released chain or batch hands its frames back (those
        `shares` says another batch still holds stay), with one wakeup for all."""
        cdef uint32_t i
        for i in range(held.naddrs):
            if shares is None or shares.unhold(held.addrs[i]):
                self._free(held.addrs[i])
        self.to_net.flush()

    def app_free_queue(self, FrameQueue rx) -> None:
        """Application thread: the frames still queued go back (the socket closes)."""
        while rx.count:
            if rx.unhold(rx.f_addr[rx.head]):
                self._free(rx.f_addr[rx.head])
            rx.pop_front()
        self.to_net.flush()

    def app_pump(self, dict tcp, set touched, object granted, uint32_t budget=4096):
        """Application thread: take what the network thread handed over. In-order data
        (the bulk of it: a message per frame) goes straight onto its connection's
        FrameQueue (`conn._rx`), and the connection into `touched`; frames granted for
        sending (a sender's steady stream of them) join the deque `granted`; the first
        other message comes back as (kind, addr, len, ip, port, sock, lport, arg), for
        Python to dispatch. Otherwise (the channel is empty, or `budget` messages were
        taken) the number of data and grant messages taken."""
        cdef vtl_msg m
        cdef bint freed = 0
        cdef uint32_t taken = 0
        cdef FrameQueue rx
        try:
            while taken < budget and spsc_pop(self.to_app.ring, &m):
                taken += 1
                if m.kind == MSG_GRANT:
                    granted.append(m.addr)
                    continue
                if m.kind != MSG_TCP_DATA:
                    return (m.kind, m.addr, m.len, m.ip, m.port, m.sock, m.lport, m.arg)
                conn = tcp.get(m.sock)
                rx = getattr(conn, "_rx", None)
                if rx is not None and conn.gen == m.port:
                    rx.add(m.addr, m.len)
                    touched.add(conn)
                else:
                    self._free(m.addr)    # for a socket closed since
                    freed = 1
            return taken
        finally:
            if freed:
                self.to_net.flush()

    cdef void _free(self, uint64_t addr) except *:
        """Hand a frame back to the network thread (the caller flushes)."""
        cdef vtl_msg m
        memset(&m, 0, sizeof(m))
        m.kind = MSG_FREE
        m.addr = addr
        self._push(&m, 0)

    cdef void _push(self, vtl_msg *m, bint wake=1) except *:
        """Hand a message to the network thread; without `wake`, the caller flushes."""
        # The network thread drains to_net every loop: full means busy, not gone.
        cdef int tries = 0
        while not self.to_net.post(m):
            self.to_net.flush()
            tries += 1
            if tries > 50000:
                raise RuntimeError("the network thread stopped taking requests")
            with nogil:
                usleep(100)
        if wake:
            self.to_net.flush()

    def release_tcp(self) -> None:
        """After stop(): give back every frame the TCP engine still holds."""
        if self.running:
            raise RuntimeError("the network thread is running")
        while self.pend_ncids:
            self.pend_ncids -= 1
            self.pend_drop(self.pend_cids[self.pend_ncids], 0)
            self.pend_listed[self.pend_cids[self.pend_ncids]] = 0
        for i in range(self.max_conns):
            self.tcp_unparse(i)
        self.tcp.release_all()

    def start(self, cpu=None) -> None:
        """Start the thread; `cpu` pins it to that CPU (None: wherever the process may run)."""
        if self._thread is not None:
            raise RuntimeError("the network thread is already running")
        if cpu is not None and cpu not in range(os.cpu_count() or 1):
            raise ValueError(f"no CPU {cpu} on this machine (0..{(os.cpu_count() or 1) - 1})")
        self._thread = threading.Thread(target=self._run, args=(cpu,), name="vtl-net",
                                        daemon=True)
        self._thread.start()

    def _run(self, cpu) -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})  # 0: the calling thread, not the process
        with nogil:
            self.loop()

    def stop(self, double timeout=5.0, double linger=2.0) -> None:
        """Ask the thread to stop, wake it, and wait for it. It lingers up to `linger`
        seconds while TCP connections still close (FINs to send, retransmit, be acked)."""
        self.linger_ns = <uint64_t>(linger * 1e9)
        self.stopping = 1
        os.eventfd_write(self.to_net.efd, 1)
        if self._thread is not None:
            self._thread.join(timeout + linger)
            if self._thread.is_alive():
                raise RuntimeError("the network thread did not stop")
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict:
        return dict(self.c)

    # ---- the network thread itself -------------------------------------------------

    cdef void loop(self) noexcept nogil:
        cdef vtl_desc rx[MAX_BATCH]
        # a TX batch per port: port p's descriptors start at tx + p * MAX_BATCH
        cdef vtl_desc tx[MAX_PORTS * MAX_BATCH]
        cdef uint32_t ntx[MAX_PORTS]
        cdef uint32_t n, i, p, work
        cdef uint64_t last_work = now_ns()
        cdef uint64_t drained
        cdef pollfd pfds[MAX_PORTS + 1]
        self.tid = <int>syscall(SYS_gettid)
        for p in range(self.nports):
            pfds[p].fd = (<XskPort>self.ports[p]).q.fd
            pfds[p].events = POLLIN
        pfds[self.nports].fd = self.to_net.efd
        pfds[self.nports].events = POLLIN
        cdef uint64_t stop_at = 0
        while True:
            self.c.loops += 1
            self.now = now_ns()
            if self.stopping:
                if stop_at == 0:
                    # one more pass first: requests the app sent before stop() are served
                    stop_at = self.now + self.linger_ns
                elif self.now >= stop_at or not self.tcp_closing():
                    self.c.linger_ms = (self.now - (stop_at - self.linger_ns)) // 1000000
                    self.c.linger_expired = self.tcp_closing()
                    break
            work = 0
            for p in range(self.nports):
                ntx[p] = 0
                self.in_port = p
                n = (<XskPort>self.ports[p]).rx_burst(rx, self.batch)
                for i in range(n):
                    if self.input(&rx[i], &tx[p * MAX_BATCH + ntx[p]]):
                        ntx[p] += 1
                work += n
            self.tcp.flush_acks(self.now)
            work += self.drain_app(tx, &ntx[0])
            self.tcp.on_timer(self.now)
            if self.pend_ncids:
                self.tcp_pending()
            # events first: what they make (an inspector opening its gate, a parse
            # error's RST) goes out in this pass
            self.tcp_events()
            work += self.tcp_output(tx, ntx)
            if self.want_owed:
                self.grant_owed()
            for p in range(self.nports):
                if ntx[p]:
                    self.transmit(&tx[p * MAX_BATCH], ntx[p], p)
            self.to_app.flush()     # once per pass: what this pass handed over, in one go
            for p in range(self.nports):
                (<XskPort>self.ports[p]).complete()
                (<XskPort>self.ports[p]).refill()
            if work:
                last_work = 0
                continue
            # Idle. Optionally keep polling the rings for a short window first (as
            # SO_BUSY_POLL does), then sleep in poll() until a frame or a request arrives;
            # the channel's prepare/recheck protocol means no request is missed.
            if last_work == 0:
                last_work = now_ns()
                continue
            if now_ns() - last_work < self.busy_poll_ns:
                sched_yield()
                continue
            last_work = 0
            if spsc_prepare_sleep(self.to_net.ring):
                self.c.polls += 1
                poll(pfds, self.nports + 1, self.sleep_ms())
                read(self.to_net.efd, &drained, sizeof(drained))
                spsc_end_sleep(self.to_net.ring)

    cdef int tcp_closing(self) noexcept nogil:
        """Is a connection still on its way to CLOSED? TIME-WAIT needs nothing from us,
        and half-open ones (a SYN flood's, say) are not worth waiting for."""
        cdef uint32_t i
        cdef uint8_t st
        if self.pend_ncids:
            return 1    # sends still waiting for the engine (a FIN may follow them)
        for i in range(self.max_conns):
            if self.tcp.conns[i].in_use:
                st = self.tcp.conns[i].state
                if st != ST_CLOSED and st != ST_LISTEN and st != ST_TIME_WAIT and \
                        st != ST_SYN_SENT and st != ST_SYN_RECEIVED:
                    return 1
        return 0

    cdef int sleep_ms(self) noexcept nogil:
        """How long the idle thread may sleep: until the next TCP timer, at most a second;
        a millisecond while sent frames wait for their completions or while stopping."""
        cdef uint64_t deadline = self.tcp.next_deadline()
        cdef uint64_t now
        if self.port.pool.count[<int>FRAME_TX] or self.stopping:
            return 1    # completions to reap, or connections closing on the way out
        if deadline == 0:
            return IDLE_POLL_MS
        now = now_ns()
        if deadline <= now:
            return 0
        return <int>min((deadline - now) // 1000000 + 1, <uint64_t>IDLE_POLL_MS)

    cdef int input(self, vtl_desc *d, vtl_desc *out) noexcept nogil:
        """One received frame. Returns 1 when it became a frame to send (written to out)."""
        cdef uint8_t *f = self.port.frame_ptr(d.addr)
        cdef udp_view v
        cdef int verdict = l3_parse(f, d.len, &v)
        cdef uint16_t own
        cdef vtl_msg m
        self.c.rx_packets += 1
        self.c.rx_bytes += d.len
        if verdict == PARSE_OK:
            if v.proto == IPPROTO_TCP_:
                self.tcp_input(d, f, &v)
                return self.drop(d)
            verdict = udp_parse_l4(f, &v) if v.proto == IPPROTO_UDP_ else PARSE_NOT_OURS
        if verdict != PARSE_OK:
            if verdict == PARSE_BAD_CHECKSUM:
                self.c.bad_checksum += 1
            elif verdict == PARSE_NOT_OURS:
                self.c.not_ours += 1
            else:
                self.c.malformed += 1
            return self.drop(d)
        own = self.owner[v.dport]
        if own == OWNER_NONE:
            self.c.no_listener += 1
            return self.drop(d)
        if own == OWNER_ECHO:
            eth_swap_addrs(f)
            ipv4_swap_addrs(f + ETH_HLEN)
            udp_swap_ports(f + v.l4_off)
            out.addr = d.addr
            out.len = v.frame_len   # without any Ethernet padding
            self.c.echoed += 1
            return 1
        m.kind = MSG_RECV
        m.addr = d.addr + v.payload_off
        m.len = v.payload_len
        m.ip = v.src
        m.port = v.sport
        m.lport = v.dport
        m.sock = own - OWNER_SOCK_BASE
        m.arg = 0
        if not self.to_app.post(&m):
            self.c.app_ring_full += 1
            return self.drop(d)
        self.c.delivered += 1
        return 0

    cdef int drop(self, vtl_desc *d) noexcept nogil:
        self.port.free_frame(d.addr)
        return 0

    cdef uint32_t drain_app(self, vtl_desc *tx, uint32_t *ntx) noexcept nogil:
        """Carry out what the application asked for; sends join the TX batch."""
        cdef vtl_msg m
        cdef uint32_t done = 0
        cdef uint32_t k
        cdef uint64_t addr
        cdef uint8_t mac[6]
        while ntx[0] < MAX_BATCH and spsc_pop(self.to_net.ring, &m):
            done += 1
            if m.kind == MSG_SEND:
                if self.build_udp(&m, &tx[ntx[0]]):
                    ntx[0] += 1
            elif m.kind == MSG_FREE:
                self.port.free_frame(m.addr)
            elif m.kind == MSG_WANT:
                # the latest ask replaces older ones; what cannot be granted now is granted
                # as frames come back (the app's sends that wait for frames go on then)
                self.want_owed = m.len
                self.grant_owed()
            elif m.kind == MSG_BIND:
                self.owner[m.lport] = m.sock + OWNER_SOCK_BASE
            elif m.kind == MSG_UNBIND:
                self.owner[m.lport] = OWNER_NONE
            elif m.kind == MSG_ECHO:
                self.owner[m.lport] = OWNER_ECHO
            elif m.kind == MSG_NEIGH:
                for k in range(6):
                    mac[k] = (m.arg >> (8 * k)) & 0xFF
                if m.lport < self.nports:
                    self.neigh_set(m.ip, mac, m.lport)
            elif MSG_TCP_LISTEN <= m.kind <= MSG_TCP_PARSE or m.kind == MSG_TCP_SPLICE:
                self.tcp_request(&m)
            elif m.kind == MSG_STOP:
                self.stopping = 1
        return done

    cdef int build_udp(self, vtl_msg *m, vtl_desc *out) noexcept nogil:
        """Headers in front of the payload the app wrote at addr + UDP_PAYLOAD_OFFSET."""
        cdef uint8_t *f = self.port.frame_ptr(m.addr)
        cdef const uint8_t *dmac = self.neigh_get(m.ip)
        if dmac == NULL:
            self.c.tx_no_neigh += 1
            self.port.free_frame(m.addr)
            return 0
        eth_write(f, dmac, self.mac, ETHERTYPE_IPV4)
        ipv4_write(f + ETH_HLEN, IPV4_MIN_HLEN + UDP_HLEN + m.len, self.ip_id, IPPROTO_UDP_,
                   self.ip, m.ip)
        self.ip_id += 1
        udp_write(f + ETH_HLEN + IPV4_MIN_HLEN, m.lport, m.port, UDP_HLEN + m.len, self.ip, m.ip)
        out.addr = m.addr
        out.len = ETH_HLEN + IPV4_MIN_HLEN + UDP_HLEN + m.len
        self.c.sent += 1
        return 1

    cdef void transmit(self, vtl_desc *tx, uint32_t n, uint32_t p=0) noexcept nogil:
        """Frames on port p's TX ring; those it has no room for are dropped and counted."""
        cdef uint32_t sent = (<XskPort>self.ports[p]).tx_burst(tx, n)
        cdef uint32_t i
        for i in range(sent):
            self.c.tx_bytes += tx[i].len
        self.c.tx_packets += sent
        for i in range(sent, n):
            self.c.tx_ring_full += 1
            self.port.free_frame(tx[i].addr)

    # ---- TCP: the engine (vtlstack._tcp) is driven from here ---------------------------

    cdef void tcp_input(self, vtl_desc *d, uint8_t *f, udp_view *v) noexcept nogil:
        # Steering goes by port only: a segment routed through this host to another one
        # is not ours to answer (listeners take any of our addresses: see tcp_request),
        # unless we proxy transparently, as the host it was meant for.
        if not self.transparent and self.port_of(v.dst) >= self.nports:
            self.c.not_local += 1
            return
        if self.tcp.validate(f + ETH_HLEN, v.frame_len - ETH_HLEN) != 0:
            self.c.tcp_invalid += 1
            return
        cdef const uint8_t *t = f + v.l4_off
        cdef uint32_t hint
        # A peer that opens a connection to us was never looked up by the app: answer to
        # the MAC its segments came from (the gateway's, for an off-link peer). Until it
        # holds a connection that MAC is only a hint, in a table of its own that spoofed
        # SYNs may churn without evicting the peers we talk to.
        cdef bint unknown = self.neigh_find(v.src, self.in_port) == NULL
        if unknown:
            hint = hint_slot(v.src)
            self.hint_ip[hint] = v.src
            self.hint_port[hint] = self.in_port
            memcpy(self.hint_mac[hint], f + ETH_SRC, 6)
        self.c.tcp_segments += 1
        self.tcp.input(d.addr + ETH_HLEN, self.now)
        if unknown and self.tcp.ft_find(v.dst, tcp_dport(t), v.src, tcp_sport(t)) != NO_CONN:
            self.neigh_set(v.src, f + ETH_SRC, self.in_port)

    cdef uint32_t tcp_output(self, vtl_desc *tx, uint32_t *ntx) noexcept nogil:
        """Every segment the engine wants sent, each in a frame of its own, on the port
        whose address is the segment's source (tx, ntx: the loop's per-port batches)."""
        cdef uint32_t sent = 0
        cdef uint32_t n, p
        cdef uint64_t addr
        cdef uint8_t *f
        cdef const uint8_t *dmac
        cdef uint32_t room = self.port.pool.frame_size - ETH_HLEN
        while True:
            # a spliced segment goes out of the frame it came in, headers rewritten
            n = self.tcp.pop_out_inplace(ETH_HLEN, &addr)
            if n:
                addr -= ETH_HLEN
                f = self.port.frame_ptr(addr)
            else:
                addr = self.port.alloc_frame()
                if addr == VTL_NO_FRAME:
                    self.c.no_frame += 1  # segments wait in the engine until frames return
                    return sent
                f = self.port.frame_ptr(addr)
                n = self.tcp.pop_out(f + ETH_HLEN, room)
                if n == 0:
                    self.port.free_frame(addr)
                    return sent
            p = self.port_of(ipv4_src(f + ETH_HLEN))
            if p >= self.nports and self.transparent:
                # in another host's name: out where that peer's link is (its neighbour
                # entry or hint says which)
                for p in range(self.nports):
                    if self.neigh_get(ipv4_dst(f + ETH_HLEN), p) != NULL:
                        break
                else:
                    p = self.nports
            if p >= self.nports:
                self.c.tx_no_port += 1     # no link to the peer (transparent), or a bug
                self.port.free_frame(addr)
                continue
            dmac = self.neigh_get(ipv4_dst(f + ETH_HLEN), p)
            if dmac == NULL:
                # a SYN-ACK to a sender whose MAC hint a flood overwrote, or a real miss
                if tcp_flags(f + ETH_HLEN + ipv4_hlen(f + ETH_HLEN)) & TH_SYN:
                    self.c.synack_no_neigh += 1
                else:
                    self.c.tx_no_neigh += 1
                self.port.free_frame(addr)
                continue
            if ntx[p] == MAX_BATCH:
                self.transmit(&tx[p * MAX_BATCH], ntx[p], p)
                ntx[p] = 0
            eth_write(f, dmac, self.port_mac[p], ETHERTYPE_IPV4)
            tx[p * MAX_BATCH + ntx[p]].addr = addr
            tx[p * MAX_BATCH + ntx[p]].len = ETH_HLEN + n
            ntx[p] += 1
            sent += 1
            self.c.tcp_out += 1

    cdef void tcp_events(self) noexcept nogil:
        cdef uint32_t mask
        cdef int32_t cid
        cdef uint32_t i
        if self.redeliver_n:
            self.redeliver_n = 0
            for i in range(self.max_conns):
                if self.redeliver[i]:
                    self.redeliver[i] = 0
                    self.tcp_notify(i, 0, 1)
        while True:
            cid = self.tcp.pop_event(&mask)
            if cid == NO_CONN:
                return
            self.tcp_notify(cid, mask, mask & EV_READABLE)

    cdef void tcp_notify(self, int32_t cid, uint32_t mask, bint data) noexcept nogil:
        """Tell the app about a connection: its new bytes first, then one event message.
        The event carries the bytes acknowledged so far (low 32 bits): the app's send
        credit. Nothing is lost when to_app is full: it waits and is retried."""
        cdef vtl_msg m
        if not self.owned[cid]:
            return  # not accepted yet (accept delivers), or closed by the app
        if self.insp[cid] != NULL:
            if self.tcp.conns[cid].splice != NO_CONN and mask & (EV_READABLE | EV_PEER_CLOSED):
                self.tcp_inspect(cid)
            if self.insp[cid] != NULL and self.tcp.conns[cid].splice == NO_CONN:
                self.inspect_end(self.insp[cid])
        if self.tcp.conns[cid].splice != NO_CONN:
            # its bytes go to the other connection, not to the app, which only waits for
            # the end: waking it for every ACK (EV_WRITABLE) would cost a wakeup a segment
            data = 0
            mask &= EV_SPLICE_DONE | EV_RESET | EV_TIMEOUT | EV_CLOSED
        mask |= self.ev_held[cid]
        self.ev_held[cid] = 0
        if data and not self.tcp_deliver(cid):
            self.ev_held[cid] = mask   # the data goes before the event that announces it
            return
        if self.recs[cid] != NULL:
            if mask & EV_PEER_CLOSED:
                self.recs[cid].fin = 1
            if self.tcp_parse(cid):
                mask |= EV_READABLE     # records (or the stream's end, or its error)
        if mask == 0:
            return
        m.kind = MSG_TCP_EVENT
        m.sock = cid
        m.port = self.gen[cid]
        m.arg = mask
        m.addr = 0
        m.len = <uint32_t>self.tcp.conns[cid].bytes_acked
        m.ip = 0
        m.lport = self.tcp.conns[cid].snd_mss
        if not self.to_app.post(&m):
            self.c.app_ring_full += 1
            self.ev_held[cid] = mask
            self.tcp_retry(cid)
            return
        if mask & (EV_CLOSED | EV_RESET | EV_TIMEOUT):
            self.delivered[cid] = 0
            self.owned[cid] = 0

    cdef void tcp_retry(self, int32_t cid) noexcept nogil:
        if not self.redeliver[cid]:
            self.redeliver[cid] = 1
            self.redeliver_n += 1

    cdef int tcp_deliver(self, int32_t cid) noexcept nogil:
        """Hand the app the in-order bytes it has not seen, as frame spans (no copy). Each
        span's frame gets the app's own reference, so a reset that makes the engine drop
        its queues can never recycle memory the app is still reading. 0 if to_app filled
        up (the rest is retried)."""
        cdef tcp_frag frags[RQ_MAX]
        cdef uint32_t n = self.tcp.c_peek(cid, frags, RQ_MAX)
        cdef uint32_t skip = self.delivered[cid]
        cdef uint32_t i
        cdef vtl_msg m
        m.kind = MSG_TCP_DATA
        m.sock = cid
        m.port = self.gen[cid]
        m.ip = 0
        m.lport = 0
        m.arg = 0
        for i in range(n):
            if skip >= frags[i].len:
                skip -= frags[i].len
                continue
            m.addr = frags[i].addr + skip
            m.len = frags[i].len - skip
            skip = 0
            self.port.ref(m.addr)
            if not self.to_app.post(&m):
                self.port.unref(m.addr)
                self.c.app_ring_full += 1
                self.tcp_retry(cid)
                return 0
            self.delivered[cid] += m.len
        return 1

    cdef int tcp_parse(self, int32_t cid) noexcept nogil:
        """Run the connection's parser over its in-order bytes not parsed yet, frame by
        frame and in place (fields across frames are spans), as far as the app has been
        handed them: its records' bytes are always in frames it holds. At the stream's end
        (everything parsed) the parser finishes. A parse error, a record over its limits
        or one the receive queue cannot hold closes the connection (RST). Returns 1 if
        records were published or the stream ended or failed."""
        cdef vr_stream *r = self.recs[cid]
        cdef tcp_frag frags[RQ_MAX]
        cdef uint32_t n, i, flen
        cdef uint64_t off, edge
        cdef uint64_t before
        cdef uint8_t st
        cdef int rc = VR_DONE
        if r.status != VR_OPEN:
            return 0
        before = r.records
        n = self.tcp.c_peek(cid, frags, RQ_MAX)
        off = r.consumed
        edge = r.consumed + self.delivered[cid]
        for i in range(n):
            if off >= edge:
                break
            flen = frags[i].len
            if off + flen > edge:
                flen = <uint32_t>(edge - off)
            rc = vr_parse(r, self.port.frame_ptr(frags[i].addr), flen, off)
            if rc != VR_DONE:
                break
            off += frags[i].len
        st = self.tcp.conns[cid].state
        if rc == VR_DONE and r.parsed == r.consumed + self.tcp.conns[cid].rq_bytes and \
                r.parsed == edge and (r.fin or st == ST_CLOSE_WAIT or st == ST_CLOSING or
                                      st == ST_LAST_ACK or st == ST_TIME_WAIT):
            rc = vr_finish(r)
        elif rc == VR_DONE and n == RQ_MAX and r.consumed >= r.rec_start:
            # every fragment the queue can hold is the unfinished record's: it can never
            # complete (tiny segments), and the window stays shut
            rc = vr_fail(r, VR_NO_ROOM, r.rec_start)
        if rc == VR_FAILED:
            self.c.parse_errors += 1
            self.tcp.c_abort(cid, self.now)
            return 1
        return r.records != before or r.status != VR_OPEN

    cdef void tcp_unparse(self, int32_t cid) noexcept nogil:
        """The connection no longer parses (the app closed it): let go of its stream."""
        if self.recs[cid] != NULL:
            vr_put(self.recs[cid])
            self.recs[cid] = NULL

    cdef int tcp_current(self, vtl_msg *m) noexcept nogil:
        """Is this request about the connection the app thinks it is?"""
        if m.sock < self.max_conns and self.gen[m.sock] == m.port:
            return 1
        self.c.tcp_stale += 1
        return 0

    cdef void reply(self, int64_t result, uint16_t gen, uint32_t ip=0,
                    uint16_t port=0, uint32_t lip=0) noexcept nogil:
        """The answer to a request; with the peer's and our address for a connection."""
        cdef vtl_msg m
        m.kind = MSG_TCP_RESULT
        m.arg = <uint64_t>result
        m.port = gen
        m.addr = lip
        m.len = 0
        m.sock = 0
        m.ip = ip
        m.lport = port
        if not self.to_app.post(&m):
            self.c.app_ring_full += 1  # the app waits for this: it times out with an error

    cdef void tcp_request(self, vtl_msg *m) noexcept nogil:
        cdef int32_t cid
        cdef uint32_t lip
        if m.kind == MSG_TCP_LISTEN:
            # One listener for every port's address: the engine's wildcard (lip 0), which
            # needs one cid and one accept queue; tcp_input lets only segments for our
            # addresses reach it, and each child takes the address its SYN was sent to.
            cid = self.tcp.c_listen(0, m.lport, <uint32_t>m.arg)
            if cid != NO_CONN:
                self.owned[cid] = 1
            self.reply(cid, 0)
        elif m.kind == MSG_TCP_CONNECT or m.kind == MSG_TCP_ACCEPT:
            if m.kind == MSG_TCP_CONNECT:
                lip = <uint32_t>m.arg if m.arg else self.ip
                cid = NO_CONN
                if self.port_of(lip) < self.nports or self.transparent:
                    cid = self.tcp.c_connect(lip, m.lport, m.ip, m.port, self.now)
            else:
                cid = self.tcp.c_accept(m.sock)
            if cid == NO_CONN:
                self.reply(-1, 0)
                return
            self.gen[cid] += 1
            self.delivered[cid] = 0
            self.ev_held[cid] = 0
            self.owned[cid] = 1
            self.reply(cid, self.gen[cid], self.tcp.conns[cid].rip, self.tcp.conns[cid].rport,
                       self.tcp.conns[cid].lip)
            if m.kind == MSG_TCP_ACCEPT:
                self.tcp_deliver(cid)  # bytes that came with or right after the handshake
        elif m.kind == MSG_TCP_SEND:
            self.tcp_send(m)
        elif m.kind == MSG_TCP_PARSE_ATTACH:
            # the app made the stream and holds it too; a stale one is let go at once
            if not self.tcp_current(m) or self.recs[m.sock] != NULL:
                vr_put(<vr_stream *><uintptr_t>m.addr)
                return
            self.recs[m.sock] = <vr_stream *><uintptr_t>m.addr
            self.tcp_notify(m.sock, 0, 0)   # what came before the app accepted
        elif m.kind == MSG_TCP_SPLICE:
            self.tcp_splice(m)
        elif not self.tcp_current(m):
            return
        elif m.kind == MSG_TCP_PARSE:
            self.tcp_notify(m.sock, 0, 0)
        elif m.kind == MSG_TCP_CONSUME:
            if m.len > self.delivered[m.sock]:
                m.len = self.delivered[m.sock]
            self.delivered[m.sock] -= m.len
            if self.recs[m.sock] != NULL:
                self.recs[m.sock].consumed += m.len
            self.tcp.c_consume(m.sock, m.len, self.now)
        elif m.kind == MSG_TCP_SHUTDOWN:
            if self.pend_head[m.sock] >= 0:
                self.pend_then[m.sock] = MSG_TCP_SHUTDOWN   # after the bytes that wait
            else:
                self.tcp.c_shutdown(m.sock, self.now)
        else:
            # Close or abort: the cid is no longer the app's; later messages about it are
            # stale, and its events are for nobody.
            self.gen[m.sock] += 1
            self.delivered[m.sock] = 0
            self.owned[m.sock] = 0
            self.ev_held[m.sock] = 0
            self.tcp_unparse(m.sock)
            self.inspect_release(m.sock)
            if m.kind == MSG_TCP_CLOSE and self.pend_head[m.sock] >= 0:
                self.pend_then[m.sock] = MSG_TCP_CLOSE      # after the bytes that wait
            elif m.kind == MSG_TCP_CLOSE:
                self.tcp.c_close(m.sock, self.now)
            else:
                self.pend_drop(m.sock, 1)
                self.tcp.c_abort(m.sock, self.now)
                self.tcp.c_close(m.sock, self.now)  # CLOSED now: the slot is free again

    cdef void tcp_splice(self, vtl_msg *m) noexcept nogil:
        """Join two of the app's connections in the engine. Bytes the app sent first go
        first: while some still wait here the answer is -2 (ask again). Bytes handed to the
        app but not consumed go on to the other side; the app lets go of its views. With an
        inspector (addr: a vi_block, a the client side) both streams are parsed here first
        (tcp_inspect); the block is ours from a success or a refusal on."""
        cdef int32_t a = m.sock
        cdef int32_t b = <int32_t>(m.arg & 0xFFFFFFFFu)
        cdef vi_block *blk = <vi_block *><uintptr_t>m.addr
        cdef tcp_conn *c
        cdef int r, k
        cdef int32_t cid
        if not self.tcp_current(m) or b < 0 or <uint32_t>b >= self.max_conns or \
                self.gen[b] != <uint16_t>(m.arg >> 32) or not self.owned[a] or \
                not self.owned[b] or self.recs[a] != NULL or self.recs[b] != NULL:
            if blk != NULL:
                vi_put(blk)
            self.reply(-1, 0)
            return
        if self.pend_head[a] >= 0 or self.pend_head[b] >= 0:
            self.pend_flush(a)
            self.pend_flush(b)
            if self.pend_head[a] >= 0 or self.pend_head[b] >= 0:
                self.reply(-2, 0)   # the app asks again with the same block
                return
        if blk != NULL:
            # nothing goes on before it has been parsed: both streams start gated where
            # their unread bytes start
            for k in range(2):
                cid = a if k == VI_REQ else b
                c = &self.tcp.conns[cid]
                blk.side[k].cid = cid
                # the first unread byte: the queue's head, else the next to come (a FIN
                # received took a sequence number of its own)
                blk.side[k].seq0 = c.rq[c.rq_head].seq if c.rq_n else \
                    c.rcv_nxt - (1 if fin_received(c.state) else 0)
                blk.side[k].off0 = 0
                c.splice_gated = 1
                c.splice_gate = blk.side[k].seq0
                c.splice_hold_fin = 1
        # A reset of one side comes apart the pair instead of resetting the other: the
        # inspector, or the app closing both, ends the survivor cleanly after what it
        # was passed (a proxy's client gets a FIN, or a 502, not a RST)
        self.tcp.conns[a].splice_soft = self.tcp.conns[b].splice_soft = 1
        r = self.tcp.c_splice(a, b, self.now)
        if r == 0:
            self.delivered[a] = self.delivered[b] = 0
            if blk != NULL:
                self.insp[a] = self.insp[b] = blk
                self.tcp_inspect(a)     # what came before the splice
                if self.insp[b] != NULL:
                    self.tcp_inspect(b)
        elif blk != NULL:
            self.tcp.conns[a].splice_gated = self.tcp.conns[b].splice_gated = 0
            self.tcp.conns[a].splice_soft = self.tcp.conns[b].splice_soft = 0
            self.tcp.conns[a].splice_hold_fin = self.tcp.conns[b].splice_hold_fin = 0
            vi_put(blk)
        self.reply(r, 0)

    cdef void tcp_send(self, vtl_msg *m) noexcept nogil:
        """Bytes from the app, in one of its frames. The engine takes the frame itself if it
        can (a segment's worth, see app_send), else copies what its send queue and the pool
        allow; the rest waits here, in order, until they do. The app keeps within its
        credit, so waiting is the exception (many connections, a small pool)."""
        cdef int64_t taken
        if not self.tcp_current(m):
            self.recycle(m.addr)
        elif self.pend_head[m.sock] >= 0:
            self.pend_add(m.sock, m.addr, m.len)
        else:
            taken = self.tcp_take(m.sock, m.addr, m.len)
            if taken < 0:
                self.c.tcp_send_refused += 1   # reset or closed: the app gets that event
                self.recycle(m.addr)
            elif taken < m.len:
                self.c.tcp_send_waits += 1
                self.pend_add(m.sock, m.addr + <uint64_t>taken, m.len - <uint32_t>taken)

    cdef int64_t tcp_take(self, int32_t cid, uint64_t addr, uint32_t n) noexcept nogil:
        """Hand the engine the app's n bytes at addr: the frame itself if it takes it so,
        else a copy of what it takes. Returns the bytes taken (-1: the connection cannot
        send); once all are, the frame is no longer the app's (the send queue holds it, or
        it went back to the app for its next send)."""
        cdef int64_t taken = self.tcp.c_send_frame(cid, addr, n, self.now)
        if taken == 0:
            taken = self.tcp.c_send(cid, self.port.frame_ptr(addr), n, self.now)
            if taken == n:
                self.recycle(addr)
        return taken

    cdef void recycle(self, uint64_t addr) noexcept nogil:
        """An app frame the engine is done with goes straight back to the app for its next
        send: no asking."""
        cdef vtl_msg m
        m.kind = MSG_GRANT
        m.addr = addr - addr % self.port.pool.frame_size
        m.len = 0
        m.ip = 0
        m.port = 0
        m.sock = 0
        m.lport = 0
        m.arg = 0
        if not self.to_app.post(&m):
            self.port.free_frame(m.addr)

    cdef void pend_add(self, int32_t cid, uint64_t addr, uint32_t n) noexcept nogil:
        cdef int32_t i = self.pend_free
        if i < 0:
            # cannot happen (a node per frame); never lose bytes silently
            self.recycle(addr)
            self.tcp.c_abort(cid, self.now)
            return
        self.pend_free = self.pend_next[i]
        self.pend_addr[i] = addr
        self.pend_len[i] = n
        self.pend_next[i] = -1
        if self.pend_head[cid] < 0:
            self.pend_head[cid] = i
            if not self.pend_listed[cid]:
                self.pend_listed[cid] = 1
                self.pend_cids[self.pend_ncids] = cid
                self.pend_ncids += 1
        else:
            self.pend_next[self.pend_tail[cid]] = i
        self.pend_tail[cid] = i

    cdef void pend_flush(self, int32_t cid) noexcept nogil:
        """Hand the engine what waits for cid, as far as it takes it; then the shutdown or
        close that waited behind it."""
        cdef int32_t i
        cdef int64_t taken
        cdef uint8_t then
        while self.pend_head[cid] >= 0:
            i = self.pend_head[cid]
            taken = self.tcp_take(cid, self.pend_addr[i], self.pend_len[i])
            if taken < 0:
                self.c.tcp_send_refused += 1
                self.pend_drop(cid, 1)
                break
            if taken < self.pend_len[i]:
                self.pend_addr[i] += <uint64_t>taken
                self.pend_len[i] -= <uint32_t>taken
                return
            self.pend_head[cid] = self.pend_next[i]
            self.pend_next[i] = self.pend_free
            self.pend_free = i
        self.pend_tail[cid] = -1
        then = self.pend_then[cid]
        self.pend_then[cid] = 0
        if then == MSG_TCP_SHUTDOWN:
            self.tcp.c_shutdown(cid, self.now)
        elif then == MSG_TCP_CLOSE:
            self.tcp.c_close(cid, self.now)

    cdef void pend_drop(self, int32_t cid, bint to_app) noexcept nogil:
        """Give up what waits for cid (the connection is gone): its frames go back."""
        cdef int32_t i
        while self.pend_head[cid] >= 0:
            i = self.pend_head[cid]
            if to_app:
                self.recycle(self.pend_addr[i])
            else:
                self.port.free_frame(self.pend_addr[i] - self.pend_addr[i] %
                                     self.port.pool.frame_size)
            self.pend_head[cid] = self.pend_next[i]
            self.pend_next[i] = self.pend_free
            self.pend_free = i
        self.pend_tail[cid] = -1

    cdef void grant_owed(self) noexcept nogil:
        cdef vtl_msg m
        memset(&m, 0, sizeof(m))
        m.kind = MSG_GRANT
        while self.want_owed:
            # a quarter of the pool is not for the app: receiving and the send queues need
            # frames for the app's frames to ever come back
            if self.port.pool.count[<int>FRAME_FREE] <= self.port.pool.frame_count // 4:
                return
            m.addr = self.port.alloc_frame()
            if m.addr == VTL_NO_FRAME:
                return
            if not self.to_app.post(&m):
                self.port.free_frame(m.addr)
                return
            self.want_owed -= 1

    cdef void tcp_pending(self) noexcept nogil:
        """Retry the waiting sends of connections whose send queue has room again."""
        cdef uint32_t j = 0, k = 0
        cdef int32_t cid
        while j < self.pend_ncids:
            cid = self.pend_cids[j]
            j += 1
            if self.pend_head[cid] >= 0 and \
                    self.tcp.conns[cid].sq_bytes < self.tcp.cfg.snd_buf:
                self.pend_flush(cid)
            if self.pend_head[cid] >= 0 or self.pend_then[cid]:
                self.pend_cids[k] = cid
                k += 1
            else:
                self.pend_listed[cid] = 0
        self.pend_ncids = k

    # The neighbour table ((IPv4, port) -> MAC), open addressing with linear probing,
    # filled by the app from the kernel's routes and neighbours (pyroute2) and from peers
    # that hold a connection with us. A MAC is only good on the link it was learnt on,
    # hence the port in the key. When every slot is taken the home slot is overwritten
    # and counted; the app then resolves again.
    cdef void neigh_set(self, uint32_t ip, const uint8_t *mac, uint32_t p=0) noexcept nogil:
        cdef uint32_t home = (ip * 2654435761u) >> (32 - NEIGH_BITS)
        cdef uint32_t slot = home
        cdef int k
        for k in range(NEIGH_SLOTS):
            slot = (home + k) & (NEIGH_SLOTS - 1)
            if self.neigh_ip[slot] == 0 or \
                    (self.neigh_ip[slot] == ip and self.neigh_port[slot] == p):
                break
        else:
            slot = home
            self.c.neigh_evicted += 1
        memcpy(self.neigh_mac[slot], mac, 6)
        self.neigh_ip[slot] = ip
        self.neigh_port[slot] = <uint8_t>p

    cdef const uint8_t *neigh_get(self, uint32_t ip, uint32_t p=0) noexcept nogil:
        cdef const uint8_t *mac = self.neigh_find(ip, p)
        cdef uint32_t hint
        if mac == NULL and ip != 0:
            hint = hint_slot(ip)
            if self.hint_ip[hint] == ip and self.hint_port[hint] == p:
                return self.hint_mac[hint]
        return mac

    cdef const uint8_t *neigh_find(self, uint32_t ip, uint32_t p=0) noexcept nogil:
        cdef uint32_t home = (ip * 2654435761u) >> (32 - NEIGH_BITS)
        cdef uint32_t slot
        cdef int k
        if ip == 0:
            return NULL
        for k in range(NEIGH_SLOTS):
            slot = (home + k) & (NEIGH_SLOTS - 1)
            if self.neigh_ip[slot] == ip and self.neigh_port[slot] == p:
                return self.neigh_mac[slot]
            if self.neigh_ip[slot] == 0:
                return NULL
        return NULL

    cdef uint32_t port_of(self, uint32_t ip) noexcept nogil:
        """The index of the port with address ip; nports if none has it."""
        cdef uint32_t p
        for p in range(self.nports):
            if self.port_ip[p] == ip:
                return p
        return self.nports

    # ---- the HTTP inspector of a splice (vtlinsp.h) -----------------------------------
    # Both directions are parsed here before their frames move on: the engine's splice
    # gate holds a request until its head has parsed whole, and a response until its
    # status line has (so the fields logged are still in the receive queue to copy).

    cdef void tcp_inspect(self, int32_t cid) noexcept nogil:
        """Parse what spliced cid received since last time, log what completed, then let
        the engine pass on as much as the parse vetted."""
        cdef vi_block *b = self.insp[cid]
        cdef int k = VI_REQ if b.side[VI_REQ].cid == cid else VI_RESP
        cdef vi_side *s = &b.side[k]
        cdef vr_stream *r = s.r
        cdef tcp_conn *c = &self.tcp.conns[cid]
        cdef tcp_frag frags[RQ_MAX]
        cdef uint32_t n, i, flen
        cdef uint64_t off, gate, end
        cdef int rc = VR_DONE
        cdef bint fin
        if b.state != VI_OPEN or c.splice == NO_CONN or (k == VI_REQ and b.reject):
            return
        n = self.tcp.c_peek(cid, frags, RQ_MAX)
        if n:
            # offsets counted from the head of the queue: sequence differences stay small
            s.off0 = s.off0 + <uint32_t>(frags[0].seq - s.seq0)
            s.seq0 = frags[0].seq
        for i in range(n):
            off = s.off0 + <uint32_t>(frags[i].seq - s.seq0)
            rc = vr_parse(r, self.port.frame_ptr(frags[i].addr), frags[i].len, off)
            if rc != VR_DONE:
                break
        fin = fin_received(c.state)
        # where the stream received so far ends (the FIN takes a sequence number)
        end = s.off0 + <uint32_t>(c.rcv_nxt - (1 if fin else 0) - s.seq0)
        if rc == VR_DONE and fin and r.parsed == end and r.status == VR_OPEN:
            rc = vr_finish(r)
        self.inspect_events(b, k, frags, n)
        if rc != VR_DONE:
            self.inspect_failed(b, k)
            return
        if fin and r.status != VR_OPEN:
            # the stream ended whole. A server that closes before it begins the answer
            # owed gives the client a 502; otherwise the FIN follows the bytes.
            if k == VI_RESP and b.pend_n:
                self.inspect_bad_gateway(b)
                return
            c.splice_hold_fin = 0
        gate = r.parsed
        if r.parsed != r.rec_start:
            if k == VI_RESP:
                if not b.status_seen:
                    gate = r.rec_start
            else:
                if b.scan_rec != r.rec_start + 1:
                    b.scan_rec = r.rec_start + 1
                    b.scan = r.rec_start
                    b.scan_state = 0
                    b.head_done = 0
                for i in range(n):
                    off = s.off0 + <uint32_t>(frags[i].seq - s.seq0)
                    if off >= r.parsed or b.head_done:
                        break
                    flen = frags[i].len
                    if off + flen > r.parsed:
                        flen = <uint32_t>(r.parsed - off)
                    vi_scan(b, self.port.frame_ptr(frags[i].addr), flen, off)
                if not b.head_done or b.pend_n == VI_PENDING:
                    gate = r.rec_start
        self.tcp.c_splice_gate(cid, s.seq0 + <uint32_t>(gate - s.off0), self.now)
        if b.reject and b.pend_n == 0:
            self.inspect_reject(b)      # the last answer owed before the 400 has gone

    cdef uint32_t inspect_copy(self, vi_side *s, tcp_frag *frags, uint32_t n, uint64_t off,
                               uint32_t length, char *dst, uint32_t cap) noexcept nogil:
        """Copy stream bytes [off, off + length), at most cap, out of the receive queue."""
        cdef uint32_t i, got = 0, a, z
        cdef uint64_t foff
        if length > cap:
            length = cap
        for i in range(n):
            foff = s.off0 + <uint32_t>(frags[i].seq - s.seq0)
            if foff + frags[i].len <= off or foff >= off + length:
                continue
            a = <uint32_t>(off - foff) if off > foff else 0
            z = frags[i].len
            if foff + z > off + length:
                z = <uint32_t>(off + length - foff)
            memcpy(dst + (foff + a - off), self.port.frame_ptr(frags[i].addr + a), z - a)
            got += z - a
        return got

    cdef void inspect_events(self, vi_block *b, int k, tcp_frag *frags,
                             uint32_t n) noexcept nogil:
        """Take the events the parse made: fields to log, and the ends of requests
        (whose method the response parser is told) and of responses (logged)."""
        cdef vi_side *s = &b.side[k]
        cdef vr_stream *r = s.r
        cdef vp_event *e
        cdef vi_exchange *x
        cdef char digits[3]
        cdef int cls
        while s.seen != r.write:
            e = &r.ring[s.seen & r.mask]
            s.seen += 1
            if k == VI_REQ:
                if e.kind == VP_EV_SPAN and e.id == b.id_method:
                    b.cur.t_req = self.now
                    b.cur.method_len = <uint8_t>self.inspect_copy(
                        s, frags, n, e.off, e.len, b.cur.method, VI_METHOD)
                elif e.kind == VP_EV_SPAN and e.id == b.id_target:
                    b.cur.target_len = <uint8_t>self.inspect_copy(
                        s, frags, n, e.off, e.len, b.cur.target, VI_TARGET)
                    b.cur.target_cut = e.len > VI_TARGET
                elif e.kind == VP_EV_RECORD:
                    b.cur.req_bytes = e.len
                    b.requests += 1
                    b.req_bytes += e.len
                    # RFC 9110 9.3.2 / 9.3.6: a response to HEAD has no body, one to a
                    # CONNECT that succeeds opens a tunnel
                    b.push(b.side[VI_RESP].r.st,
                           1 if b.cur.method_len == 4 and memcmp(b.cur.method, b"HEAD", 4) == 0
                           else 2 if b.cur.method_len == 7 and
                           memcmp(b.cur.method, b"CONNECT", 7) == 0 else 0)
                    if b.pend_n < VI_PENDING and not b.cur_answered:
                        b.pend[(b.pend_head + b.pend_n) % VI_PENDING] = b.cur
                        b.pend_n += 1
                    memset(&b.cur, 0, sizeof(vi_exchange))
                    b.cur_answered = 0
                continue
            if b.pend_n:
                x = &b.pend[b.pend_head]
            elif b.cur.method_len:
                # the answer to the request still coming in: its "100 Continue", or a
                # final answer before its body is all there
                x = &b.cur
            else:
                x = &b.orphan   # a response nobody asked for: logged without a method
            if e.id == b.id_status and (e.kind == VP_EV_VALUE or e.kind == VP_EV_SPAN):
                if e.kind == VP_EV_VALUE:
                    x.status = <int32_t>e.val
                elif self.inspect_copy(s, frags, n, e.off, e.len, digits, 3) == 3:
                    x.status = (digits[0] - 48) * 100 + (digits[1] - 48) * 10 + digits[2] - 48
                b.status_seen = 1
            elif e.kind == VP_EV_RECORD:
                b.status_seen = 0
                if 100 <= x.status < 200 and x.status != 101:
                    x.status = 0    # an interim response: the final one follows
                    continue
                x.resp_bytes = e.len
                x.t_done = self.now
                b.responses += 1
                b.resp_bytes += e.len
                cls = x.status // 100
                b.status_class[cls if 1 <= cls <= 5 else 0] += 1
                vi_log(b, x)
                if x == &b.orphan:
                    memset(&b.orphan, 0, sizeof(vi_exchange))
                elif x == &b.cur:
                    b.cur_answered = 1
                else:
                    b.pend_head = (b.pend_head + 1) % VI_PENDING
                    b.pend_n -= 1
        # the inspector is this stream's only reader
        r.head = r.write
        r.tail = r.write

    cdef void inspect_failed(self, vi_block *b, int k) noexcept nogil:
        """A parse error. A bad request never reaches the server: the requests before it
        go on, and once their answers have, the client gets a 400 (inspect_reject). A bad
        response resets both connections."""
        cdef vi_side *s = &b.side[k]
        b.parse_errors += 1
        b.why = s.r.why
        b.err_off = s.r.err_off
        self.c.parse_errors += 1
        if k == VI_REQ:
            b.reject = 1
            self.tcp.c_splice_gate(s.cid, s.seq0 + <uint32_t>(s.r.rec_start - s.off0),
                                   self.now)
            if b.pend_n == 0:
                self.inspect_reject(b)
        else:
            b.state = VI_FAILED
            self.tcp.c_abort(b.side[VI_REQ].cid, self.now)  # soft: then inspect_end

    cdef void inspect_reject(self, vi_block *b) noexcept nogil:
        """The 400 for a bad request, after every answer before it: the splice comes
        apart, the server's connection is reset, the client's closes after the 400."""
        cdef int32_t a = b.side[VI_REQ].cid, s = b.side[VI_RESP].cid
        b.rejected += 1
        b.state = VI_FAILED
        self.tcp.c_unsplice(a)
        self.tcp.c_abort(s, self.now)
        # the rest of what the client sent is dropped, so its close is a FIN, not a RST
        self.tcp.c_consume(a, self.tcp.conns[a].rq_bytes, self.now)
        self.tcp.c_send(a, <const uint8_t *>VI_HTTP_400, strlen(VI_HTTP_400), self.now)
        self.tcp.c_shutdown(a, self.now)

    cdef void inspect_end(self, vi_block *b) noexcept nogil:
        """The splice came apart or ended. A server that reset (or timed out) before a
        response began gives the client a 502; once one began, the client's connection
        closes cleanly after what was passed on. A client gone that way resets the server
        connection. Then the block is let go."""
        cdef int32_t a = b.side[VI_REQ].cid, s = b.side[VI_RESP].cid
        cdef tcp_conn *ca = &self.tcp.conns[a]
        cdef tcp_conn *cs = &self.tcp.conns[s]
        cdef vr_stream *rs = b.side[VI_RESP].r
        if cs.state == ST_CLOSED and not ca.fin_queued and (
                ca.state == ST_ESTABLISHED or ca.state == ST_CLOSE_WAIT):
            if b.state == VI_OPEN and b.pend_n and rs.parsed == rs.rec_start:
                self.inspect_bad_gateway(b)
            else:
                self.tcp.c_consume(a, ca.rq_bytes, self.now)
                self.tcp.c_shutdown(a, self.now)
        elif ca.state == ST_CLOSED and cs.state != ST_CLOSED and cs.state != ST_TIME_WAIT:
            self.tcp.c_abort(s, self.now)
        self.inspect_release(a)

    cdef void inspect_bad_gateway(self, vi_block *b) noexcept nogil:
        """The server is gone with an answer owed and none begun: the client gets a 502
        and its connection closes; the server's closes too."""
        cdef int32_t a = b.side[VI_REQ].cid, s = b.side[VI_RESP].cid
        b.bad_gateway += 1
        self.tcp.c_unsplice(a)
        if self.tcp.conns[s].state != ST_CLOSED:
            self.tcp.c_shutdown(s, self.now)
        self.tcp.c_consume(a, self.tcp.conns[a].rq_bytes, self.now)
        self.tcp.c_send(a, <const uint8_t *>VI_HTTP_502, strlen(VI_HTTP_502), self.now)
        self.tcp.c_shutdown(a, self.now)

    cdef void inspect_release(self, int32_t cid) noexcept nogil:
        cdef vi_block *b = self.insp[cid]
        if b == NULL:
            return
        self.insp[b.side[VI_REQ].cid] = NULL
        self.insp[b.side[VI_RESP].cid] = NULL
        if b.state == VI_OPEN:
            b.state = VI_DONE
        vi_put(b)
