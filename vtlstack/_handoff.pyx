# cython: language_level=3
"""Lock-free SPSC channels with an eventfd per direction (see _includes/spsc.h)."""

from libc.errno cimport errno
from libc.stdint cimport uint32_t, uint64_t
from posix.unistd cimport close, read, write

from vtlstack._includes.posix cimport (
    EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, eventfd, now_ns, poll, pollfd, sched_yield,
)
from vtlstack._includes.spsc cimport (
    spsc_consumer_sleeping, spsc_count, spsc_end_sleep, spsc_free, spsc_new, spsc_pop,
    spsc_prepare_sleep, spsc_push, spsc_ring, vtl_msg,
)


cdef inline double _now() noexcept nogil:
    return now_ns() * 1e-9


cdef class Channel:
    """One direction of the handoff: a ring of `size` messages and the consumer's eventfd.

    Exactly one thread produces and one consumes; the consumer may sleep in `wait()`.
    """

    def __cinit__(self, uint32_t size=4096):
        self.ring = spsc_new(size)
        if self.ring == NULL:
            raise ValueError(f"channel size must be a power of two >= 2, not {size}")
        self.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.efd < 0:
            spsc_free(self.ring)
            self.ring = NULL
            raise OSError(errno, "eventfd() failed")

    def __dealloc__(self):
        if self.ring != NULL:
            spsc_free(self.ring)
        if self.efd >= 0:
            close(self.efd)

    cdef int send(self, const vtl_msg *m) noexcept nogil:
        """Producer: push one message and wake a sleeping consumer. 0 if the ring is full."""
        if not spsc_push(self.ring, m):
            return 0
        self.wake_if_sleeping()
        return 1

    cdef int post(self, const vtl_msg *m) noexcept nogil:
        """Producer: push one message; the consumer is woken by the next flush(). A batch
        costs one wakeup: woken per message, a consumer on the producer's core would run
        (and sleep again) between every two messages."""
        if not spsc_push(self.ring, m):
            return 0
        self.unsignalled = 1
        return 1

    cdef void flush(self) noexcept nogil:
        """Producer: wake a sleeping consumer if messages were posted since the last flush."""
        if self.unsignalled:
            self.unsignalled = 0
            self.wake_if_sleeping()

    cdef void wake_if_sleeping(self) noexcept nogil:
        cdef uint64_t one = 1
        if spsc_consumer_sleeping(self.ring):
            write(self.efd, &one, sizeof(one))
            self.wakeups += 1

    cdef int wait(self, int timeout_ms) noexcept nogil:
        """Consumer: sleep until a message is ready or the timeout passes. 1 if ready."""
        cdef pollfd pfd
        cdef uint64_t drained, start
        if self.spin_ns:
            # A producer on this core gets it meanwhile (sched_yield); an answer that
            # comes within spin_ns costs no sleep and wakeup, which a VM makes dear.
            start = now_ns()
            while now_ns() - start < self.spin_ns:
                if spsc_count(self.ring):
                    return 1
                sched_yield()
        if not spsc_prepare_sleep(self.ring):
            return 1
        pfd.fd = self.efd
        pfd.events = POLLIN
        pfd.revents = 0
        poll(&pfd, 1, timeout_ms)
        # Clear the flag first: a producer that still saw it set has written the eventfd
        # by the time we drain it, so fewer stale wakeups are left for the next sleep.
        spsc_end_sleep(self.ring)
        read(self.efd, &drained, sizeof(drained))
        return spsc_count(self.ring) > 0

    @property
    def size(self) -> int:
        return self.ring.size

    def __len__(self) -> int:
        return spsc_count(self.ring)

    # Python-level access, for tests and the control plane (not the per-packet path).
    def push(self, int kind, uint64_t addr=0, uint32_t length=0, uint32_t ip=0,
             int port=0, int sock=0, int lport=0, uint64_t arg=0) -> bool:
        cdef vtl_msg m
        m.kind = kind
        m.addr = addr
        m.len = length
        m.ip = ip
        m.port = port
        m.sock = sock
        m.lport = lport
        m.arg = arg
        return bool(self.send(&m))

    def pop(self):
        """The next message as (kind, addr, len, ip, port, sock, lport, arg), or None."""
        cdef vtl_msg m
        if not spsc_pop(self.ring, &m):
            return None
        return (m.kind, m.addr, m.len, m.ip, m.port, m.sock, m.lport, m.arg)

    def wait_ready(self, double timeout) -> bool:
        """Sleep (GIL released) until a message is ready or `timeout` seconds pass."""
        cdef int ms = <int>(timeout * 1000)
        cdef int ready
        with nogil:
            ready = self.wait(ms)
        return bool(ready)

    def arm(self) -> bool:
        """Consumer, for an event loop that sleeps on `efd` itself (select, epoll, asyncio):
        mark the consumer as sleeping, as `wait()` does before its poll(). True: the ring
        is empty and the next message makes `efd` readable. False: a message is ready now
        (not armed): pop it, then arm again. Between an arm and the loop's sleep the
        consumer may pop freely; it may only miss a wakeup if it sleeps unarmed."""
        return bool(spsc_prepare_sleep(self.ring))

    def disarm(self) -> None:
        """Consumer, woken by `efd` (or done sleeping): stop asking the producer for
        eventfd writes and clear the eventfd, in the order `wait()` uses."""
        cdef uint64_t drained
        spsc_end_sleep(self.ring)
        read(self.efd, &drained, sizeof(drained))

    def produce_seq(self, uint64_t n, double timeout=10.0) -> int:
        """Test helper: push 0..n-1 without the GIL, spinning while the ring is full.
        Gives up after `timeout` seconds without progress; returns how many were pushed."""
        cdef vtl_msg m
        cdef uint64_t i = 0
        cdef uint64_t spins = 0
        cdef double last = _now()
        m.kind = 1
        with nogil:
            while i < n:
                m.addr = i
                if self.send(&m):
                    i += 1
                    spins = 0
                    continue
                spins += 1
                if spins & 0xFFFF == 0:
                    if _now() - last > timeout:
                        break
                elif spins == 1:
                    last = _now()
        return i

    def consume_seq(self, uint64_t n, double timeout=10.0) -> int:
        """Test helper: pop n messages without the GIL, sleeping when the ring is empty.
        Returns how many came in order; gives up after `timeout` seconds without progress."""
        cdef vtl_msg m
        cdef uint64_t expect = 0
        cdef uint64_t in_order = 0
        cdef double last = _now()
        with nogil:
            while expect < n:
                if spsc_pop(self.ring, &m):
                    if m.addr == expect:
                        in_order += 1
                    expect += 1
                    last = 0
                    continue
                if last == 0:
                    last = _now()
                if not self.wait(100) and _now() - last > timeout:
                    break
        return in_order
