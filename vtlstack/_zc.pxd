# Frames the application holds through zero-copy views (see _zc.pyx); _recstream's
# RecordBatch is a FrameSet too.
from libc.stdint cimport uint32_t, uint64_t

from vtlstack._port cimport FramePool


cdef class FrameSet:
    cdef readonly FramePool pool
    cdef readonly bint released
    cdef Py_ssize_t exports
    cdef object on_release
    cdef uint64_t *addrs        # its frames, one app reference each (set by subclasses)
    cdef uint32_t naddrs

    cdef int alloc_addrs(self, uint32_t n) except -1


cdef class FrameQueue:
    cdef uint64_t *f_addr       # a ring of the frames not handed out yet, oldest first
    cdef uint32_t *f_len
    cdef uint32_t head, count, cap
    cdef readonly uint64_t offset       # stream offset of the first one's first byte
    cdef readonly uint64_t received     # stream offset after the last one
    cdef dict extra             # addr -> holders beyond the first (frames a batch cut)

    cdef int add(self, uint64_t addr, uint32_t length) except -1
    cdef void pop_front(self) noexcept
    cdef void trim_front(self, uint32_t n) noexcept
    cdef bint unhold(self, uint64_t addr) except -1


cdef class FrameView:
    cdef readonly FrameSet owner
    cdef readonly uint64_t addr
    cdef readonly uint32_t length
    cdef readonly uint64_t offset
