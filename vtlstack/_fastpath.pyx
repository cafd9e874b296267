# cython: language_level=3
"""The network thread: receive, classify, answer or hand off, transmit; sleep when idle.

Everything below `loop()` runs without the GIL and touches no Python object. The
application thread reaches this state only through the two Channels (see _handoff).
"""

import os
import threading

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.unistd cimport read

from vtlstack._handoff cimport Channel
from vtlstack._includes.posix cimport (
    POLLIN, SYS_gettid, now_ns, poll, pollfd, syscall,
)
from vtlstack._includes.spsc cimport spsc_end_sleep, spsc_pop, spsc_prepare_sleep, vtl_msg
from vtlstack._port cimport FRAME_TX, VTL_NO_FRAME, XskPort, vtl_desc
from vtlstack.proto.eth cimport (
    ETH_HLEN, ETHERTYPE_IPV4, eth_swap_addrs, eth_type, eth_write,
)
from vtlstack.proto.ipv4 cimport (
    IPPROTO_UDP_, IPV4_BAD_CHECKSUM, IPV4_MIN_HLEN, IPV4_OK, ipv4_check, ipv4_dst, ipv4_hlen,
    ipv4_proto, ipv4_src, ipv4_swap_addrs, ipv4_tot_len, ipv4_write,
)
from vtlstack.proto.udp cimport (
    UDP_HLEN, udp_checksum_ok, udp_dport, udp_len, udp_sport, udp_swap_ports, udp_write,
)


# Bytes of Ethernet + IPv4 + UDP headers in front of a datagram the app sends.
cdef enum:
    UDP_PAYLOAD = ETH_HLEN + IPV4_MIN_HLEN + UDP_HLEN
UDP_PAYLOAD_OFFSET = UDP_PAYLOAD

cdef enum:
    PARSE_OK = 0
    PARSE_MALFORMED = 1
    PARSE_BAD_CHECKSUM = 2
    PARSE_NOT_OURS = 3

cdef struct udp_view:
    uint32_t src            # network byte order
    uint32_t dst
    uint16_t sport
    uint16_t dport
    uint16_t l4_off         # from the start of the frame
    uint16_t payload_off
    uint16_t payload_len
    uint16_t frame_len      # Ethernet header + IP total length (no padding)

cdef enum:
    MAX_BATCH = 256
    OWNER_NONE = 0
    OWNER_ECHO = 1
    OWNER_SOCK_BASE = 2     # owner value = socket id + OWNER_SOCK_BASE
    IDLE_POLL_MS = 1000     # upper bound on one sleep: stop requests also wake the thread


cdef int udp_parse(const uint8_t *f, uint32_t avail, udp_view *v) noexcept nogil:
    """Validate an Ethernet/IPv4/UDP frame once; after PARSE_OK the view can be trusted."""
    cdef const uint8_t *ip
    cdef const uint8_t *u
    cdef uint16_t hl, tot, ulen
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
    if ipv4_proto(ip) != IPPROTO_UDP_:
        return PARSE_NOT_OURS
    hl = ipv4_hlen(ip)
    tot = ipv4_tot_len(ip)
    u = ip + hl
    if tot - hl < UDP_HLEN:
        return PARSE_MALFORMED
    ulen = udp_len(u)
    # RFC 768: the length covers header and data; it may not exceed what IP carries.
    if ulen < UDP_HLEN or ulen > tot - hl:
        return PARSE_MALFORMED
    if not udp_checksum_ok(u, ulen, ipv4_src(ip), ipv4_dst(ip)):
        return PARSE_BAD_CHECKSUM
    v.src = ipv4_src(ip)
    v.dst = ipv4_dst(ip)
    v.sport = udp_sport(u)
    v.dport = udp_dport(u)
    v.l4_off = ETH_HLEN + hl
    v.payload_off = ETH_HLEN + hl + UDP_HLEN
    v.payload_len = ulen - UDP_HLEN
    v.frame_len = ETH_HLEN + tot
    return PARSE_OK


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


cdef class NetThread:
    """The network thread of one port. `start()` runs it; `stop()` joins it."""

    def __cinit__(self, XskPort port, bytes mac not None, uint32_t ip, uint32_t batch=64,
                  uint32_t busy_poll_us=0, uint32_t channel_size=4096):
        if len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be within 1..{MAX_BATCH}")
        self.port = port
        self.to_app = Channel(channel_size)
        self.to_net = Channel(channel_size)
        memset(self.owner, 0, sizeof(self.owner))
        memset(self.neigh_ip, 0, sizeof(self.neigh_ip))
        memset(&self.c, 0, sizeof(self.c))
        memcpy(self.mac, <const char *>mac, 6)
        self.ip = ip
        self.batch = batch
        self.busy_poll_ns = <uint64_t>busy_poll_us * 1000
        self.stopping = 0
        self.tid = 0
        self._thread = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the network thread is already running")
        self._thread = threading.Thread(target=self._run, name="vtl-net", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with nogil:
            self.loop()

    def stop(self, double timeout=5.0) -> None:
        """Ask the thread to stop, wake it, and wait for it."""
        self.stopping = 1
        os.eventfd_write(self.to_net.efd, 1)
        if self._thread is not None:
            self._thread.join(timeout)
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
        cdef vtl_desc tx[MAX_BATCH]
        cdef uint32_t n, i, ntx, work
        cdef uint64_t last_work = now_ns()
        cdef uint64_t drained
        cdef pollfd pfds[2]
        self.tid = <int>syscall(SYS_gettid)
        pfds[0].fd = self.port.q.fd
        pfds[0].events = POLLIN
        pfds[1].fd = self.to_net.efd
        pfds[1].events = POLLIN
        while not self.stopping:
            self.c.loops += 1
            ntx = 0
            n = self.port.rx_burst(rx, self.batch)
            for i in range(n):
                if self.input(&rx[i], &tx[ntx]):
                    ntx += 1
            work = n + self.drain_app(tx, &ntx)
            if ntx:
                self.transmit(tx, ntx)
            self.port.complete()
            self.port.refill()
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
                continue
            last_work = 0
            if spsc_prepare_sleep(self.to_net.ring):
                self.c.polls += 1
                poll(pfds, 2, 1 if self.port.pool.count[<int>FRAME_TX] else IDLE_POLL_MS)
                read(self.to_net.efd, &drained, sizeof(drained))
                spsc_end_sleep(self.to_net.ring)

    cdef int input(self, vtl_desc *d, vtl_desc *out) noexcept nogil:
        """One received frame. Returns 1 when it became a frame to send (written to out)."""
        cdef uint8_t *f = self.port.frame_ptr(d.addr)
        cdef udp_view v
        cdef int verdict = udp_parse(f, d.len, &v)
        cdef uint16_t own
        cdef vtl_msg m
        self.c.rx_packets += 1
        self.c.rx_bytes += d.len
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
        if not self.to_app.send(&m):
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
        while ntx[0] < MAX_BATCH and spsc_pop(self.to_net.ring, &m):
            done += 1
            if m.kind == MSG_SEND:
                if self.build_udp(&m, &tx[ntx[0]]):
                    ntx[0] += 1
            elif m.kind == MSG_FREE:
                self.port.free_frame(m.addr)
            elif m.kind == MSG_WANT:
                for k in range(m.len):
                    addr = self.port.alloc_frame()
                    if addr == VTL_NO_FRAME:
                        break
                    m.kind = MSG_GRANT
                    m.addr = addr
                    if not self.to_app.send(&m):
                        self.port.free_frame(addr)
                        break
            elif m.kind == MSG_BIND:
                self.owner[m.lport] = m.sock + OWNER_SOCK_BASE
            elif m.kind == MSG_UNBIND:
                self.owner[m.lport] = OWNER_NONE
            elif m.kind == MSG_ECHO:
                self.owner[m.lport] = OWNER_ECHO
            elif m.kind == MSG_NEIGH:
                self.neigh_set(m.ip, m.arg)
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

    cdef void transmit(self, vtl_desc *tx, uint32_t n) noexcept nogil:
        cdef uint32_t sent = self.port.tx_burst(tx, n)
        cdef uint32_t i
        for i in range(sent):
            self.c.tx_bytes += tx[i].len
        self.c.tx_packets += sent
        for i in range(sent, n):
            self.c.tx_ring_full += 1
            self.port.free_frame(tx[i].addr)

    # A small neighbour table (IPv4 -> MAC), open addressing with linear probing, filled
    # by the app from the kernel's routes and neighbours (pyroute2). When every slot is
    # taken the home slot is overwritten and counted; the app then resolves again.
    cdef void neigh_set(self, uint32_t ip, uint64_t packed) noexcept nogil:
        cdef uint32_t home = (ip * 2654435761u) >> (32 - NEIGH_BITS)
        cdef uint32_t slot = home
        cdef int i, k
        for k in range(NEIGH_SLOTS):
            slot = (home + k) & (NEIGH_SLOTS - 1)
            if self.neigh_ip[slot] == 0 or self.neigh_ip[slot] == ip:
                break
        else:
            slot = home
            self.c.neigh_evicted += 1
        for i in range(6):
            self.neigh_mac[slot][i] = (packed >> (8 * i)) & 0xFF
        self.neigh_ip[slot] = ip

    cdef const uint8_t *neigh_get(self, uint32_t ip) noexcept nogil:
        cdef uint32_t home = (ip * 2654435761u) >> (32 - NEIGH_BITS)
        cdef uint32_t slot
        cdef int k
        if ip == 0:
            return NULL
        for k in range(NEIGH_SLOTS):
            slot = (home + k) & (NEIGH_SLOTS - 1)
            if self.neigh_ip[slot] == ip:
                return self.neigh_mac[slot]
            if self.neigh_ip[slot] == 0:
                return NULL
        return NULL
