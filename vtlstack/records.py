"""Records on the stack: `Stack.listen(port, parser="csv")` and `read_records()`.

    with Stack("veth0") as stack:
        lst = stack.listen(8000, parser="csv")
        conn = lst.accept()
        while batch := conn.read_records(max=4096):
            with batch:
                rows = batch.to_python()          # [{"fields": [b"a", b"b"]}, ...]
                first = batch.column(0)           # numpy "S<n>" array

The network thread runs the connection's parser over its in-order frames as they arrive
(parse_in="net", the default) and hands the application the events of complete records
(see vtlrec.h); with parse_in="app" the application thread runs the same parser over the
same frames inside read_records(), to compare the two. Either way a batch's fields are
spans of frames the batch holds until it is released: the frames count as unconsumed
bytes, so the receive window closes while the application holds many records.

A parse error closes that connection (a RST to the peer, counted in the stack's
`parse_errors`); read_records() returns the records before it, then raises ParseError
with the offset and reason the offline parser gives for the same bytes.
"""

from __future__ import annotations

import os
from select import EPOLLIN
from typing import Any

from vtlstack import parsers
from vtlstack._fastpath import MsgKind
from vtlstack._recstream import FAILED, RecordBatch, RecStream
from vtlstack.errors import VtlError
from vtlstack.stack import Stack, TcpSocket

__all__ = ["RecordConfig", "RecordSocket"]

_ENDED = 1


class RecordConfig:
    """What a listener's connections parse, and where (see Stack.listen)."""

    def __init__(self, parser: str | os.PathLike | parsers.Parser, options: dict[str, Any],
                 parse_in: str, ring_events: int, max_record: int | None,
                 rcv_buf: int) -> None:
        if parse_in not in ("net", "app"):
            raise ValueError(f"parse_in is 'net' or 'app', not {parse_in!r}")
        if isinstance(parser, parsers.Parser):
            if options:
                raise TypeError("options go to parsers.load(), not with a loaded Parser")
            self.parser = parser
        else:
            self.parser = parsers.load(parser, **options)
        # An unfinished record holds its frames: more than the window can ever hold would
        # stall the connection for good, so it is an error long before that.
        limit = rcv_buf // 2
        if max_record is None:
            max_record = limit
        if not 0 < max_record <= limit:
            raise ValueError(f"max_record must be within 1..{limit} (half the receive "
                             "buffer: a record waits whole in it)")
        self.max_record = max_record
        self.parse_in = parse_in
        self.ring_events = ring_events
        RecStream(str(self.parser.path), self.parser._params, ring_events, max_record)

    def socket(self, stack: Stack, cid: int, gen: int, peer: tuple[str, int],
               local_port: int) -> RecordSocket:
        return RecordSocket(stack, cid, gen, peer, local_port, self)


class RecordSocket(TcpSocket):
    """An accepted connection of a listener with a parser: read_records(), not recv()."""

    def __init__(self, stack: Stack, cid: int, gen: int, peer: tuple[str, int],
                 local_port: int, config: RecordConfig) -> None:
        super().__init__(stack, cid, gen, peer, local_port, accepted=True)
        self._connected = True
        self._config = config
        self._stream = RecStream(str(config.parser.path), config.parser._params,
                                 config.ring_events, config.max_record)
        self._lib = config.parser._lib
        self._header_pending = config.parser._header
        self.header: list[bytes] | None = None     # csv with header=True, once read
        self._aborted = False

    def _attach(self) -> None:
        """Right after accept (stack lock held): the network thread parses from now on."""
        if self._config.parse_in == "net":
            self._stack._send_ctl(MsgKind.MSG_TCP_PARSE_ATTACH, addr=self._stream.hand_over(),
                                  sock=self.cid, port=self.gen)

    def recv(self, bufsize: int = 65536, timeout: float | None = None) -> bytes:
        raise VtlError("this connection delivers records: use read_records()")

    def recv_zc(self, max_frames: int | None = None, timeout: float | None = None) -> Any:
        raise VtlError("this connection delivers records: use read_records()")

    def _readiness(self) -> int:
        events = super()._readiness()
        return events | (EPOLLIN if self._records_ready() else 0)

    def _records_ready(self) -> bool:
        if self._config.parse_in == "app":
            self._parse_here()
        return self._stream.ready(self._rx.received) or self._stream.status() != 0

    def _parse_here(self) -> None:
        """parse_in="app": the application thread parses what arrived since last time."""
        stream = self._stream
        rc = stream.parse(self._stack._port.pool, self._rx.after(stream.parsed))
        if rc == 0 and self._eof and stream.parsed == self._rx.received:
            rc = stream.finish()
        if rc == FAILED and not self._aborted:
            # as the network thread does: the connection ends with a RST, counted
            self._aborted = True
            self._stack.app_parse_errors += 1
            self._stack._send_ctl(MsgKind.MSG_TCP_ABORT, sock=self.cid, port=self.gen)

    def read_records(self, max: int = 1024, timeout: float | None = None) -> RecordBatch:
        """The next complete records, up to `max`, as a RecordBatch (release it when
        done: its frames count against the window until then). An empty batch once the
        peer closed and every record was read; ParseError (offset, reason) once the
        records before a parse error were read; OSError for a reset or timeout."""
        if max < 1:
            raise ValueError("max must be at least 1")
        self._wait(lambda: self._records_ready() or self._error is not None, timeout,
                   "read_records")
        with self._stack._lock:
            if self._header_pending:
                header = self._take(1)
                if len(header):
                    with header:
                        self.header = header.to_python()[0]["fields"]
                    self._header_pending = False
            return self._take(max)

    def _released(self, held: Any, entry: list) -> None:
        super()._released(held, entry)
        with self._stack._lock:
            # the batch's events go back to the ring too: a producer stalled for room goes on
            if held._give_back_events() and not self.closed:
                self._stack._send_ctl(MsgKind.MSG_TCP_PARSE, sock=self.cid, port=self.gen)

    def _take(self, max: int) -> RecordBatch:
        stack = self._stack
        pool = stack._port.pool
        got = self._stream.take(max, self._rx.received)
        if got is None:
            status = self._stream.status()
            if status == FAILED:
                raise self._stream.error()
            if status == _ENDED or self._error is None:
                return RecordBatch(pool, None, self._lib, None, 0, self._taken, self._taken, ())
            self._raise_error()
        events, nrec, end, kick = got
        if kick and not self.closed:
            stack._send_ctl(MsgKind.MSG_TCP_PARSE, sock=self.cid, port=self.gen)
        entry = [self._taken, end, False]
        frames = self._rx.take(end)
        batch = RecordBatch(pool, lambda b: self._released(b, entry), self._lib, events, nrec,
                            self._taken, end, frames)
        self._taken = end
        self._zc.append(entry)
        stack._held[batch] = self._rx     # a frame the batch ends in may stay in _rx
        return batch
