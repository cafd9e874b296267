# cython: language_level=3
"""The HTTP inspector of a splice, application side (vtlinsp.h).

An HttpInspector makes the block the network thread parses a spliced pair into: a
request stream (http_request) for the client's bytes, a response stream (http_response)
for the server's, told each request's method. The application reads finished exchanges
(an access log's lines) and counters from it; it never sees a payload byte.
"""

from libc.stdint cimport int64_t, uint32_t, uintptr_t
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlopen, dlsym

from vtlstack._includes.vtlinsp cimport (
    VI_FAILED, vi_block, vi_exchange, vi_new, vi_push_fn, vi_put, vi_take,
)
from vtlstack._includes.vtlrec cimport vr_stream

from vtlstack import parsers
from vtlstack._recstream import RecStream
from vtlstack.errors import VtlError

__all__ = ["HttpInspector"]

# Events a stream may hold at once: the inspector consumes them as they come.
_RING_EVENTS = 512
# An exchange's bytes stream through; only the parsers' own limits (a 64 KiB head, a 1 GiB
# body) bound a record, not the receive buffer.
_MAX_RECORD = 1 << 40


def _field_id(parser: parsers.Parser, path: str) -> int:
    for i, f in enumerate(parser._lib.meta["fields"]):
        if f["path"] == path:
            return i
    raise VtlError(f"parser {parser.path} has no field {path!r}")


cdef class HttpInspector:
    """One splice's inspector. `hand_over()` gives the network thread its hold on the
    block (once); `exchanges()` and `counters()` read what it found."""

    cdef vi_block *b
    cdef int handed
    cdef object streams     # the RecStreams whose blocks the inspector parses into

    def __cinit__(self):
        cdef vr_stream *r
        req = parsers.load("http_request")
        resp = parsers.load("http_response")
        self.b = vi_new()
        if self.b == NULL:
            raise MemoryError()
        self.streams = []
        for i, p in enumerate((req, resp)):
            stream = RecStream(str(p.path), p._params, _RING_EVENTS, _MAX_RECORD)
            self.streams.append(stream)
            # the inspector block holds the stream for the network thread from now on
            r = <vr_stream *><uintptr_t>stream.hand_over()
            self.b.side[i].r = r
        handle = dlopen(str(resp.path).encode(), RTLD_NOW | RTLD_LOCAL)
        push = dlsym(handle, b"vp_push") if handle != NULL else NULL
        if push == NULL:
            raise VtlError(f"{resp.path} has no vp_push: rebuild it")
        self.b.push = <vi_push_fn>push
        self.b.id_method = _field_id(req, "method")
        self.b.id_target = _field_id(req, "target")
        self.b.id_status = _field_id(resp, "status")

    def __dealloc__(self):
        if self.b != NULL:
            if not self.handed:
                vi_put(self.b)      # the network thread's hold, never handed over
            vi_put(self.b)

    def hand_over(self) -> int:
        """The block's address, for the network thread (which lets go of it when the
        splice ends, or at once if the splice is refused)."""
        if self.handed:
            raise VtlError("this inspector was handed over already")
        self.handed = 1
        return <uintptr_t>self.b

    def take_back(self) -> None:
        """The network thread never took the block it was handed (it answered "ask
        again" and the app gave up): its hold is ours again."""
        self.handed = 0

    def exchanges(self) -> list[dict]:
        """The exchanges finished since the last call, oldest first: method, target
        (bytes), status (0: no response), bytes each way, start and end (monotonic ns)."""
        cdef vi_exchange x
        out = []
        while vi_take(self.b, &x):
            out.append({
                "method": x.method[:x.method_len],
                "target": x.target[:x.target_len] + (b"..." if x.target_cut else b""),
                "status": x.status,
                "request_bytes": x.req_bytes,
                "response_bytes": x.resp_bytes,
                "start_ns": x.t_req,
                "end_ns": x.t_done,
            })
        return out

    def counters(self) -> dict:
        b = self.b
        return {
            "requests": b.requests, "responses": b.responses,
            "status": {f"{k}xx": b.status_class[k] for k in range(1, 6)},
            "status_other": b.status_class[0],
            "request_bytes": b.req_bytes, "response_bytes": b.resp_bytes,
            "parse_errors": b.parse_errors, "rejected": b.rejected,
            "bad_gateway": b.bad_gateway, "log_dropped": b.log_dropped,
            "pending": b.pend_n,
            "error": b.why.decode() if b.state == VI_FAILED and b.why != NULL else None,
        }
