# IPv4 header (RFC 791): offsets and accessors over a pointer to the IP header.
# ipv4_check() is the one length/shape check; after it, the accessors cannot fail.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

from vtlstack._includes.csum cimport csum_add, csum_fold

cdef enum:
    IPV4_MIN_HLEN = 20
    IPV4_VER_IHL = 0
    IPV4_TOS = 1
    IPV4_TOT_LEN = 2
    IPV4_ID = 4
    IPV4_FRAG = 6
    IPV4_TTL = 8
    IPV4_PROTO = 9
    IPV4_CSUM = 10
    IPV4_SRC = 12
    IPV4_DST = 16
    IPPROTO_TCP_ = 6
    IPPROTO_UDP_ = 17
    IPPROTO_VTL = 253

# Reasons ipv4_check() gives (0 = fine).
cdef enum:
    IPV4_OK = 0
    IPV4_TRUNCATED = 1
    IPV4_BAD_VERSION = 2
    IPV4_BAD_LENGTH = 3
    IPV4_BAD_CHECKSUM = 4
    IPV4_FRAGMENT = 5


cdef inline uint16_t ipv4_hlen(const uint8_t *ip) noexcept nogil:
    return (ip[IPV4_VER_IHL] & 0x0F) * 4


cdef inline uint16_t ipv4_tot_len(const uint8_t *ip) noexcept nogil:
    return (ip[IPV4_TOT_LEN] << 8) | ip[IPV4_TOT_LEN + 1]


cdef inline uint8_t ipv4_proto(const uint8_t *ip) noexcept nogil:
    return ip[IPV4_PROTO]


cdef inline uint32_t ipv4_src(const uint8_t *ip) noexcept nogil:
    """Source address in network byte order."""
    cdef uint32_t a
    memcpy(&a, ip + IPV4_SRC, 4)
    return a


cdef inline uint32_t ipv4_dst(const uint8_t *ip) noexcept nogil:
    cdef uint32_t a
    memcpy(&a, ip + IPV4_DST, 4)
    return a


cdef inline int ipv4_check(const uint8_t *ip, uint32_t avail) noexcept nogil:
    """Validate the header of a packet with `avail` bytes from the IP header on."""
    cdef uint16_t hlen, tot
    if avail < IPV4_MIN_HLEN:
        return IPV4_TRUNCATED
    if ip[IPV4_VER_IHL] >> 4 != 4:
        return IPV4_BAD_VERSION
    hlen = ipv4_hlen(ip)
    tot = ipv4_tot_len(ip)
    if hlen < IPV4_MIN_HLEN or tot < hlen or tot > avail:
        return IPV4_BAD_LENGTH
    if csum_fold(csum_add(0, ip, hlen)) != 0:
        return IPV4_BAD_CHECKSUM
    # We do not reassemble: a fragment (MF set or a non-zero offset) is the kernel's.
    if ((ip[IPV4_FRAG] & 0x3F) << 8 | ip[IPV4_FRAG + 1]) != 0:
        return IPV4_FRAGMENT
    return IPV4_OK


cdef inline void ipv4_swap_addrs(uint8_t *ip) noexcept nogil:
    # Swapping the two addresses leaves the header checksum unchanged.
    cdef uint8_t tmp[4]
    memcpy(tmp, ip + IPV4_SRC, 4)
    memcpy(ip + IPV4_SRC, ip + IPV4_DST, 4)
    memcpy(ip + IPV4_DST, tmp, 4)


cdef inline void ipv4_write(uint8_t *ip, uint16_t tot_len, uint16_t ident, uint8_t proto,
                            uint32_t src, uint32_t dst) noexcept nogil:
    """A 20-byte header, DF set, TTL 64, checksum computed. Addresses in network order."""
    cdef uint16_t c
    ip[IPV4_VER_IHL] = 0x45
    ip[IPV4_TOS] = 0
    ip[IPV4_TOT_LEN] = tot_len >> 8
    ip[IPV4_TOT_LEN + 1] = tot_len & 0xFF
    ip[IPV4_ID] = ident >> 8
    ip[IPV4_ID + 1] = ident & 0xFF
    ip[IPV4_FRAG] = 0x40
    ip[IPV4_FRAG + 1] = 0
    ip[IPV4_TTL] = 64
    ip[IPV4_PROTO] = proto
    ip[IPV4_CSUM] = 0
    ip[IPV4_CSUM + 1] = 0
    memcpy(ip + IPV4_SRC, &src, 4)
    memcpy(ip + IPV4_DST, &dst, 4)
    c = csum_fold(csum_add(0, ip, IPV4_MIN_HLEN))
    memcpy(ip + IPV4_CSUM, &c, 2)
