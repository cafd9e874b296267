"""The built-in resp parser (Redis RESP2): every type, nesting, nulls, limits."""

import pytest
from _parse_helpers import error_every_split, parse_every_split

from vtlstack import parsers
from vtlstack.parsers import RespError


@pytest.fixture(scope="module")
def p():
    return parsers.load("resp")


def values(records):
    return [r["value"] for r in records]


def test_every_type(p):
    data = (b"+OK\r\n-ERR unknown command 'x'\r\n:1000\r\n:-7\r\n$5\r\nhello\r\n$0\r\n\r\n"
            b"$-1\r\n*-1\r\n*0\r\n")
    assert values(parse_every_split(p, data)) == [
        b"OK", RespError(b"ERR unknown command 'x'"), 1000, -7, b"hello", b"", None, None, []]


def test_nested_arrays_and_binary_bulk(p):
    data = (b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n*2\r\n*1\r\n:1\r\n*2\r\n$-1\r\n-E\r\n"
            b"*2\r\n$4\r\nping\r\n+x\r\n")
    assert values(parse_every_split(p, data)) == [
        [b"SET", b"k\r\n", [[1], [None, RespError(b"E")]]], [b"ping", b"x"]]


def test_error_values_are_distinct_from_bytes(p):
    (v,) = values(parse_every_split(p, b"-ERR x\r\n"))
    assert isinstance(v, RespError) and v.message == b"ERR x" and v != b"ERR x"


@pytest.mark.parametrize("data, reason", [
    (b"?x\r\n", "unknown RESP type byte"),
    (b"$-2\r\n", "negative bulk string length"),
    (b"*-5\r\n", "negative array length"),
    (b"*2000000\r\n", "array too long"),
    (b"$3\r\nabcd\r\n", "expected '\\r\\n'"),
    (b":12a\r\n", "invalid byte after a number"),
    (b":\r\n", "expected a number"),
    (b":99999999999999999999\r\n", "number too large"),
    (b"+a\rb\r\n", "invalid byte"),
    (b"$1000000000\r\n", "field too long"),
])
def test_malformed(p, data, reason):
    assert error_every_split(p, data).reason == reason


def test_nesting_is_bounded(p):
    e = error_every_split(p, b"*1\r\n" * 40 + b":1\r\n")
    assert e.reason == "nesting too deep"
    assert values(parse_every_split(p, b"*1\r\n" * 30 + b":1\r\n"))[0] is not None


def test_truncated_value_is_an_error_at_close(p):
    s = p.stream()
    assert s.feed(b"*2\r\n:1\r\n") == []
    with pytest.raises(parsers.ParseError, match="unexpected end of stream"):
        s.close()
