# The network thread: owns the AF_XDP port and all protocol state; talks to the
# application thread only through the two handoff channels.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from vtlstack._handoff cimport Channel
from vtlstack._includes.spsc cimport vtl_msg
from vtlstack._port cimport XskPort, vtl_desc

# Handoff message kinds (vtl_msg.kind), visible to Python as _fastpath.MSG_*. App -> net:
cpdef enum MsgKind:
    MSG_BIND = 1        # lport, sock: deliver UDP datagrams for lport to sock
    MSG_UNBIND = 2      # lport
    MSG_ECHO = 3        # lport: answer UDP datagrams in the network thread
    MSG_NEIGH = 4       # ip, arg = MAC (6 bytes, little-endian packed)
    MSG_SEND = 5        # addr (granted frame), len, ip, port, lport: send a UDP datagram
    MSG_FREE = 6        # addr: the app is done with a received frame
    MSG_WANT = 7        # len = number of frames the app wants for sending
    MSG_STOP = 8
    # Net -> app:
    MSG_RECV = 20       # addr (payload), len, ip, port, lport, sock
    MSG_GRANT = 21      # addr: a free frame, now the app's


cdef enum:
    NEIGH_BITS = 8
    NEIGH_SLOTS = 1 << NEIGH_BITS


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
    uint64_t neigh_evicted
    uint64_t tx_ring_full
    uint64_t polls
    uint64_t loops


cdef class NetThread:
    cdef XskPort port
    cdef readonly Channel to_app
    cdef readonly Channel to_net
    cdef uint16_t owner[65536]
    cdef uint8_t mac[6]
    cdef uint32_t ip
    cdef uint16_t ip_id
    cdef uint32_t neigh_ip[256]
    cdef uint8_t neigh_mac[256][6]
    cdef uint32_t batch
    cdef uint64_t busy_poll_ns
    cdef volatile int stopping
    cdef readonly int tid
    cdef net_counters c
    cdef object _thread

    cdef void loop(self) noexcept nogil
    cdef int input(self, vtl_desc *d, vtl_desc *out) noexcept nogil
    cdef int drop(self, vtl_desc *d) noexcept nogil
    cdef uint32_t drain_app(self, vtl_desc *tx, uint32_t *ntx) noexcept nogil
    cdef int build_udp(self, vtl_msg *m, vtl_desc *out) noexcept nogil
    cdef void transmit(self, vtl_desc *tx, uint32_t n) noexcept nogil
    cdef void neigh_set(self, uint32_t ip, uint64_t packed) noexcept nogil
    cdef const uint8_t *neigh_get(self, uint32_t ip) noexcept nogil
