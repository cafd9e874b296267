# cython: language_level=3
"""Records in the stack, application side: a connection's record stream (vtlrec.h) and the
batches read_records() hands out.

A RecStream owns the application's hold on one vr_stream block: the parser state and the
ring of the events of complete records. The network thread parses into it (or, with
parse_in="app", the application thread through parse()); take() moves the events of up to
N complete records out of the ring: lent (the batch reads the ring slots themselves until
it is released) or, when they wrap around the ring's end, copied. A RecordBatch holds those
events and the frames their bytes are in: fields are (stream offset, length) spans that
batch.view() and batch.column() map onto the frames, so reading a field copies nothing
until the application asks for Python values (to_python(), the offline parser's
as_dict()).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlerror, dlopen, dlsym

import numpy

from vtlstack._includes.vtlparse cimport (
    VP_EV_BEGIN, VP_EV_END, VP_EV_RECORD, VP_EV_SPAN, vp_event, vp_init_fn,
    vp_state_size_fn,
)
from vtlstack._includes.vtlrec cimport (
    VR_ERROR, VR_FAILED, VR_OPEN, VR_SCRATCH, vr_count, vr_error_fn, vr_feed_fn, vr_finish,
    vr_finish_fn, vr_new, vr_parse, vr_put, vr_ready, vr_record_end, vr_release, vr_status,
    vr_stream,
)
from vtlstack._port cimport FramePool
from vtlstack._zc cimport FrameSet, FrameView

from vtlstack._records import records_from_events
from vtlstack.errors import ParseError, ReleasedError, VtlError

__all__ = ["EVENT_DTYPE", "Events", "RecStream", "RecordBatch"]

# vp_event as numpy sees it (vtlparse.h: 24 bytes).
EVENT_DTYPE = numpy.dtype([("off", "<u8"), ("val", "<i8"), ("len", "<u4"), ("id", "<u2"),
                           ("kind", "u1"), ("flags", "u1")])
assert EVENT_DTYPE.itemsize == sizeof(vp_event)

# What take() and parse() say, for the socket.
STALLED = 1
FAILED = 2


cdef void *_sym(void *handle, bytes name, str path) except NULL:
    cdef void *f = dlsym(handle, name)
    if f == NULL:
        raise VtlError(f"{path} is not a record parser (no {name.decode()})")
    return f


cdef class Events


cdef class RecStream:
    """One connection's record stream. `ring_events` (a power of two) bounds the events of
    records parsed and not yet read; `max_record` the bytes of an unfinished record."""

    cdef vr_stream *r
    cdef int holds            # holders that are ours: 1, or 2 when we parse too
    cdef readonly str path
    cdef uint32_t lent        # ring index after the events taken (tail <= lent <= head)
    cdef uint64_t taken       # records taken
    cdef Events loan          # the one batch still reading ring slots, or None

    def __cinit__(self, str path, list params, uint32_t ring_events, uint64_t max_record):
        cdef void *handle = dlopen(path.encode(), RTLD_NOW | RTLD_LOCAL)
        cdef int64_t *p
        cdef const char *why
        if handle == NULL:
            raise VtlError(f"cannot load parser {path}: {dlerror().decode(errors='replace')}")
        # the handle stays open: the vtlstack.parsers library holds the same one for good
        size = (<vp_state_size_fn>_sym(handle, b"vp_state_size", path))()
        self.r = vr_new(ring_events, size)
        if self.r == NULL:
            raise ValueError(f"ring_events must be a power of two >= {2 * VR_SCRATCH}")
        self.holds = 2
        self.path = path
        self.r.feed = <vr_feed_fn>_sym(handle, b"vp_feed", path)
        self.r.finish = <vr_finish_fn>_sym(handle, b"vp_finish", path)
        self.r.error = <vr_error_fn>_sym(handle, b"vp_error", path)
        self.r.max_record = max_record
        p = <int64_t *>malloc(sizeof(int64_t) * (len(params) + 1))
        if p == NULL:
            raise MemoryError()
        for i, v in enumerate(params):
            p[i] = v
        why = (<vp_init_fn>_sym(handle, b"vp_init", path))(self.r.st, p)
        free(p)
        if why != NULL:
            raise ValueError(why.decode())

    def __dealloc__(self):
        while self.holds > 0 and self.r != NULL:
            vr_put(self.r)
            self.holds -= 1

    def hand_over(self) -> int:
        """The block's address, for the network thread, which now holds it too (it lets
        go when the connection is closed). Called once, before any parse()."""
        if self.holds != 2:
            raise VtlError("this record stream was handed over already")
        self.holds = 1
        return <uintptr_t>self.r

    def parse(self, FramePool pool not None, spans) -> int:
        """Application-thread parsing: feed the (addr, length, stream offset) spans, in
        order (those parsed already are skipped). 0, STALLED (the ring is full: take()
        and call again) or FAILED (see error())."""
        cdef uint64_t addr, off
        cdef uint32_t n
        cdef int rc = 0
        for addr, n, off in spans:
            with nogil:
                rc = vr_parse(self.r, pool.frame_ptr(addr), n, off)
            if rc != 0:
                break
        return rc

    def finish(self) -> int:
        """Application-thread parsing: the stream ended (after every byte was parsed)."""
        return vr_finish(self.r)

    @property
    def parsed(self) -> int:
        return self.r.parsed

    @property
    def records(self) -> int:
        """Complete records so far (the network thread's count, read without a lock)."""
        return self.r.records

    cdef uint32_t unread(self) noexcept:
        """Events of complete records not taken yet."""
        return vr_ready(self.r) - (self.lent - self.r.tail)

    def status(self) -> int:
        """0 open, 1 ended (every record was taken or is ready), 2 failed: see error()."""
        if self.unread():
            return VR_OPEN
        return vr_status(self.r)

    def error(self) -> ParseError:
        why = self.r.why.decode() if self.r.why != NULL else "parse error"
        if why == "record larger than max_record":
            why = f"record larger than max_record ({self.r.max_record} bytes)"
        return ParseError(self.r.err_off, why)

    def ready(self, uint64_t edge) -> bool:
        """Is a complete record ready whose bytes end by stream offset `edge`?"""
        return self.unread() > 0 and vr_record_end(self.r, self.taken) <= edge

    cdef bint end_loan(self) except -1:
        """The loan's events go back to the ring; True if the producer stalled."""
        cdef Events e = self.loan
        self.loan = None
        e.lender = None
        return vr_release(self.r, e.n)

    def take(self, uint32_t max_records, uint64_t edge):
        """The events of up to max_records complete records whose bytes end by `edge`:
        (Events, records, end offset of the last, whether the producer stalled and must be
        told). None if no record is ready.

        The events are lent when they lie unbroken in the ring: the batch reads the ring
        itself until it gives them back (Events.give_back(), at its release), and at most
        half the ring is lent, so the producer keeps the other half meanwhile. One batch
        at a time is lent: taking the next copies the previous one's events out (an app
        that holds many batches pays the copy; one that releases each first pays none).
        Events that wrap around the ring's end are copied at once."""
        cdef uint32_t unread = self.unread(), first = self.lent & self.r.mask, nrec = 0, n, k
        cdef uint64_t end = 0
        cdef bint kick = 0
        cdef Events ev
        nrec = vr_count(self.r, self.taken, self.lent,
                        min(unread, self.r.cap - first, self.r.cap // 2), max_records, edge,
                        &n, &end)
        if nrec == 0:   # nothing within what may be lent: a copy, if anything is ready
            nrec = vr_count(self.r, self.taken, self.lent, unread, max_records, edge, &n, &end)
        if nrec == 0:
            return None
        ev = Events.__new__(Events)
        if self.loan is not None:
            self.loan.copy_out()
            kick = self.end_loan()
        ev.n = n
        if first + n <= self.r.cap and n <= self.r.cap // 2:
            ev.ev = &self.r.ring[first]
            ev.lender = self
            self.loan = ev
        else:
            ev.copied = PyBytes_FromStringAndSize(NULL, n * sizeof(vp_event))
            k = min(n, self.r.cap - first)
            memcpy(PyBytes_AS_STRING(ev.copied), &self.r.ring[first], k * sizeof(vp_event))
            memcpy(PyBytes_AS_STRING(ev.copied) + k * sizeof(vp_event), &self.r.ring[0],
                   (n - k) * sizeof(vp_event))
            ev.ev = <const vp_event *>PyBytes_AS_STRING(ev.copied)
        self.lent += n
        self.taken += nrec
        if ev.lender is None:
            kick |= vr_release(self.r, n)
        return ev, nrec, end, bool(kick)


cdef class Events:
    """The parser's events of one batch's records (vp_event structs): ring slots lent by
    their RecStream until give_back(), or a copy of their own (Events(data) copies none:
    it reads the bytes given)."""

    cdef const vp_event *ev
    cdef readonly uint32_t n
    cdef bytes copied
    cdef RecStream lender

    def __cinit__(self, bytes data=b""):
        if len(data) % sizeof(vp_event):
            raise ValueError(f"events are {sizeof(vp_event)}-byte vp_event structs")
        self.copied = data
        self.ev = <const vp_event *>PyBytes_AS_STRING(data)
        self.n = <uint32_t>(len(data) // sizeof(vp_event))

    cdef int copy_out(self) except -1:
        """Stop reading the ring: the events move into a copy of their own."""
        self.copied = PyBytes_FromStringAndSize(<const char *>self.ev, self.n * sizeof(vp_event))
        self.ev = <const vp_event *>PyBytes_AS_STRING(self.copied)
        return 0

    def give_back(self) -> bool:
        """Lent slots go back to the ring (nothing to do for a copy). True if the producer
        stalled for want of room and must be told to go on."""
        if self.lender is None:
            return False
        return self.lender.end_loan()

    @property
    def lent(self) -> bool:
        return self.lender is not None

    def tobytes(self) -> bytes:
        if self.n == 0:
            return b""
        return PyBytes_FromStringAndSize(<const char *>self.ev, self.n * sizeof(vp_event))

    def __len__(self) -> int:
        return self.n


cdef class RecordBatch(FrameSet):
    """Records read together, and the frames their bytes are in (see read_records()).

    Fields are spans of the stream: `spans(j)` gives the j-th field of every record as
    numpy (offset, length) arrays, `view(offset, length)` the bytes as FrameViews (one per
    frame they lie in, no copy), `column(j)` a fixed-width numpy array, `to_python()` the
    offline parser's as_dict() values. Release it (or leave its `with` block) to give the
    frames back; nothing of it is usable afterwards.
    """

    cdef Events ev
    cdef readonly uint32_t nrec
    cdef readonly uint64_t start    # the stream bytes it covers: [start, end)
    cdef readonly uint64_t end
    cdef object lib             # the _records.Library, for to_python()
    cdef uint64_t *f_off        # its frames: stream offset and length (addrs: FrameSet)
    cdef uint32_t *f_len

    def __cinit__(self, FramePool pool not None, on_release, lib, Events events,
                  uint32_t nrec, uint64_t start, uint64_t end, frames):
        cdef uint32_t i = 0
        self.ev = events if events is not None else Events.__new__(Events)
        self.nrec = nrec
        self.start = start
        self.end = end
        self.lib = lib
        self.alloc_addrs(len(frames))
        self.f_off = <uint64_t *>malloc(sizeof(uint64_t) * (self.naddrs + 1))
        self.f_len = <uint32_t *>malloc(sizeof(uint32_t) * (self.naddrs + 1))
        if self.f_off == NULL or self.f_len == NULL:
            raise MemoryError()
        for addr, n, off in frames:
            self.addrs[i] = addr
            self.f_len[i] = n
            self.f_off[i] = off
            i += 1

    def __dealloc__(self):
        free(self.f_off)
        free(self.f_len)

    def __len__(self) -> int:
        return self.nrec

    def _give_back_events(self) -> bool:
        """At release: lent events go back to the ring; True if the producer must be told."""
        return self.ev.give_back()

    cdef int check(self) except -1:
        if self.released:
            raise ReleasedError("this batch was released: its frames went back to the pool")
        return 0

    cdef uint32_t frame_at(self, uint64_t off) noexcept:
        """Index of the frame that holds stream byte `off` (binary search)."""
        cdef uint32_t lo = 0, hi = self.naddrs, mid
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.f_off[mid] <= off:
                lo = mid
            else:
                hi = mid
        return lo

    cdef int gather(self, uint64_t off, uint32_t n, char *dst) except -1:
        """Copy stream bytes [off, off + n) out of the frames."""
        cdef uint32_t k = self.frame_at(off), part
        cdef uint64_t at
        while n:
            if k >= self.naddrs or off < self.f_off[k]:
                raise VtlError(f"stream offset {off} is not in this batch's frames")
            at = off - self.f_off[k]
            part = <uint32_t>min(<uint64_t>n, self.f_len[k] - at)
            memcpy(dst, self.pool.frame_ptr(self.addrs[k] + at), part)
            dst += part
            off += part
            n -= part
            k += 1
        return 0

    @property
    def events(self):
        """The parser's events (EVENT_DTYPE: off, val, len, id, kind, flags), read-only."""
        self.check()
        return numpy.frombuffer(self.ev.tobytes(), dtype=EVENT_DTYPE)

    def to_python(self) -> list:
        """Each record as plain Python values: what the offline parser's as_dict() gives
        for the same bytes."""
        self.check()
        window = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(self.end - self.start))
        self.gather(self.start, <uint32_t>(self.end - self.start), PyBytes_AS_STRING(window))
        return [rec.as_dict() for rec in records_from_events(self.lib, self.ev.tobytes(),
                                                            window, self.start)]

    def spans(self, uint32_t j):
        """(offsets, lengths): the stream span of the j-th field of each record (its j-th
        top-level span event), as int64 numpy arrays; length -1 where a record has none.
        Quoted CSV fields are spans of the raw bytes (with their doubled quotes)."""
        cdef const vp_event *ev = self.ev.ev
        cdef size_t i, n = self.ev.n
        cdef uint32_t r = 0, seen = 0, depth = 0
        self.check()
        offsets = numpy.zeros(self.nrec, numpy.int64)
        lengths = numpy.full(self.nrec, -1, numpy.int64)
        cdef int64_t[::1] o = offsets
        cdef int64_t[::1] ln = lengths
        for i in range(n):
            if ev[i].kind == VP_EV_RECORD:
                r += 1
                seen = 0
            elif ev[i].kind == VP_EV_BEGIN:
                depth += 1
            elif ev[i].kind == VP_EV_END:
                depth -= 1
            elif ev[i].kind == VP_EV_SPAN and depth == 0:
                if seen == j:
                    o[r] = ev[i].off
                    ln[r] = ev[i].len
                seen += 1
        return offsets, lengths

    def column(self, uint32_t j, width=None):
        """The j-th field of each record as a fixed-width numpy bytes array ("S<width>",
        default: the longest), gathered from the frames; b"" where a record has none."""
        offsets, lengths = self.spans(j)
        cdef int64_t[::1] o = offsets
        cdef int64_t[::1] ln = lengths
        cdef uint32_t i, w
        w = int(lengths.max(initial=0)) if width is None else width
        out = numpy.zeros(self.nrec, f"S{max(w, 1)}")
        cdef uint8_t[:, ::1] cells = out.view(numpy.uint8).reshape(self.nrec, max(w, 1))
        for i in range(self.nrec):
            if ln[i] > 0:
                self.gather(o[i], <uint32_t>min(<int64_t>w, ln[i]), <char *>&cells[i, 0])
        return out

    def view(self, uint64_t offset, uint32_t length) -> tuple:
        """Stream bytes [offset, offset + length) as FrameViews into the frames they are
        in: one, or several when they cross frames. No copy."""
        cdef uint32_t k, part
        cdef uint64_t at
        self.check()
        if offset < self.start or offset + length > self.end:
            raise ValueError(f"[{offset}, {offset + length}) is not within this batch "
                             f"[{self.start}, {self.end})")
        views = []
        k = self.frame_at(offset)
        while length:
            at = offset - self.f_off[k]
            part = <uint32_t>min(<uint64_t>length, self.f_len[k] - at)
            views.append(FrameView(self, self.addrs[k] + at, part, offset))
            offset += part
            length -= part
            k += 1
        return tuple(views)

    def __repr__(self) -> str:
        state = "released" if self.released else f"{self.naddrs} frames"
        return f"<RecordBatch of {self.nrec} records [{self.start}, {self.end}): {state}>"
