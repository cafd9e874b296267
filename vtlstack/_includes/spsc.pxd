# Declarations of the SPSC handoff ring (spsc.h): the one definition of the message layout.
from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from "spsc.h" nogil:
    struct vtl_msg:
        uint64_t addr
        uint32_t len
        uint32_t ip
        uint16_t port
        uint16_t sock
        uint16_t kind
        uint16_t lport
        uint64_t arg

    struct spsc_ring:
        uint32_t size
        uint32_t mask
        uint32_t head
        uint32_t tail

    spsc_ring *spsc_new(uint32_t size)
    void spsc_free(spsc_ring *r)
    uint32_t spsc_free_slots(spsc_ring *r, uint32_t n)
    vtl_msg *spsc_slot(spsc_ring *r, uint32_t idx)
    void spsc_submit(spsc_ring *r, uint32_t n)
    int spsc_consumer_sleeping(spsc_ring *r)
    uint32_t spsc_ready(spsc_ring *r, uint32_t n)
    void spsc_release(spsc_ring *r, uint32_t n)
    int spsc_prepare_sleep(spsc_ring *r)
    void spsc_end_sleep(spsc_ring *r)
    uint32_t spsc_count(spsc_ring *r)
    int spsc_push(spsc_ring *r, const vtl_msg *m)
    int spsc_pop(spsc_ring *r, vtl_msg *out)
