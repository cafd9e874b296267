"""Hostile input: random and mutated bytes end in records or a ParseError, the same however
they are cut; generated messages survive a round trip."""

import random

import pytest
from _parse_helpers import parse
from hypothesis import given, settings
from hypothesis import strategies as st

from vtlstack import parsers
from vtlstack.errors import ParseError

SAMPLES = {
    "csv": b'a,b,c\r\n"q,""x""",\r\n1,2,3\n',
    "resp": b"*2\r\n$3\r\nGET\r\n*2\r\n:1\r\n$-1\r\n+OK\r\n-ERR e\r\n",
    "http_request": (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                     b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\n"),
    "http_response": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                      b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
                      b"HTTP/1.0 200 OK\r\n\r\nrest"),
}


def outcome(p, data, cuts=()):
    try:
        return ("records", parse(p, data, cuts))
    except ParseError as e:
        return ("error", e.reason, e.offset)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.choice(b"\r\n\x00 :;,\"$*-0123456789aZ\xff")
        elif op == 1:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        elif op == 2:
            del b[i:i + rng.randrange(1, 5)]
        else:
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j):max(i, j)][:64]
    return bytes(b)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_random_and_mutated_input_never_crashes_and_ignores_cuts(name):
    p = parsers.load(name)
    rng = random.Random(name)
    for n in range(400):
        if n % 4 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        else:
            data = mutate(rng, SAMPLES[name])
        whole = outcome(p, data)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 4)))
        assert outcome(p, data, cuts) == whole, data
    # the samples themselves parse
    assert outcome(p, SAMPLES[name])[0] == "records"


def resp_encode(v) -> bytes:
    if v is None:
        return b"$-1\r\n"
    if isinstance(v, int):
        return b":%d\r\n" % v
    if isinstance(v, bytes):
        return b"$%d\r\n%s\r\n" % (len(v), v)
    return b"*%d\r\n" % len(v) + b"".join(resp_encode(x) for x in v)


resp_values = st.recursive(
    st.none() | st.integers(-2**63 + 1, 2**63 - 1) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.lists(resp_values, min_size=1, max_size=4), st.data())
def test_resp_round_trip(values, data):
    p = parsers.load("resp")
    wire = b"".join(resp_encode(v) for v in values)
    cut = data.draw(st.integers(0, len(wire)))
    assert [r["value"] for r in parse(p, wire, [cut])] == values


tokens = st.text("abcxyzABC0123456789!#$%&'*+-.^_`|~", min_size=1, max_size=8).map(str.encode)
values_ = st.text("abc xyz/=;,\t\"", max_size=12).map(lambda s: s.strip(" \t").encode())


@settings(max_examples=150, deadline=None)
@given(tokens, st.text("/abc?=&%.", min_size=1, max_size=10).map(str.encode),
       st.lists(st.tuples(tokens, values_), max_size=5), st.binary(max_size=40),
       st.booleans(), st.data())
def test_http_request_round_trip(method, target, extra, body, chunked, data):
    p = parsers.load("http_request")
    extra = [(n, v) for n, v in extra
             if n.lower() not in (b"host", b"content-length", b"transfer-encoding")]
    headers = [(b"Host", b"h"), *extra]
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
        sizes = data.draw(st.lists(st.integers(1, 9), max_size=6))
        parts, at = [], 0
        for n in sizes:
            parts.append(b"%x\r\n%s\r\n" % (len(body[at:at + n]), body[at:at + n]))
            at += n
        body = body[:at]
        payload = b"".join(p for p in parts if not p.startswith(b"0\r\n")) + b"0\r\n\r\n"
    else:
        headers.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    wire = (method + b" /" + target + b" HTTP/1.1\r\n"
            + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + payload)
    cut = data.draw(st.integers(0, len(wire)))
    assert parse(p, wire * 2, [cut]) == [{
        "method": method, "target": b"/" + target, "version": (1, 1), "headers": headers,
        "body": body, "trailers": []}] * 2
