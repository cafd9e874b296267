"""The built-in http_request and http_response parsers (RFC 9112), smuggling cases included."""

import pytest
from _parse_helpers import error_every_split, parse, parse_every_split

from vtlstack import parsers


@pytest.fixture(scope="module")
def req():
    return parsers.load("http_request")


@pytest.fixture(scope="module")
def resp():
    return parsers.load("http_response")


def request(method=b"GET", target=b"/", version=(1, 1), headers=(), body=b"", trailers=()):
    return {"method": method, "target": target, "version": version, "headers": list(headers),
            "body": body, "trailers": list(trailers)}


def response(status=200, reason=b"OK", version=(1, 1), headers=(), body=b"", trailers=()):
    return {"version": version, "status": status, "reason": reason, "headers": list(headers),
            "body": body, "trailers": list(trailers)}


# ---- requests --------------------------------------------------------------------------

def test_rfc9112_request_example(req):
    data = (b"GET /hello.txt HTTP/1.1\r\nUser-Agent: curl/7.64.1\r\nHost: www.example.com\r\n"
            b"Accept-Language: en, mi\r\n\r\n")
    assert parse_every_split(req, data) == [request(target=b"/hello.txt", headers=[
        (b"User-Agent", b"curl/7.64.1"), (b"Host", b"www.example.com"),
        (b"Accept-Language", b"en, mi")])]


def test_pipelined_keep_alive_requests_with_bodies(req):
    data = (b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"\r\n"  # RFC 9112 2.2: an empty line before a request-line is ignored
            b"PUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;name=\"v a\\\"l\"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n"
            b"0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n"
            b"GET /c HTTP/1.0\r\n\r\n")
    assert parse_every_split(req, data) == [
        request(b"POST", b"/a", headers=[(b"Host", b"h"), (b"Content-Length", b"5")],
                body=b"hello"),
        request(b"PUT", b"/b", headers=[(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")],
                body=b"Wikipedia in\r\n\r\nchunks.",
                trailers=[(b"Expires", b"never"), (b"X-Sum", b"1")]),
        request(target=b"/c", version=(1, 0)),
    ]


def test_chunked_body_is_one_span_per_chunk(req):
    s = req.stream()
    (rec,) = s.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert rec.as_dict()["body"] == b"abcde"
    assert rec.raw().endswith(b"0\r\n\r\n")


def test_header_values_lose_surrounding_whitespace_and_lf_lines_are_accepted(req):
    data = b"GET / HTTP/1.1\nHost:h\nX:  a b \t\nEmpty:\n\n"
    assert parse_every_split(req, data) == [request(headers=[
        (b"Host", b"h"), (b"X", b"a b"), (b"Empty", b"")])]


def test_only_whole_header_names_frame_the_body_in_any_case(req):
    # names of a framing header's length, or starting with one, are other fields
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Lengtz: 9\r\nContent-Length-X: 9\r\n"
            b"CONTENT-length:  3 \r\nX-Obs: caf\xc3\xa9\r\n\r\nabc")
    assert parse_every_split(req, data) == [request(b"POST", headers=[
        (b"Host", b"h"), (b"Content-Lengtz", b"9"), (b"Content-Length-X", b"9"),
        (b"CONTENT-length", b"3"), (b"X-Obs", b"caf\xc3\xa9")], body=b"abc")]


@pytest.mark.parametrize("data, reason", [
    # framing ambiguities (request smuggling)
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     "both Content-Length and Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
     "both Content-Length and Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
     "duplicate content-length header"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\ncontent-length: 4\r\n\r\nabc",
     "duplicate content-length header"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc", "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nx", "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", "invalid Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
     "Content-Length too large"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
     "chunked applied more than once"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n", "chunked applied more than once"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
     "Transfer-Encoding does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
     "Transfer-Encoding does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
     "Transfer-Encoding does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked x\r\n\r\n",
     "Transfer-Encoding does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n",
     "Transfer-Encoding does not end in chunked"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "Transfer-Encoding in an HTTP/1.0 message"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
     "whitespace between a header name and the colon"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n",
     "invalid byte in a header value"),
    # bad chunk sizes and chunk framing
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\ng\r\n",
     "invalid chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
     "invalid chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n",
     "invalid chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
     "invalid chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n",
     "invalid chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n",
     "chunk size too large"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n",
     "bare LF in a chunk size line"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n",
     "bare CR"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n",
     "chunk data not followed by CRLF"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x01\r\nhello\r\n",
     "invalid chunk extension"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"a" * 5000,
     "chunk extension too long"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: a\rb\r\n\r\n",
     "bare CR"),
    # bare CR, obs-fold and the request line
    (b"GET / HTTP/1.1\rHost: h\r\n\r\n", "bare CR"),
    (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "bare CR"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", "obsolete line folding"),
    (b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", "obsolete line folding"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n", "more than one Host header"),
    (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 request without Host"),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", "unsupported HTTP version"),
    (b"GET / http/1.1\r\nHost: h\r\n\r\n", "expected 'HTTP/'"),
    (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", "field too short"),
    (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", "invalid byte"),
    (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", "invalid byte"),
    (b"GET / HTTP/1.1\r\nHo\x00st: h\r\n\r\n", "invalid byte in a header name"),
    (b"GET / HTTP/1.1\r\n: h\r\n\r\n", "invalid byte in a header name"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
     b"\r\nab" + b"X", "unexpected end of stream"),
])
def test_request_errors(req, data, reason):
    assert error_every_split(req, data).reason == reason


def test_error_offset_points_at_the_offending_byte(req):
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"
    e = error_every_split(req, data)
    assert data[e.offset:e.offset + 1] == b"\r" and e.offset == data.index(b"\rb")


def test_limits(req):
    big_target = b"/" + b"a" * 8192
    assert error_every_split(req, b"GET " + big_target + b" HTTP/1.1\r\n").reason == (
        "field too long")
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    assert error_every_split(req, b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n"
                             ).reason == "too many header fields"
    with pytest.raises(parsers.ParseError, match="header line too long"):
        parse(req, b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 9000 + b"\r\n\r\n")


def test_truncated_request_is_an_error_at_close(req):
    s = req.stream()
    assert s.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab") == []
    with pytest.raises(parsers.ParseError, match="unexpected end of stream"):
        s.close()


# ---- responses -------------------------------------------------------------------------

RFC_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nDate: Mon, 27 Jul 2009 12:28:53 GMT\r\nServer: Apache\r\n"
    b"Last-Modified: Wed, 22 Jul 2009 19:15:56 GMT\r\nETag: \"34aa387-d-1568eb00\"\r\n"
    b"Accept-Ranges: bytes\r\nContent-Length: 51\r\nVary: Accept-Encoding\r\n"
    b"Content-Type: text/plain\r\n\r\nHello World! My content includes a trailing CRLF.\r\n")


def test_rfc9112_response_example(resp):
    (r,) = parse_every_split(resp, RFC_RESPONSE)
    assert (r["version"], r["status"], r["reason"]) == ((1, 1), 200, b"OK")
    assert r["body"] == b"Hello World! My content includes a trailing CRLF.\r\n"
    assert (b"ETag", b'"34aa387-d-1568eb00"') in r["headers"] and len(r["headers"]) == 8


def test_responses_without_content(resp):
    data = (b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"           # answers the HEAD
            b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def run(cuts):
        s = resp.stream()
        for m in (b"HEAD", b"GET", b"GET", b"GET"):
            s.expect_response_to(m)
        out, prev = [], 0
        for c in [*cuts, len(data)]:
            out += s.feed(data[prev:c])
            prev = c
        assert s.close() is None
        return [(r.as_dict()["status"], r.as_dict()["body"]) for r in out]

    expect = [(100, b""), (200, b""), (204, b""), (304, b""), (200, b"ok")]
    for i in range(len(data) + 1):
        assert run([i]) == expect


def test_connect_2xx_opens_a_tunnel_without_a_body(resp):
    s = resp.stream()
    s.expect_response_to(b"connect")
    (r,) = s.feed(b"HTTP/1.1 200 Connection Established\r\nContent-Length: 9\r\n\r\n")
    assert r.as_dict()["body"] == b""


def test_read_until_close(resp):
    data = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of this\r\nuntil the end"
    s = resp.stream()
    assert s.feed(data) == []
    last = s.close()
    assert last.as_dict() == response(version=(1, 0), headers=[(b"Server", b"x")],
                                      body=b"all of this\r\nuntil the end")
    assert parse_every_split(resp, data)[0]["body"] == b"all of this\r\nuntil the end"
    # a coding list that does not end in chunked is read until close too (RFC 9112 6.3)
    (r,) = parse(resp, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz")
    assert r["body"] == b"zz"


def test_chunked_response_with_trailers_and_empty_reason(resp):
    data = (b"HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\n\r\n1a; ignore=me\r\n"
            + b"x" * 26 + b"\r\n0\r\nDigest: abc\r\n\r\n"
            b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n")
    assert parse_every_split(resp, data) == [
        response(reason=b"", headers=[(b"Transfer-Encoding", b"chunked")], body=b"x" * 26,
                 trailers=[(b"Digest", b"abc")]),
        response(404, b"", headers=[(b"Content-Length", b"0")]),
    ]


@pytest.mark.parametrize("data, reason", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     "both Content-Length and Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     "duplicate content-length header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n", "invalid chunk size"),
    (b"HTTP/1.1 099 Low\r\n\r\n", "invalid status code"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "expected a digit"),
    (b"HTTP/1.1 200OK\r\n\r\n", "expected a space after the status code"),
    (b"HTTP/1.1 200 O\rK\r\n\r\n", "bare CR"),
    (b"HTTP/1.1 200 OK\r\nA: b\r\n\tc\r\n\r\n", "obsolete line folding"),
    (b"HTTP/3.0 200 OK\r\n\r\n", "unsupported HTTP version"),
])
def test_response_errors(resp, data, reason):
    assert error_every_split(resp, data).reason == reason
