# Declarations of a connection's record stream (vtlrec.h), shared by the network thread
# (_fastpath) and the application side (_recstream).
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from vtlstack._includes.vtlparse cimport vp_event


cdef extern from "vtlrec.h" nogil:
    enum:
        VR_DONE
        VR_STALL
        VR_FAILED
        VR_OPEN
        VR_ENDED
        VR_ERROR
        VR_SCRATCH
    const char *VR_NO_ROOM

    ctypedef int (*vr_feed_fn)(void *st, const uint8_t *buf, size_t n, uint64_t off,
                               void *out) noexcept nogil
    ctypedef int (*vr_finish_fn)(void *st, void *out) noexcept nogil
    ctypedef const char *(*vr_error_fn)(const void *st, uint64_t *off) noexcept nogil

    struct vr_stream:
        vr_feed_fn feed
        vr_finish_fn finish
        vr_error_fn error
        void *st
        uint64_t max_record
        uint32_t cap
        uint32_t mask
        uint64_t parsed
        uint64_t rec_start
        uint64_t consumed
        uint32_t write
        uint8_t fin
        uint32_t head
        uint32_t tail
        uint32_t status
        const char *why
        uint64_t err_off
        uint64_t records
        uint32_t *ends
        vp_event ring[1]

    vr_stream *vr_new(uint32_t cap, size_t state_size)
    void vr_put(vr_stream *r)
    int vr_parse(vr_stream *r, const uint8_t *buf, size_t len, uint64_t off)
    int vr_finish(vr_stream *r)
    int vr_fail(vr_stream *r, const char *why, uint64_t off)
    uint32_t vr_ready(vr_stream *r)
    uint64_t vr_record_end(const vr_stream *r, uint64_t k)
    uint32_t vr_count(const vr_stream *r, uint64_t k, uint32_t start, uint32_t limit,
                      uint32_t max_records, uint64_t edge, uint32_t *events, uint64_t *end)
    uint32_t vr_status(vr_stream *r)
    int vr_release(vr_stream *r, uint32_t n)
