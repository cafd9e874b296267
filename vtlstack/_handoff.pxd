# The handoff between the network thread and the application thread: one Channel per
# direction, each an SPSC ring of vtl_msg plus the eventfd its consumer sleeps on.
from vtlstack._includes.spsc cimport spsc_ring, vtl_msg


cdef class Channel:
    cdef spsc_ring *ring
    cdef readonly int efd
    cdef readonly unsigned long long wakeups
    cdef bint unsignalled
    cdef unsigned long long spin_ns     # wait(): yield-and-check this long before sleeping

    cdef int send(self, const vtl_msg *m) noexcept nogil
    cdef int post(self, const vtl_msg *m) noexcept nogil
    cdef void flush(self) noexcept nogil
    cdef void wake_if_sleeping(self) noexcept nogil
    cdef int wait(self, int timeout_ms) noexcept nogil
