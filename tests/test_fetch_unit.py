"""The HTTP/1.1 side of `vtl fetch` without a network: URL, request, response head, body
framing and chunked decoding, each fed whole, split at every byte and byte by byte."""

import signal

import pytest
from vtlstack.apps.fetch import (
    MAX_HEAD,
    ChunkedDecoder,
    Head,
    HttpError,
    ResponseReader,
    Target,
    body_framing,
    build_request,
    parse_head,
    parse_url,
    status_error,
)

from vtlstack import cli

# ---- URL and request -------------------------------------------------------------------


@pytest.mark.parametrize("url, target", [
    ("http://10.0.0.1/", Target("10.0.0.1", 80, "/")),
    ("http://10.0.0.1", Target("10.0.0.1", 80, "/")),
    ("HTTP://10.0.0.1:8080/a/b.bin", Target("10.0.0.1", 8080, "/a/b.bin")),
    ("http://10.0.0.1:81/x?y=1&z#frag", Target("10.0.0.1", 81, "/x?y=1&z")),
    ("http://10.0.0.1/%20space", Target("10.0.0.1", 80, "/%20space")),
])
def test_parse_url(url, target):
    assert parse_url(url) == target


@pytest.mark.parametrize("url, says", [
    ("https://10.0.0.1/", "no TLS"),
    ("ftp://10.0.0.1/", "only http://"),
    ("10.0.0.1/x", "only http://"),
    ("http://example.com/", "literal IPv4"),
    ("http://[::1]:80/", "literal IPv4"),
    ("http://010.0.0.1/", "literal IPv4"),
    ("http://10.0.0.256/", "literal IPv4"),
    ("http:///x", "literal IPv4"),
    ("http://u:p@10.0.0.1/", "user information"),
    ("http://10.0.0.1:99999/", "bad port"),
    ("http://10.0.0.1:0/", "bad port"),
    ("http://10.0.0.1:x/", "bad port"),
    ("http://10.0.0.1/a b", "whitespace"),
    ("http://10.0.0.1/a\r\nX-Injected: 1", "whitespace"),
])
def test_parse_url_refuses(url, says):
    with pytest.raises(HttpError, match=says):
        parse_url(url)


def test_request_bytes():
    assert build_request(Target("10.0.0.1", 8080, "/f?x=1")) == (
        b"GET /f?x=1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: vtl-fetch\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n")
    assert b"\r\nHost: 10.0.0.1\r\n" in build_request(Target("10.0.0.1", 80, "/"))


# ---- response head ---------------------------------------------------------------------


def test_head_fields():
    head = parse_head(b"HTTP/1.1 200 OK fine\r\nContent-Type: text/plain \r\n"
                      b"X-Folded: a\r\n \t b\r\nset-cookie: 1\r\nSet-Cookie: 2\r\nEmpty:")
    assert (head.version, head.status, head.reason) == ((1, 1), 200, "OK fine")
    assert head.get("content-type") == "text/plain"
    assert head.get("x-folded") == "a b"  # RFC 9112 5.2: obs-fold becomes SP
    assert head.get_all("set-cookie") == ["1", "2"]
    assert head.get("empty") == "" and head.get("missing") is None


@pytest.mark.parametrize("line, reason", [
    (b"HTTP/1.0 404 Not Found", "Not Found"), (b"HTTP/1.1 204 ", ""), (b"HTTP/1.1 204", ""),
    (b"HTTP/1.1 200 caf\xe9", "caf\xe9"),
])
def test_status_lines(line, reason):
    assert parse_head(line).reason == reason


@pytest.mark.parametrize("block, says", [
    (b"SSH-2.0-OpenSSH_9.2", "not an HTTP/1.x status line"),
    (b"HTTP/2.0 200 OK", "unsupported HTTP version"),
    (b"HTTP/1.1 20 OK", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 2000 OK", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 099 Low", "bad status code"),
    (b"http/1.1 200 OK", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nNoColon", "without a colon"),
    (b"HTTP/1.1 200 OK\r\nName : v", "bad header field name"),
    (b"HTTP/1.1 200 OK\r\n: v", "bad header field name"),
    (b"HTTP/1.1 200 OK\r\nA: b\x00c", "control character"),
    (b"HTTP/1.1 200 OK\r\n folded-first", "continuation"),
    (b"HTTP/1.1 200 OK\nA: b", "bare CR or LF"),
    (b"HTTP/1.1 200 OK\r\nA: b\rc", "bare CR or LF"),
    (b"HTTP/1.1 200 OK" + b"\r\nA: b" * 200, "header fields"),
])
def test_bad_heads(block, says):
    with pytest.raises(HttpError, match=says):
        parse_head(block)


def head(*fields: tuple[str, str], status: int = 200) -> Head:
    return Head((1, 1), status, "", [(n.lower(), v) for n, v in fields])


@pytest.mark.parametrize("h, framing", [
    (head(("Content-Length", "10")), ("length", 10)),
    (head(("Content-Length", "10, 10"), ("Content-Length", "10")), ("length", 10)),
    (head(("Transfer-Encoding", "Chunked")), ("chunked", 0)),
    # RFC 9112 6.3 (3): Transfer-Encoding wins over Content-Length.
    (head(("Transfer-Encoding", "chunked"), ("Content-Length", "5")), ("chunked", 0)),
    (head(), ("eof", 0)),
    (head(("Content-Length", "10"), status=204), ("length", 0)),
    (head(("Transfer-Encoding", "chunked"), status=304), ("length", 0)),
])
def test_body_framing(h, framing):
    assert body_framing(h) == framing


@pytest.mark.parametrize("h, says", [
    (head(("Content-Length", "10"), ("Content-Length", "11")), "conflicting"),
    (head(("Content-Length", "-1")), "bad Content-Length"),
    (head(("Content-Length", "+5")), "bad Content-Length"),
    (head(("Content-Length", "0x10")), "bad Content-Length"),
    (head(("Content-Length", "")), "bad Content-Length"),
    (head(("Content-Length", "\u0661")), "bad Content-Length"),  # a non-ASCII digit
    (head(("Content-Length", "9" * 19)), "bad Content-Length"),
    (head(("Transfer-Encoding", "gzip, chunked")), "unsupported Transfer-Encoding"),
    (head(("Transfer-Encoding", "chunked, identity")), "unsupported Transfer-Encoding"),
])
def test_bad_framing(h, says):
    with pytest.raises(HttpError, match=says):
        body_framing(h)


def test_status_errors():
    assert str(status_error(Head((1, 1), 404, "Not Found"))) == "HTTP 404 Not Found"
    moved = Head((1, 1), 301, "Moved Permanently", [("location", "http://10.0.0.1/b/")])
    assert str(status_error(moved)) == \
        "HTTP 301 Moved Permanently (redirect to http://10.0.0.1/b/: not followed)"
    assert str(status_error(head(status=500))) == "HTTP 500"


# ---- chunked body ----------------------------------------------------------------------

CHUNKED = (b"5\r\nhello\r\n"
           b"1A;name=value ; other\r\n" + bytes(range(65, 91)) + b"\r\n"
           b"001\r\n!\r\n"
           b"0\r\nX-Checksum: abc\r\nX-Other:  d e \r\n\r\n")
CHUNKED_BODY = b"hello" + bytes(range(65, 91)) + b"!"


def decode(pieces: list[bytes]) -> tuple[bytes, ChunkedDecoder, bytes]:
    """Feed pieces; (decoded body, decoder, input left over after the end)."""
    dec = ChunkedDecoder()
    body, rest = bytearray(), bytearray()
    for piece in pieces:
        out, used = dec.feed(piece)
        body += b"".join(out)
        rest += piece[used:]
    return bytes(body), dec, bytes(rest)


def splits(data: bytes):
    yield [data]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


@pytest.mark.parametrize("pieces", list(splits(CHUNKED)), ids=lambda p: f"{len(p)}:{len(p[0])}")
def test_chunked_any_split(pieces):
    body, dec, rest = decode(pieces)
    assert body == CHUNKED_BODY and dec.done and rest == b""
    assert dec.trailers == [("x-checksum", "abc"), ("x-other", "d e")]


def test_chunked_stops_at_the_end():
    body, dec, rest = decode([CHUNKED + b"HTTP/1.1 200 OK\r\n"])
    assert body == CHUNKED_BODY and dec.done and rest == b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize("data, says", [
    (b"\r\n", "bad chunk size"),
    (b"x\r\n", "bad chunk size"),
    (b"-1\r\n", "bad chunk size"),
    (b"+1\r\n", "bad chunk size"),
    (b"0x10\r\n", "bad chunk size"),
    (b" 1\r\n", "bad chunk size"),
    (b"1_0\r\n", "bad chunk size"),
    (b"1" * 17 + b"\r\n", "bad chunk size"),
    (b"1" * 5000, "longer than"),
    (b"1;" + b"e" * 5000 + b"\r\n", "longer than"),
    (b"3\nabc\r\n", "not ended by CRLF"),
    (b"3\r\r\nabc\r\n", "not ended by CRLF"),
    (b"3\r\nabcd\r\n", "not followed by CRLF"),  # the size says 3, the data has 4
    (b"3\r\nabc\n0\r\n\r\n", "not followed by CRLF"),
    (b"0\r\nNoColon\r\n\r\n", "without a colon"),
    (b"0\r\n" + b"X-T: 1234567890\r\n" * 5000, "trailer section larger"),
])
def test_chunked_errors(data, says):
    for pieces in ([data], [data[i:i + 1] for i in range(len(data))]):
        with pytest.raises(HttpError, match=says):
            decode(pieces)


# ---- whole responses -------------------------------------------------------------------


def read(pieces: list[bytes], eof: bool = True) -> tuple[ResponseReader, bytes]:
    reader = ResponseReader()
    body = bytearray()
    for piece in pieces:
        body += b"".join(reader.feed(piece))
    if eof:
        reader.eof()
    return reader, bytes(body)


RESPONSES = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", "length", b"hello world"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED, "chunked",
     CHUNKED_BODY),
    (b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nto the end\r\n\r\n", "eof", b"to the end\r\n\r\n"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "length", b"ok"),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", "length", b""),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "length", b""),
]


@pytest.mark.parametrize("raw, framing, body", RESPONSES, ids=[r[1] for r in RESPONSES])
def test_responses_any_split(raw, framing, body):
    for pieces in splits(raw):
        reader, got = read(pieces)
        assert (got, reader.framing, reader.done) == (body, framing, True)
        assert reader.head.status in (200, 204) and reader.body_bytes == len(body)


def test_complete_before_eof():
    """A Content-Length or chunked body is complete without waiting for the FIN."""
    for raw, framing, _ in RESPONSES:
        if framing != "eof":
            reader, _ = read([raw], eof=False)
            assert reader.done


def test_head_is_known_before_the_body():
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot") == [b"not"]
    assert reader.head.status == 404 and not reader.done


@pytest.mark.parametrize("pieces, says", [
    ([], "without a response"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"], "in the response head"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], "after 3 of 10 bytes"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"], "middle of the chunked"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n"], "middle of"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"], "middle of"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc"], "1 bytes after the end"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab", b"c"], "1 bytes after the end"),
    ([b"HTTP/1.1 101 Switching Protocols\r\n\r\n"], "switched protocols"),
    ([b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * MAX_HEAD], "head larger than"),
    ([b"HTTP/1.1 200 OK\r\nX: " + b"y" * (MAX_HEAD - 23) + b"\r\n\r\n"], "head larger than"),
    ([b"HTTP/1.1 200 OK\n\n"], "in the response head"),  # bare LFs never end the head
])
def test_bad_responses(pieces, says):
    with pytest.raises(HttpError, match=says):
        read(pieces)


def test_not_http_fails_at_the_first_line():
    """A server that is no HTTP server fails when its first line is in, before EOF."""
    greeting = b"SSH-2.0-OpenSSH_9.2\r\n"
    for pieces in splits(greeting):
        reader = ResponseReader()
        with pytest.raises(HttpError, match="not an HTTP/1.x status line"):
            for piece in pieces:
                reader.feed(piece)


def test_oversize_head_fails_early():
    """The head limit holds while it is still arriving: no unbounded buffer."""
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nX: ")
    with pytest.raises(HttpError, match="head larger than"):
        for _ in range(MAX_HEAD):
            reader.feed(b"y")


def test_head_just_under_the_limit():
    raw = b"HTTP/1.1 200 OK\r\nX: "
    raw += b"y" * (MAX_HEAD - len(raw) - 4) + b"\r\n\r\n"
    assert len(raw) == MAX_HEAD
    reader, body = read([raw])
    assert len(reader.head.get("x")) == MAX_HEAD - 24 and body == b""


# ---- the command, up to the point where it would need root ------------------------------


@pytest.mark.parametrize("argv, says", [
    (["http://example.com/", "-o", "{tmp}/f"], "literal IPv4 address"),
    (["https://10.0.0.1/", "-o", "{tmp}/f"], "no TLS"),
    (["http://10.0.0.1/", "-o", "-"], "stdout carries the JSON report"),
    (["http://10.0.0.1/", "-o", "{tmp}"], "is a directory"),
    (["http://10.0.0.1/", "-o", "{tmp}/no/such/f"], "does not exist"),
])
def test_cli_refuses_before_touching_the_network(argv, says, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["fetch", "--iface", "nonexistent0", *argv]) == 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # main() installs its own handler
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("vtl fetch: error: ") and says in err
    assert list(tmp_path.iterdir()) == []
