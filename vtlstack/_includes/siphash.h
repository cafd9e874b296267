/* SipHash-2-4 (Aumasson, Bernstein 2012): the keyed hash behind ISNs (RFC 6528) and SYN
 * cookies. Inputs here are a few 32-bit words, so the entry point hashes whole 64-bit words;
 * the bytes are those of the words on this (little-endian) host. */
#ifndef VTL_SIPHASH_H
#define VTL_SIPHASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define VTL_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define VTL_SIPROUND                                                                  \
    do {                                                                              \
        v0 += v1; v1 = VTL_ROTL(v1, 13); v1 ^= v0; v0 = VTL_ROTL(v0, 32);             \
        v2 += v3; v3 = VTL_ROTL(v3, 16); v3 ^= v2;                                    \
        v0 += v3; v3 = VTL_ROTL(v3, 21); v3 ^= v0;                                    \
        v2 += v1; v1 = VTL_ROTL(v1, 17); v1 ^= v2; v2 = VTL_ROTL(v2, 32);             \
    } while (0)

static inline uint64_t siphash24(const uint8_t *in, size_t inlen, uint64_t k0, uint64_t k1)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    uint64_t b = ((uint64_t)inlen) << 56, m;
    const uint8_t *end = in + inlen - (inlen % 8);
    size_t left = inlen & 7, i;
    for (; in != end; in += 8) {
        memcpy(&m, in, 8);
        v3 ^= m;
        VTL_SIPROUND;
        VTL_SIPROUND;
        v0 ^= m;
    }
    for (i = 0; i < left; i++)
        b |= ((uint64_t)in[i]) << (8 * i);
    v3 ^= b;
    VTL_SIPROUND;
    VTL_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    VTL_SIPROUND;
    VTL_SIPROUND;
    VTL_SIPROUND;
    VTL_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* Hash of up to four 64-bit words. */
static inline uint64_t siphash_words(const uint64_t *w, size_t n, uint64_t k0, uint64_t k1)
{
    return siphash24((const uint8_t *)w, n * 8, k0, k1);
}

#endif
