/* Internet checksum (RFC 1071), folded 64-bit accumulation: the one implementation used
 * for IPv4 headers and for UDP/TCP with their pseudo-header. */
#ifndef VTL_CSUM_H
#define VTL_CSUM_H

#include <stdint.h>
#include <string.h>

static inline uint16_t htons_inline(uint16_t x) { return (uint16_t)((x << 8) | (x >> 8)); }

static inline uint64_t csum_add(uint64_t sum, const uint8_t *p, uint32_t len)
{
    uint32_t w;
    /* 32-bit words as below, 16 bytes a step into two sums: one long chain of dependent
     * adds was most of the time of sending a segment out of its frame. Neither sum can
     * overflow short of gigabytes. */
    uint64_t w0, w1, a = 0, b = 0;
    while (len >= 16) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        a += (w0 & 0xffffffff) + (w0 >> 32);
        b += (w1 & 0xffffffff) + (w1 >> 32);
        p += 16;
        len -= 16;
    }
    sum += a + b;
    while (len >= 4) {
        memcpy(&w, p, 4);
        sum += w;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        sum += h;
        p += 2;
        len -= 2;
    }
    if (len)
        sum += *p;  /* little-endian host: a trailing byte is the high-order half of 0xXX00 in network order */
    return sum;
}

static inline uint16_t csum_fold(uint64_t sum)
{
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Pseudo-header sum for UDP/TCP over IPv4 (addresses already in network order). */
static inline uint64_t csum_pseudo4(uint32_t saddr, uint32_t daddr, uint8_t proto, uint16_t len)
{
    return (uint64_t)saddr + daddr + ((uint32_t)htons_inline(proto)) + htons_inline(len);
}

#endif
