"""Feeding helpers shared by the parser tests: whole, split at given offsets, byte by byte."""

from vtlstack.errors import ParseError


def parse(parser, data: bytes, cuts=()) -> list[dict]:
    """Feed data cut at the given offsets, close, and return every record's dict."""
    s = parser.stream()
    records, prev = [], 0
    for cut in [*cuts, len(data)]:
        records += s.feed(data[prev:cut])
        prev = cut
    last = s.close()
    if last is not None:
        records.append(last)
    return [r.as_dict() for r in records]


def parse_every_split(parser, data: bytes) -> list[dict]:
    """The records of data, checked to be the same however the bytes are cut."""
    whole = parse(parser, data)
    for i in range(len(data) + 1):
        assert parse(parser, data, [i]) == whole, f"split at {i}"
    third = len(data) // 3
    assert parse(parser, data, [third, 2 * third]) == whole
    assert parse(parser, data, range(1, len(data))) == whole, "byte by byte"
    return whole


def error_of(parser, data: bytes, cuts=()) -> ParseError:
    """The ParseError that data raises (fed with the given cuts, then closed)."""
    try:
        parse(parser, data, cuts)
    except ParseError as e:
        return e
    raise AssertionError(f"{data!r} parsed without error")


def error_every_split(parser, data: bytes) -> ParseError:
    """The ParseError of data, checked to be the same (reason and offset) at every cut."""
    first = error_of(parser, data)
    for i in range(len(data) + 1):
        e = error_of(parser, data, [i])
        assert (e.reason, e.offset) == (first.reason, first.offset), f"split at {i}"
    e = error_of(parser, data, range(1, len(data)))
    assert (e.reason, e.offset) == (first.reason, first.offset), "byte by byte"
    return first
