# Declarations of the splice HTTP inspector (vtlinsp.h), shared by the network thread
# (_fastpath) and the application side (_inspect).
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from vtlstack._includes.vtlrec cimport vr_stream


cdef extern from "vtlinsp.h" nogil:
    enum:
        VI_RING
        VI_PENDING
        VI_METHOD
        VI_TARGET
        VI_REQ
        VI_RESP
        VI_OPEN
        VI_DONE
        VI_FAILED

    ctypedef int (*vi_push_fn)(void *st, int64_t v) noexcept nogil

    struct vi_exchange:
        uint64_t t_req
        uint64_t t_done
        uint64_t req_bytes
        uint64_t resp_bytes
        int32_t status
        uint8_t method_len
        uint8_t target_len
        uint8_t target_cut
        char method[16]
        char target[240]

    struct vi_side:
        vr_stream *r
        int32_t cid
        uint32_t seq0
        uint64_t off0
        uint32_t seen

    struct vi_block:
        uint32_t holders
        uint32_t state
        vi_side side[2]
        vi_push_fn push
        uint16_t id_method
        uint16_t id_target
        uint16_t id_status
        uint64_t scan_rec
        uint64_t scan
        uint8_t scan_state
        uint8_t head_done
        uint8_t status_seen
        uint8_t reject
        uint32_t pend_head
        uint32_t pend_n
        vi_exchange pend[64]
        vi_exchange cur
        uint8_t cur_answered
        vi_exchange orphan
        uint64_t requests
        uint64_t responses
        uint64_t parse_errors
        uint64_t rejected
        uint64_t bad_gateway
        uint64_t log_dropped
        uint64_t status_class[6]
        uint64_t req_bytes
        uint64_t resp_bytes
        const char *why
        uint64_t err_off

    const char VI_HTTP_400[]
    const char VI_HTTP_502[]

    vi_block *vi_new()
    void vi_put(vi_block *b)
    void vi_log(vi_block *b, const vi_exchange *x)
    int vi_take(vi_block *b, vi_exchange *x)
    int vi_scan(vi_block *b, const uint8_t *p, uint32_t n, uint64_t off)
