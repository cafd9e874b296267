# Frames the application holds through zero-copy views (see _zc.pyx); _recstream's
# RecordBatch is a FrameSet too.
from libc.stdint cimport uint32_t, uint64_t

from vtlstack._port cimport FramePool


cdef class FrameSet:
    cdef readonly FramePool pool
    cdef readonly bint released
    cdef Py_ssize_t exports
    cdef object on_release


cdef class FrameView:
    cdef readonly FrameSet owner
    cdef readonly uint64_t addr
    cdef readonly uint32_t length
    cdef readonly uint64_t offset
