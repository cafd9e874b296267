# Ethernet II header: offsets and accessors over a frame pointer. Callers check the
# length once (ETH_HLEN) at the edge; the accessors below cannot fail.
from libc.stdint cimport uint8_t, uint16_t
from libc.string cimport memcpy

cdef enum:
    ETH_HLEN = 14
    ETH_ALEN = 6
    ETH_DST = 0
    ETH_SRC = 6
    ETH_TYPE = 12
    ETHERTYPE_IPV4 = 0x0800
    ETHERTYPE_ARP = 0x0806
    ETHERTYPE_IPV6 = 0x86DD


cdef inline uint16_t eth_type(const uint8_t *f) noexcept nogil:
    return (f[ETH_TYPE] << 8) | f[ETH_TYPE + 1]


cdef inline void eth_swap_addrs(uint8_t *f) noexcept nogil:
    cdef uint8_t tmp[6]
    memcpy(tmp, f + ETH_DST, ETH_ALEN)
    memcpy(f + ETH_DST, f + ETH_SRC, ETH_ALEN)
    memcpy(f + ETH_SRC, tmp, ETH_ALEN)


cdef inline void eth_write(uint8_t *f, const uint8_t *dst, const uint8_t *src,
                           uint16_t ethertype) noexcept nogil:
    memcpy(f + ETH_DST, dst, ETH_ALEN)
    memcpy(f + ETH_SRC, src, ETH_ALEN)
    f[ETH_TYPE] = ethertype >> 8
    f[ETH_TYPE + 1] = ethertype & 0xFF
