# cython: language_level=3
"""Views into UMEM frames that the application holds: the zero-copy side of receiving.

A FrameSet (a recv_zc() chain, a RecordBatch) keeps its frames out of the pool until
release(). Each FrameView exports the bytes of one frame through the buffer protocol,
read-only, so memoryview(), bytes(), numpy.frombuffer() and file.write() read the frame
itself. The set counts the exports its views made: release() refuses while one is alive,
and a released set's views refuse new ones, so no view can read a frame that went back to
the pool and was received into again.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from vtlstack._port cimport FramePool

from vtlstack.errors import ReleasedError

__all__ = ["FrameQueue", "FrameSet", "FrameView", "ZcChain"]


cdef class FrameSet:
    """Frames the application holds until `release()` (or the end of a `with` block).

    `on_release(set)` is called once, by the first release(): it hands the frames back.
    Releasing twice raises ReleasedError; releasing while a memoryview (or any buffer)
    made from one of the set's views is alive raises BufferError and releases nothing.
    """

    def __cinit__(self, FramePool pool not None, on_release, *args, **kw):
        self.pool = pool
        self.on_release = on_release

    def __dealloc__(self):
        free(self.addrs)

    cdef int alloc_addrs(self, uint32_t n) except -1:
        self.addrs = <uint64_t *>malloc(sizeof(uint64_t) * (n + 1))
        if self.addrs == NULL:
            raise MemoryError()
        self.naddrs = n
        return 0

    def give_back(self, free, FrameQueue shares=None) -> None:
        """free(addr) for each of its frames (the app's reference), except those that
        `shares` (the queue they came from) says another holder still has."""
        cdef uint32_t i
        for i in range(self.naddrs):
            if shares is None or shares.unhold(self.addrs[i]):
                free(self.addrs[i])

    @property
    def exported(self) -> int:
        """Buffers (memoryviews, numpy arrays...) still reading the set's frames."""
        return self.exports

    def release(self) -> None:
        """Hand the frames back. Views of this set are unusable afterwards."""
        if self.released:
            raise ReleasedError("already released: its frames went back to the pool")
        if self.exports:
            raise BufferError(f"{self.exports} buffer(s) made from these views (memoryview, "
                              "numpy array...) are still alive: release them first")
        self.released = True
        callback, self.on_release = self.on_release, None
        if callback is not None:
            callback(self)

    def _abandon(self) -> bool:
        """At stack close: mark released without handing anything back (the stack frees
        the frames itself). Returns True if buffers made from the views were still alive."""
        was = not self.released and self.exports > 0
        self.released = True
        self.on_release = None
        return was

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if not self.released:
            self.release()


cdef class FrameView:
    """Bytes [addr, addr + len) of one UMEM frame, exported read-only (buffer protocol).
    `offset` is the stream offset of its first byte."""

    def __cinit__(self, FrameSet owner not None, uint64_t addr, uint32_t length,
                  uint64_t offset=0):
        if length and owner.pool.frame_index(addr) != owner.pool.frame_index(addr + length - 1):
            raise ValueError("a FrameView lies within one frame")
        self.owner = owner
        self.addr = addr
        self.length = length
        self.offset = offset

    def __getbuffer__(self, Py_buffer *buf, int flags):
        if self.owner.released:
            raise ReleasedError("this view's frames were released: it reads nothing now")
        if flags & PyBUF_WRITABLE:
            raise BufferError("received frames are read-only")
        PyBuffer_FillInfo(buf, self, self.owner.pool.frame_ptr(self.addr), self.length, 1,
                          flags)
        self.owner.exports += 1

    def __releasebuffer__(self, Py_buffer *buf):
        self.owner.exports -= 1

    def __len__(self) -> int:
        return self.length

    def tobytes(self) -> bytes:
        """A copy of the bytes (the view stays valid until its set is released)."""
        if self.owner.released:
            raise ReleasedError("this view's frames were released: it reads nothing now")
        return PyBytes_FromStringAndSize(<char *>self.owner.pool.frame_ptr(self.addr),
                                         self.length)

    def __bytes__(self) -> bytes:
        return self.tobytes()

    def __repr__(self) -> str:
        state = "released" if self.owner.released else f"{self.length} bytes"
        return f"<FrameView at stream offset {self.offset}: {state}>"


cdef class ZcChain(FrameSet):
    """What one recv_zc() returned: views of consecutive stream bytes, one per frame.
    Empty (and false) at end of stream."""

    cdef readonly tuple views
    cdef readonly uint64_t offset       # stream offset of the first byte
    cdef readonly uint64_t nbytes

    def __cinit__(self, FramePool pool not None, on_release, spans, uint64_t offset):
        cdef uint64_t at = offset
        cdef uint32_t i = 0
        views = []
        self.alloc_addrs(len(spans))
        for addr, length in spans:
            views.append(FrameView(self, addr, length, at))
            self.addrs[i] = addr
            i += 1
            at += length
        self.views = tuple(views)
        self.offset = offset
        self.nbytes = at - offset

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self):
        return iter(self.views)

    def __getitem__(self, i):
        return self.views[i]

    def tobytes(self) -> bytes:
        """All the chain's bytes, copied into one bytes object."""
        cdef FrameView v
        cdef uint64_t at = 0
        if self.released:
            raise ReleasedError("this chain's frames were released: it reads nothing now")
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>self.nbytes)
        for v in self.views:
            memcpy(PyBytes_AS_STRING(out) + at, self.pool.frame_ptr(v.addr), v.length)
            at += v.length
        return out

    def __repr__(self) -> str:
        state = "released" if self.released else f"{len(self.views)} frames"
        return f"<ZcChain {self.nbytes} bytes at stream offset {self.offset}: {state}>"


cdef class FrameQueue:
    """A connection's received frames (one app reference each) in stream order, from their
    arrival until the app takes them: recv() copies out of them, recv_zc() takes whole
    frames, a record socket's batches take the frames their records lie in. A frame that a
    batch boundary cuts in two belongs to two batches (or to a batch and this queue) and
    goes back when the last of them lets go: `unhold()`."""

    def __cinit__(self):
        self.cap = 64
        self.f_addr = <uint64_t *>malloc(sizeof(uint64_t) * self.cap)
        self.f_len = <uint32_t *>malloc(sizeof(uint32_t) * self.cap)
        if self.f_addr == NULL or self.f_len == NULL:
            raise MemoryError()
        self.extra = {}

    def __dealloc__(self):
        free(self.f_addr)
        free(self.f_len)

    cdef int add(self, uint64_t addr, uint32_t length) except -1:
        cdef uint32_t cap = self.cap * 2, i
        cdef uint64_t *a
        cdef uint32_t *n
        if self.count == self.cap:
            # unwrap into arrays twice the size
            a = <uint64_t *>malloc(sizeof(uint64_t) * cap)
            n = <uint32_t *>malloc(sizeof(uint32_t) * cap)
            if a == NULL or n == NULL:
                free(a)
                free(n)
                raise MemoryError()
            for i in range(self.count):
                a[i] = self.f_addr[(self.head + i) % self.cap]
                n[i] = self.f_len[(self.head + i) % self.cap]
            free(self.f_addr)
            free(self.f_len)
            self.f_addr, self.f_len, self.cap, self.head = a, n, cap, 0
        i = (self.head + self.count) % self.cap
        self.f_addr[i] = addr
        self.f_len[i] = length
        self.count += 1
        self.received += length
        return 0

    cdef void pop_front(self) noexcept:
        self.offset += self.f_len[self.head]
        self.head = (self.head + 1) % self.cap
        self.count -= 1

    cdef void trim_front(self, uint32_t n) noexcept:
        """The first n bytes of the first frame were read (n below its length)."""
        self.f_addr[self.head] += n
        self.f_len[self.head] -= n
        self.offset += n

    cdef bint unhold(self, uint64_t addr) except -1:
        """One holder of the frame at addr lets go: True if it was the last."""
        if not self.extra:
            return True
        n = self.extra.get(addr, 0)
        if n == 0:
            return True
        if n == 1:
            del self.extra[addr]
        else:
            self.extra[addr] = n - 1
        return False

    def append(self, uint64_t addr, uint32_t length) -> None:
        self.add(addr, length)

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def popleft(self, uint32_t n=1) -> list:
        """The first n frames (at most those there are) as (addr, length), taken whole."""
        out = []
        while n and self.count:
            out.append((self.f_addr[self.head], self.f_len[self.head]))
            self.pop_front()
            n -= 1
        return out

    def after(self, uint64_t offset) -> list:
        """(addr, length, stream offset) of the frames that hold bytes at or after offset."""
        cdef uint64_t at = self.offset
        cdef uint32_t i, k
        out = []
        for i in range(self.count):
            k = (self.head + i) % self.cap
            if at + self.f_len[k] > offset:
                out.append((self.f_addr[k], self.f_len[k], at))
            at += self.f_len[k]
        return out

    def take(self, uint64_t end) -> list:
        """The frames that hold the stream bytes before `end` not taken yet, as (addr,
        length, stream offset): those wholly before `end` pass to the caller; one that
        `end` cuts stays here and gets one more holder (the caller)."""
        cdef uint64_t addr
        cdef uint32_t length
        out = []
        while self.count and self.offset < end:
            addr, length = self.f_addr[self.head], self.f_len[self.head]
            out.append((addr, length, self.offset))
            if self.offset + length > end:
                self.extra[addr] = self.extra.get(addr, 0) + 1
                break
            self.pop_front()
        return out

    def drop(self, free) -> None:
        """The frames not taken yet let go of theirs (the socket closes)."""
        while self.count:
            if self.unhold(self.f_addr[self.head]):
                free(self.f_addr[self.head])
            self.pop_front()
