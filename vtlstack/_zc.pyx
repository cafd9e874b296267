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
from libc.string cimport memcpy

from vtlstack._port cimport FramePool

from vtlstack.errors import ReleasedError

__all__ = ["FrameSet", "FrameView", "ZcChain"]


cdef class FrameSet:
    """Frames the application holds until `release()` (or the end of a `with` block).

    `on_release(set)` is called once, by the first release(): it hands the frames back.
    Releasing twice raises ReleasedError; releasing while a memoryview (or any buffer)
    made from one of the set's views is alive raises BufferError and releases nothing.
    """

    def __cinit__(self, FramePool pool not None, on_release, *args, **kw):
        self.pool = pool
        self.on_release = on_release

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
        views = []
        for addr, length in spans:
            views.append(FrameView(self, addr, length, at))
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

    def give_back(self, free) -> None:
        """free(addr) for each frame: the app's reference on it."""
        cdef FrameView v
        for v in self.views:
            free(v.addr)

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
