# cython: language_level=3
"""The generic driver of generated record parsers (see vtlparse.h and parsers/README.md).

A Library is one dlopen()ed parser. A Stream owns a parser state, feeds it bytes without
the GIL, and turns the events into Record objects. Records are lazy: a Record holds its
events and the bytes they point into, and builds Python values only in as_dict(), so
feeding costs the parse and one small object per record.
"""

import json
import re

cimport cython

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlerror, dlopen, dlsym

from vtlstack._includes.vtlparse cimport (
    VP_ABI, VP_ERROR, VP_EV_BEGIN, VP_EV_END, VP_EV_NULL, VP_EV_RECORD, VP_EV_SPAN,
    VP_EV_VALUE, VP_F_UNESCAPE, VP_FULL, vp_abi_fn, vp_error_fn, vp_event, vp_feed_fn,
    vp_finish_fn, vp_init_fn, vp_meta_fn, vp_out, vp_push_fn, vp_state_size_fn,
)

from vtlstack.errors import ParseError, VtlError

# How a field's values land in the record's dict (from its path in the spec).
cdef enum:
    M_SCALAR = 0      # name       the last value
    M_LIST = 1        # name[]     a list of values
    M_JOIN = 2        # name+      the spans joined into one bytes
    M_TUPLE = 3       # name.N     element N of a tuple
    M_LIST_TUPLE = 4  # name[].N   element N of tuples in a list (.0 starts a new one)

# What a value is.
cdef enum:
    C_BYTES = 0
    C_INT = 1
    C_ERROR = 2
    C_NULL = 3
    C_GROUP = 4

cdef enum:
    CHUNK_EVENTS = 4096

_PATH = re.compile(r"^([a-z_][a-z0-9_]*)(\[\])?(?:\.(\d))?(\+)?$")
_CONV = {"bytes": C_BYTES, "int": C_INT, "error": C_ERROR, "null": C_NULL, "group": C_GROUP}


class RespError(Exception):
    """A RESP error reply (``-ERR ...``), returned as a value as Redis clients do in pipelines."""

    def __init__(self, message: bytes) -> None:
        super().__init__(message)
        self.message = message

    def __eq__(self, other):
        return type(other) is RespError and other.message == self.message

    def __hash__(self):
        return hash(self.message)


def _shape(path):
    m = _PATH.match(path)
    name, is_list, idx, join = m.group(1), m.group(2), m.group(3), m.group(4)
    if join:
        return name, M_JOIN, 0
    if idx is not None:
        return name, (M_LIST_TUPLE if is_list else M_TUPLE), int(idx)
    return name, (M_LIST if is_list else M_SCALAR), 0


cdef class Library:
    """A compiled parser, loaded once per path; its meta() says what its events mean."""

    cdef void *handle
    cdef vp_feed_fn feed
    cdef vp_finish_fn finish
    cdef vp_init_fn init
    cdef vp_push_fn push
    cdef vp_error_fn error
    cdef readonly size_t state_size
    cdef readonly object meta
    cdef readonly str path
    cdef list keys                       # per field id: its key in the record's dict
    cdef uint8_t *modes                  # per field id: M_*
    cdef uint8_t *idxs                   # per field id: N of name.N / name[].N
    cdef uint8_t *convs                  # per field id: C_*
    cdef list types                      # per record type: (name, [(key, mode)], finish)

    def __cinit__(self, str path):
        self.path = path
        self.handle = dlopen(path.encode(), RTLD_NOW | RTLD_LOCAL)
        if self.handle == NULL:
            raise VtlError(f"cannot load parser {path}: {dlerror().decode(errors='replace')}")
        abi = <vp_abi_fn>self.sym(b"vp_abi")
        if abi() != VP_ABI:
            raise VtlError(f"{path} was built for parser ABI {abi()}, this vtlstack speaks "
                           f"{VP_ABI}: rebuild it")
        self.feed = <vp_feed_fn>self.sym(b"vp_feed")
        self.finish = <vp_finish_fn>self.sym(b"vp_finish")
        self.init = <vp_init_fn>self.sym(b"vp_init")
        self.push = <vp_push_fn>self.sym(b"vp_push")
        self.error = <vp_error_fn>self.sym(b"vp_error")
        self.state_size = (<vp_state_size_fn>self.sym(b"vp_state_size"))()
        self.meta = json.loads((<vp_meta_fn>self.sym(b"vp_meta"))().decode())
        nf = len(self.meta["fields"])
        self.modes = <uint8_t *>malloc(nf + 1)
        self.idxs = <uint8_t *>malloc(nf + 1)
        self.convs = <uint8_t *>malloc(nf + 1)
        if self.modes == NULL or self.idxs == NULL or self.convs == NULL:
            raise MemoryError()
        self.keys = []
        for i, f in enumerate(self.meta["fields"]):
            key, mode, idx = _shape(f["path"])
            self.keys.append(key)
            self.modes[i] = mode
            self.idxs[i] = idx
            self.convs[i] = _CONV[f["as"]]
        self.types = []
        for r in self.meta["records"]:
            slots = []
            for path, _ in r["fields"]:
                key, mode, _ = _shape(path)
                if all(k != key for k, _ in slots):
                    slots.append((key, mode))
            # whether as_dict has lists to turn into tuples at the end
            finish = any(mode in (M_TUPLE, M_LIST_TUPLE) for _, mode in slots)
            self.types.append((r["name"], slots, finish))
        # The handle stays open for the life of the process: records may outlive streams.

    def __dealloc__(self):
        free(self.modes)
        free(self.idxs)
        free(self.convs)

    cdef void *sym(self, bytes name) except NULL:
        cdef void *f = dlsym(self.handle, name)
        if f == NULL:
            raise VtlError(f"{self.path} is not a record parser (no {name.decode()})")
        return f


# Batches and records can hold no cycles (a record points to its batch, a batch to bytes and
# its library): keeping them out of the cyclic GC saves a collection every 700 records.
@cython.no_gc
cdef class Batch:
    """The events and the bytes of the records one feed completed; shared by those records."""

    cdef vp_event *ev
    cdef size_t n
    cdef bytes window        # stream bytes [base, base + len(window))
    cdef uint64_t base
    cdef Library lib

    def __dealloc__(self):
        free(self.ev)


@cython.no_gc
cdef class Record:
    """One record. Its fields are spans of the stream until as_dict() makes values of them."""

    cdef Batch batch
    cdef size_t first, count   # its events in the batch, the closing RECORD event excluded
    cdef readonly int type_id
    cdef readonly uint64_t offset
    cdef readonly uint64_t length

    @property
    def type(self) -> str:
        return self.batch.lib.types[self.type_id][0]

    def raw(self) -> bytes:
        """The bytes of the whole record, as they were in the stream."""
        cdef Py_ssize_t a = <Py_ssize_t>(self.offset - self.batch.base)
        return self.batch.window[a:a + <Py_ssize_t>self.length]

    def __repr__(self):
        return f"<Record {self.type} at {self.offset}+{self.length}: {self.as_dict()!r}>"

    def as_dict(self) -> dict:
        """The record as plain Python values (bytes, int, None, lists, tuples, RespError)."""
        cdef Library lib = self.batch.lib
        cdef const char *win = PyBytes_AS_STRING(self.batch.window)
        cdef uint64_t base = self.batch.base
        cdef vp_event *e
        cdef size_t i
        cdef int mode, conv
        cdef list stack = []
        cdef dict d = {}
        cdef dict joins = None
        cdef tuple rtype = lib.types[self.type_id]
        for key, mode in rtype[1]:
            d[key] = [] if mode in (M_LIST, M_LIST_TUPLE, M_TUPLE) else (
                b"" if mode == M_JOIN else None)
        for i in range(self.first, self.first + self.count):
            e = &self.batch.ev[i]
            if e.kind == VP_EV_END:
                stack.pop()
                continue
            conv = lib.convs[e.id]
            if e.kind == VP_EV_SPAN:
                v = PyBytes_FromStringAndSize(win + (e.off - base), e.len)
                if e.flags & VP_F_UNESCAPE:
                    v = _unescape(v, (e.val >> 8) & 0xff, e.val & 0xff)
                if conv == C_ERROR:
                    v = RespError(v)
            elif e.kind == VP_EV_VALUE:
                v = e.val
            elif e.kind == VP_EV_BEGIN:
                v = []
            else:
                v = None
            if stack:
                (<list>stack[len(stack) - 1]).append(v)
            else:
                key = lib.keys[e.id]
                mode = lib.modes[e.id]
                if mode == M_LIST:
                    (<list>d[key]).append(v)
                elif mode == M_SCALAR:
                    d[key] = v
                elif mode == M_JOIN:
                    if joins is None:
                        joins = {}
                    joins.setdefault(key, []).append(v)
                elif mode == M_TUPLE:
                    (<list>d[key]).append(v)
                elif lib.idxs[e.id] == 0:
                    (<list>d[key]).append([v])
                else:
                    tuples = <list>d[key]
                    (<list>tuples[len(tuples) - 1]).append(v)
            if e.kind == VP_EV_BEGIN:
                stack.append(v)
        for key, mode in (rtype[1] if rtype[2] else ()):
            if mode == M_TUPLE:
                d[key] = tuple(d[key]) if d[key] else None
            elif mode == M_LIST_TUPLE:
                d[key] = [tuple(t) for t in d[key]]
        if joins is not None:
            for key, parts in joins.items():
                d[key] = b"".join(parts)
        return d


cdef bytes _unescape(bytes v, int quote, int esc):
    if quote == esc:
        q = bytes((quote,))
        return v.replace(q + q, q)
    return re.sub(re.escape(bytes((esc,))) + b"(.)", rb"\1", v, flags=re.S)


cdef class Stream:
    """An incremental parser over one byte stream (see vtlstack.parsers.Stream)."""

    cdef Library lib
    cdef void *st
    cdef vp_event *acc          # events not yet handed out: those of the open record first
    cdef size_t acc_n, acc_cap
    cdef uint64_t pos           # stream offset of the next byte
    cdef uint64_t keep          # stream offset where the open record's bytes start
    cdef bytearray pending      # stream bytes [keep, pos)
    cdef bint skip_header, ended
    cdef readonly Record header_record

    def __cinit__(self, Library lib, list params, bint header=False):
        cdef const char *why
        cdef int64_t *p = <int64_t *>malloc(sizeof(int64_t) * (len(params) + 1))
        self.lib = lib
        self.st = malloc(lib.state_size)
        self.acc_cap = CHUNK_EVENTS
        self.acc = <vp_event *>malloc(sizeof(vp_event) * self.acc_cap)
        if self.st == NULL or self.acc == NULL or p == NULL:
            free(p)
            raise MemoryError()
        for i, v in enumerate(params):
            p[i] = v
        why = lib.init(self.st, p)
        free(p)
        if why != NULL:
            raise ValueError(why.decode())
        self.pending = bytearray()
        self.skip_header = header

    def __dealloc__(self):
        free(self.st)
        free(self.acc)

    def push(self, int64_t value) -> None:
        """Queue a value for the spec's `input` statement (e.g. the method of a request)."""
        if self.lib.push(self.st, value) != 0:
            raise VtlError("too many queued inputs: the parser holds 256")

    def feed(self, data) -> list:
        if self.ended:
            raise VtlError("feed() after close()")
        cdef bytes chunk = data if type(data) is bytes else bytes(data)
        return self.run(chunk, False)

    def close(self) -> list:
        if self.ended:
            return []
        self.ended = True
        return self.run(b"", True)

    cdef int grow(self) except -1:
        cdef vp_event *bigger
        if self.acc_cap - self.acc_n >= CHUNK_EVENTS:
            return 0
        bigger = <vp_event *>realloc(self.acc, sizeof(vp_event) * (self.acc_cap * 2))
        if bigger == NULL:
            raise MemoryError()
        self.acc = bigger
        self.acc_cap *= 2
        return 0

    cdef list run(self, bytes chunk, bint eof):
        cdef const uint8_t *buf = <const uint8_t *>PyBytes_AS_STRING(chunk)
        cdef size_t n = len(chunk), done = 0
        cdef vp_out out
        cdef int rc
        cdef uint64_t off
        cdef const char *why
        cdef size_t closed_n = 0    # events up to the end of the last complete record
        cdef size_t scan = self.acc_n
        while True:
            self.grow()
            out.ev = self.acc + self.acc_n
            out.cap = <uint32_t>(self.acc_cap - self.acc_n)
            with nogil:
                if eof:
                    rc = self.lib.finish(self.st, &out)
                else:
                    rc = self.lib.feed(self.st, buf + done, n - done, self.pos, &out)
            done += out.consumed
            self.pos += out.consumed
            self.acc_n += out.n
            if rc != VP_FULL:
                break
        while scan < self.acc_n:
            if self.acc[scan].kind == VP_EV_RECORD:
                closed_n = scan + 1
            scan += 1
        records = self.hand_out(chunk, closed_n)
        if rc == VP_ERROR:
            why = self.lib.error(self.st, &off)
            err = ParseError(off, why.decode() if why != NULL else "parse error")
            err.records = records
            raise err
        return records

    cdef list hand_out(self, bytes chunk, size_t closed_n):
        """Records for the events acc[0:closed_n]; keep the rest and the bytes they need."""
        cdef Batch batch
        cdef list records
        cdef uint64_t new_keep
        if closed_n == 0:
            self.pending += chunk
            return []
        batch = _batch(self.lib, self.acc, closed_n, self.keep,
                       bytes(self.pending) + chunk if self.pending else chunk)
        records = _split(batch)
        if self.skip_header:
            self.skip_header = False
            self.header_record = records.pop(0)
        memmove(self.acc, self.acc + closed_n, sizeof(vp_event) * (self.acc_n - closed_n))
        self.acc_n -= closed_n
        new_keep = batch.ev[closed_n - 1].off + batch.ev[closed_n - 1].len
        self.pending = bytearray(batch.window[new_keep - self.keep:])
        self.keep = new_keep
        return records


cdef Batch _batch(Library lib, const vp_event *ev, size_t n, uint64_t base, bytes window):
    cdef Batch batch = Batch.__new__(Batch)
    batch.lib = lib
    batch.ev = <vp_event *>malloc(sizeof(vp_event) * n)
    if batch.ev == NULL:
        raise MemoryError()
    memcpy(batch.ev, ev, sizeof(vp_event) * n)
    batch.n = n
    batch.base = base
    batch.window = window
    return batch


cdef list _split(Batch batch):
    """The records of a batch's events (they end with a RECORD event)."""
    cdef Record rec
    cdef vp_event *e
    cdef size_t i, first = 0
    cdef list records = []
    for i in range(batch.n):
        e = &batch.ev[i]
        if e.kind != VP_EV_RECORD:
            continue
        rec = Record.__new__(Record)
        rec.batch = batch
        rec.first = first
        rec.count = i - first
        rec.type_id = e.id
        rec.offset = e.off
        rec.length = e.len
        first = i + 1
        records.append(rec)
    return records


def records_from_events(Library lib, const uint8_t[::1] events, bytes window,
                        uint64_t base) -> list:
    """The records of complete records' events (vp_event structs, as the stack's record
    streams hand them over) over the stream bytes window = [base, base + len(window)):
    the same Record objects, so the same as_dict(), as Stream.feed() gives."""
    cdef size_t n = events.shape[0] // sizeof(vp_event)
    if n == 0:
        return []
    return _split(_batch(lib, <const vp_event *>&events[0], n, base, window))
