# Declarations of the record-parser ABI (vtlparse.h): the one definition of the event layout,
# and the signatures every generated parser exports (looked up with dlsym).
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "vtlparse.h" nogil:
    enum:
        VP_ABI
        VP_OK
        VP_FULL
        VP_ERROR
        VP_EV_SPAN
        VP_EV_VALUE
        VP_EV_NULL
        VP_EV_BEGIN
        VP_EV_END
        VP_EV_RECORD
        VP_F_UNESCAPE
        VP_MIN_EVENTS

    struct vp_event:
        uint64_t off
        int64_t val
        uint32_t len
        uint16_t id
        uint8_t kind
        uint8_t flags

    struct vp_out:
        vp_event *ev
        uint32_t cap
        uint32_t n
        uint64_t consumed


ctypedef int (*vp_abi_fn)() noexcept nogil
ctypedef const char *(*vp_meta_fn)() noexcept nogil
ctypedef size_t (*vp_state_size_fn)() noexcept nogil
ctypedef const char *(*vp_init_fn)(void *st, const int64_t *params) noexcept nogil
ctypedef int (*vp_push_fn)(void *st, int64_t v) noexcept nogil
ctypedef int (*vp_feed_fn)(void *st, const uint8_t *buf, size_t n, uint64_t off,
                           vp_out *out) noexcept nogil
ctypedef int (*vp_finish_fn)(void *st, vp_out *out) noexcept nogil
ctypedef const char *(*vp_error_fn)(const void *st, uint64_t *off) noexcept nogil
