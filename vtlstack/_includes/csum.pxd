from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "csum.h" nogil:
    uint64_t csum_add(uint64_t sum, const uint8_t *p, uint32_t len)
    uint16_t csum_fold(uint64_t sum)
    uint64_t csum_pseudo4(uint32_t saddr, uint32_t daddr, uint8_t proto, uint16_t len)
