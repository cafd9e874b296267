# UDP header (RFC 768): offsets and accessors over a pointer to the UDP header.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

from vtlstack._includes.csum cimport csum_add, csum_fold, csum_pseudo4

cdef enum:
    UDP_HLEN = 8
    UDP_SPORT = 0
    UDP_DPORT = 2
    UDP_LEN = 4
    UDP_CSUM = 6


cdef inline uint16_t udp_sport(const uint8_t *u) noexcept nogil:
    return (u[UDP_SPORT] << 8) | u[UDP_SPORT + 1]


cdef inline uint16_t udp_dport(const uint8_t *u) noexcept nogil:
    return (u[UDP_DPORT] << 8) | u[UDP_DPORT + 1]


cdef inline uint16_t udp_len(const uint8_t *u) noexcept nogil:
    return (u[UDP_LEN] << 8) | u[UDP_LEN + 1]


cdef inline void udp_swap_ports(uint8_t *u) noexcept nogil:
    # Swapping the ports (and the addresses) leaves the UDP checksum unchanged.
    cdef uint8_t a = u[0], b = u[1]
    u[0] = u[2]
    u[1] = u[3]
    u[2] = a
    u[3] = b


cdef inline bint udp_checksum_ok(const uint8_t *u, uint16_t ulen, uint32_t src,
                                 uint32_t dst) noexcept nogil:
    # RFC 768: a zero checksum means the sender did not compute one.
    if u[UDP_CSUM] == 0 and u[UDP_CSUM + 1] == 0:
        return True
    return csum_fold(csum_add(csum_pseudo4(src, dst, 17, ulen), u, ulen)) == 0


cdef inline void udp_write(uint8_t *u, uint16_t sport, uint16_t dport, uint16_t ulen,
                           uint32_t src, uint32_t dst) noexcept nogil:
    """Header for `ulen` bytes (header + payload already in place); checksum computed."""
    cdef uint16_t c
    u[UDP_SPORT] = sport >> 8
    u[UDP_SPORT + 1] = sport & 0xFF
    u[UDP_DPORT] = dport >> 8
    u[UDP_DPORT + 1] = dport & 0xFF
    u[UDP_LEN] = ulen >> 8
    u[UDP_LEN + 1] = ulen & 0xFF
    u[UDP_CSUM] = 0
    u[UDP_CSUM + 1] = 0
    c = csum_fold(csum_add(csum_pseudo4(src, dst, 17, ulen), u, ulen))
    if c == 0:
        c = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    memcpy(u + UDP_CSUM, &c, 2)
