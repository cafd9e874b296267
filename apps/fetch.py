"""`vtl fetch`: an HTTP/1.1 GET client on the stack; the body goes to a file.

Connects from the stack (in this network namespace, on --iface) to a literal IPv4 address,
sends one GET with `Connection: close`, and writes the body to FILE. The body is framed by
Content-Length, chunked transfer coding (trailers are read and dropped) or the end of the
connection. The file appears only when the whole body arrived: a failed fetch leaves none.
A status other than 2xx is an error (redirects are reported, not followed).

Prints one JSON line: url, status, framing, bytes, SHA-256 of the body, seconds,
throughput; then the stack's counters (also after a failure).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vtlstack.apps._common import emit

from vtlstack.errors import VtlError

if TYPE_CHECKING:  # the stack's import needs the compiled extensions: only when run
    from vtlstack.stack import Stack, TcpSocket

MAX_HEAD = 64 * 1024  # status line + header fields (nginx's own default limit is 4-32 KiB)
MAX_FIELDS = 128
MAX_CHUNK_LINE = 4096  # chunk size line with its extensions
RECV_SIZE = 1 << 20
# After the body is complete: how long to wait for the server's FIN. Closing after the
# server does leaves TIME-WAIT to the server; a server that keeps the connection open
# despite `Connection: close` costs at most this long.
EOF_GRACE = 2.0

# RFC 9110 5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9112 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]; the SP before
# an empty reason is sometimes left out, so it is optional here.
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([\t \x21-\x7e\x80-\xff]*))?")
# RFC 9112 7.1: chunk-size = 1*HEXDIG; bounded so the size fits 64 bits.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class HttpError(VtlError):
    """The server's response is not valid HTTP/1.1, or it ended too early."""


@dataclass
class Head:
    """A response's status line and header fields (names lower-cased, in order)."""

    version: tuple[int, int]
    status: int
    reason: str
    fields: list[tuple[str, str]] = field(default_factory=list)

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.fields if n == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[-1] if values else None


# ---- the request ---------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What a URL names: the server's address and the request target."""

    ip: str
    port: int
    path: str  # origin-form: absolute path and query

    @property
    def host_header(self) -> str:
        return self.ip if self.port == 80 else f"{self.ip}:{self.port}"


def parse_url(url: str) -> Target:
    """http://IPv4[:port][/path][?query]; anything else raises HttpError saying why."""
    if any(c in url for c in " \t\r\n") or not url.isprintable():
        raise HttpError(f"URL {url!r} has whitespace or control characters: "
                        "percent-encode them")
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        raise HttpError(f"URL {url!r}: only http:// is supported"
                        + (" (no TLS)" if parts.scheme.lower() == "https" else ""))
    if "@" in parts.netloc:
        raise HttpError(f"URL {url!r}: user information in URLs is not supported")
    host = parts.hostname or ""
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise HttpError(f"URL {url!r}: the host must be a literal IPv4 address "
                        f"(there is no DNS on the stack), not {host!r}") from None
    try:
        port = parts.port
    except ValueError:
        raise HttpError(f"URL {url!r}: bad port") from None
    if port == 0:
        raise HttpError(f"URL {url!r}: bad port 0")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(str(ip), 80 if port is None else port, path)


def build_request(target: Target) -> bytes:
    """The GET request; `Connection: close` lets the body end at the server's FIN."""
    return (f"GET {target.path} HTTP/1.1\r\n"
            f"Host: {target.host_header}\r\n"
            "User-Agent: vtl-fetch\r\n"
            "Accept: */*\r\n"
            "Connection: close\r\n"
            "\r\n").encode("ascii")


# ---- the response --------------------------------------------------------------------

def parse_field(line: bytes) -> tuple[str, str]:
    """One `name: value` line (no CRLF) as (lower-case name, value)."""
    name, colon, value = line.partition(b":")
    if not colon:
        raise HttpError(f"header line without a colon: {line[:80]!r}")
    # RFC 9112 5.1: no whitespace is allowed between the field name and colon.
    if not _TOKEN.fullmatch(name):
        raise HttpError(f"bad header field name {name[:80]!r}")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise HttpError(f"control character in header field {name.decode()!r}")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _lines(block: bytes) -> list[bytes]:
    """CRLF-separated lines; a bare CR or LF is malformed (no lenient line endings)."""
    lines = block.split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise HttpError(f"bare CR or LF in the response head: {line[:80]!r}")
    return lines


def parse_status_line(line: bytes) -> Head:
    """`HTTP/1.1 200 OK` (no CRLF) as a Head without fields."""
    m = _STATUS_LINE.fullmatch(line)
    if m is None:
        raise HttpError(f"not an HTTP/1.x status line: {line[:80]!r}")
    version = (int(m[1]), int(m[2]))
    if version[0] != 1:
        raise HttpError(f"unsupported HTTP version {version[0]}.{version[1]}")
    head = Head(version, int(m[3]), (m[4] or b"").decode("latin-1"))
    if head.status < 100:
        raise HttpError(f"bad status code {head.status:03d}")
    return head


def parse_head(block: bytes) -> Head:
    """The response head without its final empty line: status line and header fields."""
    status_line, *rest = _lines(block)
    head = parse_status_line(status_line)
    if len(rest) > MAX_FIELDS:
        raise HttpError(f"more than {MAX_FIELDS} header fields")
    for line in rest:
        if line[:1] in (b" ", b"\t"):
            # RFC 9112 5.2: a user agent replaces obs-fold with SP before interpreting.
            if not head.fields:
                raise HttpError("the first header line is a continuation line")
            name, value = head.fields[-1]
            more = line.strip(b" \t").decode("latin-1")
            head.fields[-1] = (name, f"{value} {more}")
        else:
            head.fields.append(parse_field(line))
    return head


def content_length(head: Head) -> int | None:
    """The Content-Length, or None; RFC 9110 8.6: repeated identical values are one."""
    values = {v.strip() for value in head.get_all("content-length") for v in value.split(",")}
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(f"conflicting Content-Length values: {', '.join(sorted(values))}")
    value = values.pop()
    if not value.isdigit() or not value.isascii() or len(value) > 18:
        raise HttpError(f"bad Content-Length {value!r}")
    return int(value)


def body_framing(head: Head) -> tuple[str, int]:
    """How the body ends (RFC 9112 6.3): ("length", n), ("chunked", 0) or ("eof", 0)."""
    # RFC 9112 6.3 (1): 1xx, 204 and 304 responses end at the head.
    if head.status < 200 or head.status in (204, 304):
        return "length", 0
    codings = [c.strip().lower() for value in head.get_all("transfer-encoding")
               for c in value.split(",") if c.strip()]
    if codings:
        # RFC 9112 6.3 (3): Transfer-Encoding overrides Content-Length. We asked for no
        # coding (no TE header), so chunked alone is all a server may use.
        if codings != ["chunked"]:
            raise HttpError(f"unsupported Transfer-Encoding {', '.join(codings)!r}")
        return "chunked", 0
    length = content_length(head)
    if length is not None:
        return "length", length
    return "eof", 0


class ChunkedDecoder:
    """Resumable decoder of a chunked body (RFC 9112 7.1), fed any split of the bytes.

    feed() returns the data pieces and how many input bytes it used: it stops at the end
    of the message, so what follows is the caller's.
    """

    def __init__(self, max_line: int = MAX_CHUNK_LINE, max_trailers: int = MAX_HEAD) -> None:
        self._max_line = max_line
        self._max_trailers = max_trailers
        self._state = "size"  # size, data, data_cr, data_lf, trailer, done
        self._line = bytearray()
        self._left = 0
        self._trailer_bytes = 0
        self.trailers: list[tuple[str, str]] = []

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes | memoryview) -> tuple[list[memoryview], int]:
        view = memoryview(data)
        out: list[memoryview] = []
        pos, end = 0, len(view)
        while pos < end and self._state != "done":
            state = self._state
            if state == "data":
                n = min(self._left, end - pos)
                out.append(view[pos:pos + n])
                pos += n
                self._left -= n
                if not self._left:
                    self._state = "data_cr"
            elif state in ("data_cr", "data_lf"):
                want = 13 if state == "data_cr" else 10
                if view[pos] != want:
                    raise HttpError("chunk data not followed by CRLF (wrong chunk size?)")
                pos += 1
                self._state = "data_lf" if state == "data_cr" else "size"
            else:
                line, pos = self._take_line(view, pos)
                if line is not None:
                    self._on_line(line)
        return out, pos

    def _take_line(self, view: memoryview, pos: int) -> tuple[bytes | None, int]:
        """A whole line (without CRLF) once its LF arrived, else None (kept for later)."""
        limit = self._max_line - len(self._line)
        window = bytes(view[pos:pos + limit + 2])
        lf = window.find(b"\n")
        if lf < 0:
            if len(window) > limit + 1:
                raise HttpError(f"chunk line longer than {self._max_line} bytes")
            self._line += window
            return None, pos + len(window)
        line = bytes(self._line) + window[:lf]
        self._line.clear()
        if not line.endswith(b"\r") or b"\r" in line[:-1]:
            raise HttpError(f"chunk line not ended by CRLF: {line[:80]!r}")
        return line[:-1], pos + lf + 1

    def _on_line(self, line: bytes) -> None:
        if self._state == "size":
            # RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] );
            # extensions are ignored.
            size = line.split(b";", 1)[0].rstrip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size):
                raise HttpError(f"bad chunk size line {line[:80]!r}")
            self._left = int(size, 16)
            self._state = "data" if self._left else "trailer"
            return
        # RFC 9112 7.1.2: the trailer section ends with an empty line.
        if not line:
            self._state = "done"
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > self._max_trailers:
            raise HttpError(f"trailer section larger than {self._max_trailers} bytes")
        self.trailers.append(parse_field(line))


class ResponseReader:
    """Sans-IO reader of one HTTP/1.1 response: bytes in, body pieces out.

    feed() returns the body bytes found in the data (as views into it); `head` is set
    once the head is complete, before any body piece is returned. At the connection's
    end call eof(): it raises if the response is incomplete. Interim 1xx responses are
    skipped.
    """

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self._max_head = max_head
        self._buf = bytearray()
        self._status_checked = False
        self.head: Head | None = None
        self.framing = ""
        self._left = 0  # framing "length": body bytes still to come
        self._chunked: ChunkedDecoder | None = None
        self.body_bytes = 0
        self.done = False

    def feed(self, data: bytes) -> list[memoryview]:
        view = memoryview(data)
        out: list[memoryview] = []
        while view and not self.done:
            if self.head is None:
                view = self._feed_head(view)
                continue
            if self._chunked is not None:
                pieces, used = self._chunked.feed(view)
                out += pieces
                view = view[used:]
                if self._chunked.done:
                    self.done = True
            elif self.framing == "length":
                piece = view[:self._left]
                out.append(piece)
                self._left -= len(piece)
                view = view[len(piece):]
                self.done = not self._left
            else:
                out.append(view)
                view = view[len(view):]
        if view:
            raise HttpError(f"the server sent {len(view)} bytes after the end of the response")
        self.body_bytes += sum(len(p) for p in out)
        return out

    def _feed_head(self, view: memoryview) -> memoryview:
        old = len(self._buf)
        self._buf += view
        if not self._status_checked and (lf := self._buf.find(b"\n", old)) >= 0:
            # Check the status line as soon as it is there: a server that is no HTTP
            # server fails now, not at the end of the head or of the connection.
            parse_status_line(bytes(self._buf[:lf]).removesuffix(b"\r"))
            self._status_checked = True
        # Only the new bytes (and the 3 before them) can hold the end of the head.
        end = self._buf.find(b"\r\n\r\n", max(0, old - 3))
        if end < 0 or end + 4 > self._max_head:
            if len(self._buf) > self._max_head or end >= 0:
                raise HttpError(f"response head larger than {self._max_head} bytes")
            return view[len(view):]
        head = parse_head(bytes(self._buf[:end]))
        rest = memoryview(bytes(self._buf[end + 4:]))
        self._buf.clear()
        self._status_checked = False
        if 100 <= head.status < 200:
            if head.status == 101:
                raise HttpError("the server switched protocols (101) without being asked")
            return rest  # an interim response: the real one follows
        self.head = head
        self.framing, self._left = body_framing(head)
        if self.framing == "chunked":
            self._chunked = ChunkedDecoder()
        self.done = self.framing == "length" and not self._left
        return rest

    def eof(self) -> None:
        """The server closed the connection: fine only if the response is complete."""
        if self.done:
            return
        if self.head is None:
            if not self._buf:
                raise HttpError("the server closed the connection without a response")
            raise HttpError(f"the server closed the connection in the response head "
                            f"(after {len(self._buf)} bytes)")
        if self.framing == "eof":
            self.done = True
        elif self.framing == "length":
            raise HttpError(f"truncated body: the connection closed after {self.body_bytes} "
                            f"of {self.body_bytes + self._left} bytes (Content-Length)")
        else:
            raise HttpError(f"truncated body: the connection closed in the middle of the "
                            f"chunked body (after {self.body_bytes} bytes)")


def status_error(head: Head) -> HttpError:
    """The error for a non-2xx status, e.g. `HTTP 404 Not Found`."""
    text = f"HTTP {head.status} {head.reason}".rstrip()
    location = head.get("location")
    if 300 <= head.status < 400 and location:
        text += f" (redirect to {location}: not followed)"
    return HttpError(text)


# ---- the command ---------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="HTTP/1.1 GET on the stack: body to a file, JSON report",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="http://IP[:PORT]/path (a literal IPv4 address; no DNS)")
    p.add_argument("--iface", required=True, help="interface to attach to (in this netns)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where the body goes (a file: stdout carries the JSON report)")
    p.add_argument("--mode", choices=("auto", "skb", "drv"), default="auto",
                   help="XDP attach mode (veth supports skb and drv, copy mode)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the connection and between received bytes")
    p.set_defaults(func=run)


def _check_output(path: str) -> None:
    if path == "-":
        raise VtlError("-o -: stdout carries the JSON report; give a file path")
    if os.path.isdir(path):
        raise VtlError(f"-o {path}: is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise VtlError(f"-o {path}: directory {parent} does not exist")


class _PartFile:
    """A temporary file beside `path`, renamed onto it by commit(), removed otherwise.

    Write errors (a full disk) are VtlErrors naming the file, not connection errors.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        head, tail = os.path.split(os.path.abspath(path))
        self.part = os.path.join(head, f".{tail}.{secrets.token_hex(4)}.part")
        # 0o666 and the umask, as for any new file (mkstemp would make it 0o600).
        try:
            fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o666)
        except OSError as exc:
            raise VtlError(f"-o {path}: cannot create a file beside it: "
                           f"{exc.strerror or exc}") from None
        self.file = os.fdopen(fd, "wb")
        self._committed = False

    def write(self, data: memoryview) -> None:
        try:
            self.file.write(data)
        except OSError as exc:
            raise VtlError(f"writing {self.path}: {exc.strerror or exc}") from None

    def commit(self) -> None:
        try:
            self.file.close()
            os.replace(self.part, self.path)
        except OSError as exc:
            raise VtlError(f"writing {self.path}: {exc.strerror or exc}") from None
        self._committed = True

    def __enter__(self) -> _PartFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self.file.close()
            try:
                os.unlink(self.part)
            except FileNotFoundError:
                pass


def run(args: argparse.Namespace) -> int:
    from vtlstack.stack import Stack

    target = parse_url(args.url)
    _check_output(args.output)
    if not args.timeout > 0:
        raise VtlError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    stack = Stack(args.iface, mode=args.mode)
    report = None
    try:
        with stack:
            report = _fetch(stack, target, args)
    finally:
        if report is not None:
            emit({"event": "fetch", "url": args.url, **report})
        # The counters also after a failure: they show whether every frame came back.
        if stack.final_stats:
            emit({"event": "stats", **stack.final_stats})
    return 0


def _fetch(stack: Stack, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    where = f"{target.ip}:{target.port}"
    try:
        conn = stack.tcp_connect((target.ip, target.port), timeout=args.timeout)
    except ConnectionRefusedError:
        raise VtlError(f"{where} refused the connection") from None
    except TimeoutError:
        raise VtlError(f"no answer from {where}") from None
    except OSError as exc:
        raise VtlError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    reader = ResponseReader()
    digest = hashlib.sha256()
    with conn, _PartFile(args.output) as out:
        start = time.monotonic()
        try:
            conn.sendall(build_request(target), timeout=args.timeout)
            while not reader.done:
                data = conn.recv(RECV_SIZE, timeout=args.timeout)
                if not data:
                    reader.eof()
                    break
                for piece in _feed(reader, data):
                    out.write(piece)
                    digest.update(piece)
            seconds = time.monotonic() - start
            _await_eof(conn, reader)
        except TimeoutError as exc:
            if exc.errno is not None:  # ETIMEDOUT: the stack gave up retransmitting
                raise VtlError(f"connection to {where} timed out "
                               f"({reader.body_bytes} body bytes so far)") from None
            raise VtlError(f"{where} sent nothing for {args.timeout:g} s "
                           f"({reader.body_bytes} body bytes so far)") from None
        except OSError as exc:
            raise VtlError(f"connection to {where} failed: {exc.strerror or exc}") from None
        out.commit()
    assert reader.head is not None
    total = reader.body_bytes
    return {"status": reader.head.status, "framing": reader.framing, "bytes": total,
            "sha256": digest.hexdigest(), "seconds": round(seconds, 4),
            "mbit_per_s": round(total * 8 / seconds / 1e6, 1) if seconds else None}


def _feed(reader: ResponseReader, data: bytes) -> list[memoryview]:
    """reader.feed(), with a non-2xx status reported before anything wrong after it."""
    try:
        pieces = reader.feed(data)
    except HttpError:
        if reader.head is not None and not 200 <= reader.head.status < 300:
            raise status_error(reader.head) from None
        raise
    if reader.head is not None and not 200 <= reader.head.status < 300:
        raise status_error(reader.head)
    return pieces


def _await_eof(conn: TcpSocket, reader: ResponseReader) -> None:
    """After a complete response: the server's FIN, and no byte more."""
    if reader.framing == "eof":
        return  # the body ended at the FIN already
    deadline = time.monotonic() + EOF_GRACE
    while (left := deadline - time.monotonic()) > 0:
        try:
            data = conn.recv(RECV_SIZE, timeout=left)
        except TimeoutError:
            return
        except OSError:
            return  # the body is complete: a reset now loses nothing
        if not data:
            return
        reader.feed(data)  # raises: bytes after the end of the response
