"""The spec language: every construct, compiled at runtime and cached; bad specs refused."""

import os
import textwrap
from pathlib import Path

import pytest
from _parse_helpers import error_every_split, parse_every_split

from vtlstack import _pbuild, parsers
from vtlstack.errors import CompilerError, SpecError

BINARY = """
    # Binary frames chosen by a tag byte: fixed-width integers in both byte orders,
    # length prefixes (binary and decimal) and a counted group of pairs.
    format binary
    var len
    var n
    limit record 64

    rule frame
      switch byte
      case "\\x01"
        record ping
          field id u32le
          field seq u16be
        end
      case "\\x02"
        record blob
          field size u16be -> $len
          field data fixed $len max=16
        end
      case "\\x03"
        record pairs
          field count u8 -> $n
          repeat $n
            field items[].0 u8
            field items[].1 fixed 2
          end
        end
      case "N"
        record netstring
          skip uint until ":" -> $len
          field data fixed $len max=32
          expect ","
        end
      else
        fail "unknown tag"
      end
    end

    start frame
"""

TEXT = """
    # A line protocol: case-insensitive tokens, tuples, delimited words, state set by
    # fields and by the feeder (input), nested groups with nulls, branches.
    format text
    var code
    var refuse
    var n

    rule msg
      while peek "\\r" "\\n"
        eol
      end
      record msg
        expect "msg/" ci
        field version.0 digits 1
        expect "."
        field version.1 digits 1
        expect " "
        field code digits 3 -> $code
        expect " "
        input $refuse default=0
        consume input
        if $refuse == 1
          fail "refused by the feeder"
        end
        if $code >= 500
          field note line chars=text as=error
        else
          field note line chars=text
        end
        repeat
          field words[] delimited sep=" " quote="'" escape="\\\\"
        while $term == 0
        switch peek
        case "["
          expect "["
          skip uint until "]" -> $n
          group tree
            repeat $n
              switch byte
              case "~"
                null tree
              case "("
                group tree
                  field tree until ")" chars=alpha
                end
              else
                fail "bad tree item"
              end
            end
          end
          eol
        else
          set $n = 0
        end
      end
    end

    start msg
"""

FRAMED = """
    # A header block whose fields set the body's framing, like HTTP.
    format framed
    var length = -1
    var te
    var seen

    rule m
      record m
        field cmd line chars=vchar min=1 max=16
        headers headers[] count=4 line=40 size=120
          on "size" length -> $length unique
          on "coding" coding -> $te
          on "x-seen" count -> $seen
        end
        if $seen > 1
          fail "x-seen twice"
        end
        if $length < 0
          set $length = 0
        end
        body body+ chunked=$te length=$length trailers=trailers[] max=100
      end
    end

    start m
"""


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "vtlstack" / "parsers"


def spec_file(tmp_path: Path, text: str, name: str = "s.spec") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_binary_records_by_tag(tmp_path):
    p = parsers.load(spec_file(tmp_path, BINARY))
    data = (b"\x01\x04\x03\x02\x01\x00\x07" + b"\x02\x00\x03abc" + b"\x03\x02\x09xy\x0aZZ"
            + b"N5:hello," + b"\x02\x00\x00")
    assert parse_every_split(p, data) == [
        {"id": 0x01020304, "seq": 7},
        {"size": 3, "data": b"abc"},
        {"count": 2, "items": [(9, b"xy"), (10, b"ZZ")]},
        {"data": b"hello"},
        {"size": 0, "data": b""},
    ]
    s = p.stream()
    assert [r.type for r in s.feed(data)] == ["ping", "blob", "pairs", "netstring", "blob"]


def test_binary_limits_and_failures(tmp_path):
    p = parsers.load(spec_file(tmp_path, BINARY))
    assert error_every_split(p, b"\x02\x00\x11" + b"x" * 17).reason == "field too long"
    assert error_every_split(p, b"N40:").reason == "field too long"
    assert error_every_split(p, b"\x09").reason == "unknown tag"
    assert error_every_split(p, b"N3:abc;").reason == "expected ','"
    e = error_every_split(p, b"\x03\x30" + b"\x01ab" * 0x30)
    assert (e.reason, e.offset) == ("record too long", 1 + 64)  # the tag is not in it
    assert error_every_split(p, b"\x01\x00").reason == "unexpected end of stream"


TERMINATED = """
    # Fields that end at a terminator: a self-overlapping `until` and a `line`.
    format terminated
    rule m
      record m
        field key until "::;" chars=vchar max=5
        field value line chars=vchar max=5
      end
    end
    start m
"""


def test_terminated_field_limits_do_not_depend_on_the_cuts(tmp_path):
    p = parsers.load(spec_file(tmp_path, TERMINATED))
    # exactly the limit, whatever cut lands inside the terminator
    assert parse_every_split(p, b"abcd:::;vwxyz\r\nab::;v\n") == [
        {"key": b"abcd:", "value": b"vwxyz"}, {"key": b"ab", "value": b"v"}]
    # one byte over: "field too long" at the limit, before a later error in the field
    for data, offset in [(b"abcdef::;v\n", 5), (b"abcdef\x01::;v\n", 5),
                         (b"k::;uvwxyz\n", 4 + 5), (b"k::;uvwxyz\x01\n", 4 + 5),
                         (b"k::;uvwxyz\rx", 4 + 5)]:
        e = error_every_split(p, data)
        assert (e.reason, e.offset) == ("field too long", offset), data
    # within the limit, the matcher's own errors
    assert error_every_split(p, b"ab\x01::;v\n").reason == "invalid byte"
    assert error_every_split(p, b"k::;v\rx").reason == "bare CR"


def test_text_protocol(tmp_path):
    p = parsers.load(spec_file(tmp_path, TEXT))
    data = (b"\r\nMSG/1.1 200 all good\r\nx 'a b' c\\ d\r\n"
            b"msg/1.0 503 busy\n[3](ab)~(c)\r\n"
            b"mSg/2.0 204 \r\n''\r\n")
    records = parse_every_split(p, data)
    assert records == [
        {"version": (1, 1), "code": 200, "note": b"all good", "words": [b"x", b"a b", b"c d"],
         "tree": None},
        {"version": (1, 0), "code": 503, "note": parsers.RespError(b"busy"),
         "words": [b"[3](ab)~(c)"], "tree": None},
        {"version": (2, 0), "code": 204, "note": b"", "words": [b""], "tree": None},
    ]


def test_groups_nest_and_hold_nulls(tmp_path):
    p = parsers.load(spec_file(tmp_path, TEXT))
    (rec,) = parse_every_split(p, b"msg/1.1 200 ok\r\nw\n[3](ab)~(cd)\r\n")
    assert rec["tree"] == [[b"ab"], None, [b"cd"]]
    assert error_every_split(p, b"msg/1.1 200 ok\r\nw\n[1]x\r\n").reason == "bad tree item"


def test_input_queue_sets_state(tmp_path):
    p = parsers.load(spec_file(tmp_path, TEXT))
    s = p.stream()
    s._s.push(0)
    s._s.push(1)
    with pytest.raises(parsers.ParseError, match="refused by the feeder") as e:
        s.feed(b"msg/1.1 200 a\r\nw\r\nmsg/1.1 200 b\r\nw\r\n")
    assert [r.as_dict()["note"] for r in e.value.records] == [b"a"]


def test_header_block_sets_body_framing(tmp_path):
    p = parsers.load(spec_file(tmp_path, FRAMED))
    data = (b"PUT\r\nSize: 5\r\nX-Other:  v  v \r\n\r\nhello"
            b"GET\nCoding: chunked\n\n3;ext=\"q\"\r\nabc\r\n1\r\nd\r\n0\r\nT: 1\r\n\r\n"
            b"NOP\r\n\r\n")
    assert parse_every_split(p, data) == [
        {"cmd": b"PUT", "headers": [(b"Size", b"5"), (b"X-Other", b"v  v")], "body": b"hello",
         "trailers": []},
        {"cmd": b"GET", "headers": [(b"Coding", b"chunked")], "body": b"abcd",
         "trailers": [(b"T", b"1")]},
        {"cmd": b"NOP", "headers": [], "body": b"", "trailers": []},
    ]


@pytest.mark.parametrize("data, reason", [
    (b"A\r\nsize: 1\r\nSIZE: 1\r\n\r\nx", "duplicate size header"),
    (b"A\r\nsize: 1x\r\n\r\n", "invalid Content-Length"),
    (b"A\r\nx-seen: 1\r\nx-seen: 2\r\n\r\n", "x-seen twice"),
    (b"A\r\nsize: 101\r\n\r\n", "body too long"),
    (b"A\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n", "too many header fields"),
    (b"A\r\nlong: " + b"x" * 40 + b"\r\n\r\n", "header line too long"),
    (b"A\r\n" + b"k: 123456789012345678901234567890\r\n" * 4 + b"\r\n",
     "header section too long"),
    (b"A\r\n\r\n", "field too short"),
    (b"A\r\nk : v\r\n\r\n", "whitespace between a header name and the colon"),
])
def test_header_block_limits_and_rules(tmp_path, data, reason):
    p = parsers.load(spec_file(tmp_path, FRAMED))
    if reason == "field too short":
        data = b"\r\n"
    assert error_every_split(p, data).reason == reason


def test_user_spec_is_compiled_once_and_cached(tmp_path, cache):
    path = spec_file(tmp_path, BINARY)
    first = parsers.load(path)
    assert first.compiled and first.path.parent == cache
    stat = first.path.stat()
    again = parsers.load(path)
    assert not again.compiled
    assert again.path == first.path
    assert (again.path.stat().st_ino, again.path.stat().st_mtime_ns) == (
        stat.st_ino, stat.st_mtime_ns)
    assert sorted(os.listdir(cache)) == [first.path.name]  # no stray C or temporaries
    changed = parsers.load(spec_file(tmp_path, BINARY + "\n# changed\n", "t.spec"))
    assert changed.compiled and changed.path != first.path


def test_unwritable_cache_falls_back_to_a_temporary_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    p = parsers.load(spec_file(tmp_path, BINARY))
    assert p.path.is_relative_to(tmp_path / "tmp")


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(CompilerError, match="no C compiler found"):
        parsers.load(spec_file(tmp_path, BINARY))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(CompilerError, match="not an executable"):
        _pbuild.find_compiler()


BAD_SPECS = [
    ("start m\n", 1, "missing 'format NAME'"),
    ("format x\nrule m\n  record r\n    expect \"a\"\n  end\nend\n", 6, "missing 'start RULE'"),
    ("format x\nfrobnicate\n", 2, "unknown statement 'frobnicate' at the top level"),
    ("format x\nrule m\n  record r\n    field a wibble\n  end\nend\nstart m\n", 4,
     "unknown matcher 'wibble'"),
    ("format x\nrule m\n  field a fixed 1\nend\nstart m\n", 3, "a field outside any record"),
    ("format x\nrule m\n  record r\n    record s\n      expect \"a\"\n    end\n  end\nend\n"
     "start m\n", 4, "a record cannot start inside another record"),
    ("format x\nvar v\nrule m\n  record r\n    expect \"a\"\n    repeat\n      set $v = 1\n"
     "    while $v == 1\n  end\nend\nstart m\n", 6, "loop's body can match without consuming"),
    ("format x\nrule m\n  record r\n    set $nope = 1\n  end\nend\nstart m\n", 4,
     "unknown variable $nope"),
    ("format x\nrule m\n  record r\n    expect \"abc\n  end\nend\nstart m\n", 4,
     "unterminated string"),
    ("format x\nrule m\n  record r\n    expect \"a\"\n  end\nstart m\n", 2,
     "block opened here is never closed"),
    ("format x\nrule m\n  record r\n    other\n  end\nend\nstart m\n", 4, "no rule named other"),
    ("format x\nrule m\n  record r\n    switch byte\n    case \"a\"\n      expect \"b\"\n"
     "    case \"ca\"\n      expect \"b\"\n    end\n  end\nend\nstart m\n", 7,
     "byte b'a' in two cases"),
    ("format x\nrule m\n  record r\n    field a fixed 2 chars=text\n  end\nend\nstart m\n", 4,
     "chars= applies to until and line"),
    ("format x\nvar v\nrule m\n  record r\n    field a until \",\" -> $v\n  end\nend\nstart m\n",
     5, "-> stores an integer"),
    ("format x\nrule m\n  record r\n    field A-b fixed 1\n  end\nend\nstart m\n", 4,
     "bad field name 'A-b'"),
    ("format x\nlimit depth 1000\n", 2, "limit depth out of range"),
    ("format x\nrule m\n  record r\n    expect \"\\q\"\n  end\nend\nstart m\n", 4,
     "unknown escape \\q"),
    ("format x\nvar v\nrule m\n  record r\n    set $v = 1\n  end\nend\nstart m\n", 4,
     "start rule m can match without consuming input"),
    ("format x\nrule m\n  record r\n    expect \"a\"\n  end\nend\nend\nstart m\n", 7,
     "unknown statement 'end' at the top level"),
    ("format x\nrule m\n  record r\n    headers h\n    end\n  end\nend\nstart m\n", 4,
     "the path ends with []"),
    ("format x\nrule m\n  record r\n    field a delimited sep=$d\n  end\nend\nstart m\n", 4,
     "unknown variable $d"),
]


@pytest.mark.parametrize("text, line, reason", BAD_SPECS)
def test_bad_specs_are_refused_with_line_and_reason(tmp_path, text, line, reason):
    with pytest.raises(SpecError) as e:
        parsers.load(spec_file(tmp_path, text))
    assert e.value.line == line
    assert reason in e.value.reason
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.so"))
