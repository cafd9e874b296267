"""The built-in csv parser (RFC 4180), against the RFC's examples and Python's csv module."""

import csv
import io
import random

import pytest
from _parse_helpers import error_every_split, parse, parse_every_split

from vtlstack import parsers
from vtlstack.errors import ParseError


@pytest.fixture(scope="module")
def p():
    return parsers.load("csv")


def rows(records):
    return [r["fields"] for r in records]


def test_rfc4180_examples(p):
    # RFC 4180 section 2, examples 1 to 7
    assert rows(parse_every_split(p, b"aaa,bbb,ccc\r\nzzz,yyy,xxx\r\n")) == [
        [b"aaa", b"bbb", b"ccc"], [b"zzz", b"yyy", b"xxx"]]
    assert rows(parse_every_split(p, b"aaa,bbb,ccc\r\nzzz,yyy,xxx")) == [
        [b"aaa", b"bbb", b"ccc"], [b"zzz", b"yyy", b"xxx"]]
    assert rows(parse_every_split(p, b'"aaa","bbb","ccc"\r\nzzz,yyy,xxx\r\n')) == [
        [b"aaa", b"bbb", b"ccc"], [b"zzz", b"yyy", b"xxx"]]
    assert rows(parse_every_split(p, b'"aaa","b\r\nbb","ccc"\r\nzzz,yyy,xxx\r\n')) == [
        [b"aaa", b"b\r\nbb", b"ccc"], [b"zzz", b"yyy", b"xxx"]]
    assert rows(parse_every_split(p, b'"aaa","b""bb","ccc"\r\n')) == [[b"aaa", b'b"bb', b"ccc"]]


def test_quoted_delimiters_empty_fields_and_lf_lines(p):
    data = b'a,"x,y",,""\n"",b\n"""",c\n'
    assert rows(parse_every_split(p, data)) == [
        [b"a", b"x,y", b"", b""], [b"", b"b"], [b'"', b"c"]]


def test_last_row_comes_from_close(p):
    s = p.stream()
    assert [r.as_dict() for r in s.feed(b"a,b\r\nc,d")] == [{"fields": [b"a", b"b"]}]
    assert s.close().as_dict() == {"fields": [b"c", b"d"]}
    s = p.stream()
    assert len(s.feed(b"a,b\r\n")) == 1
    assert s.close() is None


def test_trailing_delimiter_at_end_of_stream_is_an_empty_field(p):
    assert rows(parse(p, b"a,")) == [[b"a", b""]]


def test_empty_line_is_one_empty_field(p):
    # RFC 4180: a record holds at least one field; an empty line is one empty field.
    assert rows(parse(p, b"a\r\n\r\nb\r\n")) == [[b"a"], [b""], [b"b"]]


def test_records_know_their_place_in_the_stream(p):
    s = p.stream()
    a, b = s.feed(b'x,y\r\n"q",z\r\n')
    assert (a.offset, a.length, b.offset, b.length) == (0, 5, 5, 7)
    assert b.raw() == b'"q",z\r\n'
    assert a.type == "row"


def test_delimiter_and_quote_options():
    p = parsers.load("csv", delimiter=";", quote="'")
    assert rows(parse_every_split(p, b"a;'b;''c'\r\n")) == [[b"a", b"b;'c"]]
    p = parsers.load("csv", delimiter=b"\t")
    assert rows(parse(p, b"a\tb,c\n")) == [[b"a", b"b,c"]]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="differ"):
        parsers.load("csv", delimiter='"')
    with pytest.raises(ValueError, match="one byte"):
        parsers.load("csv", delimiter=";;")
    with pytest.raises(TypeError, match="no option sep"):
        parsers.load("csv", sep=";")


def test_header_option_consumes_the_first_row():
    p = parsers.load("csv", header=True)
    s = p.stream()
    assert s.header is None
    recs = s.feed(b"name,age\r\nann,3")
    assert recs == [] and s.header == [b"name", b"age"]
    assert s.close().as_dict() == {"fields": [b"ann", b"3"]}


@pytest.mark.parametrize("data, reason, offset", [
    (b'a,b"c\r\n', "quote inside an unquoted field", 3),
    (b'"ab"c\r\n', "unexpected byte after a closing quote", 4),
    (b'a,"open\r\n', "unterminated quoted field", 2),
    (b"a\rb\r\n", "bare CR", 1),
])
def test_malformed_rows(p, data, reason, offset):
    e = error_every_split(p, data)
    assert (e.reason, e.offset) == (reason, offset)


def test_field_limit(tmp_path):
    p = parsers.load("csv")
    ok = b"x" * 1048576
    assert rows(parse(p, ok + b"\n")) == [[ok]]
    e = pytest.raises(ParseError, parse, p, b"a," + ok + b"x\n").value
    assert (e.reason, e.offset) == ("field too long", 2 + 1048576)
    # the limit counts the field's bytes, not its closing quote or CR: a feed may end there
    assert rows(parse(p, ok + b"\r\n", [len(ok) + 1])) == [[ok]]
    assert rows(parse(p, b'"' + ok + b'"\r\n', [len(ok) + 2, len(ok) + 3])) == [[ok]]


def test_records_completed_before_an_error_travel_with_it(p):
    with pytest.raises(ParseError) as e:
        p.stream().feed(b"a\r\nb\r\n\"x\"y")
    assert [r.as_dict() for r in e.value.records] == [{"fields": [b"a"]}, {"fields": [b"b"]}]


def _random_table(rng: random.Random) -> list[list[str]]:
    alphabet = 'ab ,"\r\n;xé'
    return [["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
              for _ in range(rng.randrange(1, 5))] for _ in range(rng.randrange(1, 8))]


def test_differential_against_the_csv_module():
    p = parsers.load("csv")
    rng = random.Random(4180)
    for _ in range(300):
        table = _random_table(rng)
        text = io.StringIO(newline="")
        # with LF line ends the writer leaves a CR unquoted, which RFC 4180 does not allow
        has_cr = any("\r" in f for row in table for f in row)
        eol = "\r\n" if has_cr else rng.choice(["\r\n", "\n"])
        csv.writer(text, lineterminator=eol).writerows(table)
        data = text.getvalue().encode()
        expect = [[f.encode() for f in row] for row in csv.reader(io.StringIO(data.decode(),
                                                                              newline=""))]
        cut = rng.randrange(len(data) + 1)
        assert rows(parse(p, data, [cut])) == expect, data


def _spans(records) -> list:
    return [(r.offset, r.length, r.raw(), r.as_dict()["fields"]) for r in records]


def _feed(p, data: bytes, step: int):
    """The records and the error (reason, offset) of data fed `step` bytes at a time."""
    s, records = p.stream(), []
    try:
        for i in range(0, len(data), step):
            records += s.feed(data[i:i + step])
        last = s.close()
        return _spans(records + ([last] if last else [])), None
    except ParseError as e:
        return _spans(records + e.records), (e.reason, e.offset)


ESCAPED = """format tsv_escaped
rule row
  record row
    repeat
      field fields[] delimited sep="\t" quote="'" escape="\\\\" max=100
    while $term == 0
  end
end
start row
"""


@pytest.mark.parametrize("fmt", ["csv", "escaped"])
def test_whole_rows_and_byte_by_byte_rows_agree(fmt, tmp_path):
    # Rows that lie whole in a feed are taken in one pass (vp_rows, 64 bytes at a time);
    # those cut by a feed's end go byte by byte. Long rows, wide rows, quoting, escapes,
    # fields over the limit and broken bytes at random places must give the same spans,
    # values and errors either way.
    if fmt == "csv":
        p, sep, quote, alphabet = parsers.load("csv"), ",", '"', 'abc ,"\r\nxyz0123'
    else:
        (tmp_path / "e.spec").write_text(ESCAPED)
        p, sep, quote, alphabet = parsers.load(str(tmp_path / "e.spec")), "\t", "'", "ab\t'\\\nxy"
    rng = random.Random(7)
    for n in range(40):
        table = [["".join(rng.choice(alphabet) if rng.random() < 0.1 else "x"
                          for _ in range(rng.choice([0, 1, 5, 15, 16, 17, 63, 64, 65, 150])))
                  for _ in range(rng.choice([1, 2, 3, 300] if n % 8 == 0 else [1, 2, 3, 8]))]
                 for _ in range(rng.randrange(1, 30))]
        text = io.StringIO(newline="")
        # with LF line ends the writer leaves a CR unquoted, which RFC 4180 does not allow
        has_cr = any("\r" in f for row in table for f in row)
        csv.writer(text, delimiter=sep, quotechar=quote,
                   lineterminator="\r\n" if has_cr else rng.choice(["\r\n", "\n"])
                   ).writerows(table)
        data = bytearray(text.getvalue().encode())
        if n % 2:   # a broken byte: a quote, CR, LF or delimiter out of place
            data[rng.randrange(len(data))] = rng.choice((quote + sep + "\r\n").encode())
        data = bytes(data)
        whole = _feed(p, data, len(data) or 1)
        assert _feed(p, data, 1) == whole, data
        assert _feed(p, data, rng.randrange(2, 200)) == whole, data
        if fmt == "csv" and not n % 2:
            expect = [[f.encode() for f in row] for row in table]
            assert [fields for *_, fields in whole[0]] == expect
