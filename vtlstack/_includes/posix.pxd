# The libc and Linux calls the network thread, the handoff and the port share: declared
# once here (device-specific ones stay in xsk.pxd).
from libc.stdint cimport uint64_t


cdef extern from "<poll.h>" nogil:
    enum:
        POLLIN
        POLLOUT
        POLLERR

    struct pollfd:
        int fd
        short events
        short revents

    int poll(pollfd *fds, unsigned long nfds, int timeout)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
    int clock_gettime(int clk, timespec *ts)


cdef inline uint64_t now_ns() noexcept nogil:
    """CLOCK_MONOTONIC in nanoseconds (vDSO: no syscall)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC


cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)


cdef extern from "<sys/syscall.h>" nogil:
    enum:
        SYS_gettid


cdef extern from "<sched.h>" nogil:
    int sched_yield()
