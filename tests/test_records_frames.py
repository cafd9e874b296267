"""The record/fragment mapping without a network: a stream written into the frames of a
FramePool at odd sizes, parsed in place by a RecStream (the network thread's code, vtlrec.h),
read as RecordBatches over those frames. Records equal the offline parser's on the same
bytes, fields across frames map back onto the right bytes, the event ring stalls and goes
on, limits and parse errors give the offline parser's ParseError, and frames shared by two
batches go back only when both let go."""

import random

import pytest
from vtlstack._recstream import FAILED, STALLED, Events, RecordBatch, RecStream
from vtlstack._zc import FrameQueue

from vtlstack import parsers
from vtlstack._port import FramePool
from vtlstack.errors import ParseError, ReleasedError

CSV = b"".join(b"%d,name %d,\"quoted, with \"\"q\"\"\",%s\r\n" % (i, i, b"x" * (i % 37))
               for i in range(400))


def frames_of(pool: FramePool, data: bytes, sizes) -> list[tuple[int, int, int]]:
    """data written into fresh frames, `next(sizes)` bytes each: (addr, length, offset)."""
    out, at = [], 0
    while at < len(data):
        n = min(next(sizes), len(data) - at)
        addr = pool.alloc() + 100      # not at the frame's start, as received payload
        pool.write(addr, data[at:at + n])
        out.append((addr, n, at))
        at += n
    return out


def offline(name: str, data: bytes, **options) -> list[dict]:
    s = parsers.load(name, **options).stream()
    records = [r.as_dict() for r in s.feed(data)]
    last = s.close()
    return records + ([last.as_dict()] if last else [])


def read_all(pool, spans, name="csv", ring=1 << 14, max_record=1 << 20, per_batch=50,
             **options):
    """Parse spans in place and read them back in batches: (records, batches)."""
    p = parsers.load(name, **options)
    rs = RecStream(str(p.path), p._params, ring, max_record)
    shares = FrameQueue()
    for addr, n, _ in spans:
        shares.append(addr, n)
    records, batches, start = [], [], 0
    rc = STALLED
    while True:
        rc = rs.parse(pool, shares.after(rs.parsed))
        if rc == 0 and rs.parsed == shares.received:
            rc = rs.finish()
        got = rs.take(per_batch, shares.received)
        if got is None:
            break
        events, nrec, end, _ = got
        b = RecordBatch(pool, None, p._lib, events, nrec, start, end, shares.take(end))
        start = end
        records += b.to_python()
        batches.append(b)
    return records, batches, rs, rc


@pytest.mark.parametrize("ring", [512, 1 << 14])     # 512: the ring wraps, often mid-feed
@pytest.mark.parametrize("seed", range(4))
def test_csv_records_over_odd_frames_equal_offline(seed, ring):
    rng = random.Random(seed)
    pool = FramePool(1024)
    spans = frames_of(pool, CSV, iter(lambda: rng.choice([1, 2, 7, 100, 1448]), None))
    records, batches, rs, rc = read_all(pool, spans, ring=ring)
    assert rc == 0 and rs.status() == 1
    assert records == offline("csv", CSV)
    assert sum(len(b) for b in batches) == 400


def test_fields_map_back_onto_the_frames():
    pool = FramePool(4096)
    spans = frames_of(pool, CSV, iter(lambda: 13, None))    # every field crosses frames
    records, batches, _, _ = read_all(pool, spans)
    b = batches[3]
    offsets, lengths = b.spans(1)
    rows = b.to_python()
    for off, n, row in zip(offsets, lengths, rows, strict=True):
        views = b.view(int(off), int(n))
        assert len(views) > 1 or n <= 13
        assert b"".join(bytes(v) for v in views) == CSV[off:off + n] == row["fields"][1]
    assert list(b.column(0)) == [r["fields"][0] for r in rows]
    assert b.events["kind"][-1] == 6     # VP_EV_RECORD ends the batch
    # the quoted field is the raw span; to_python() unescapes it
    q_off, q_len = b.spans(2)
    assert CSV[q_off[0]:q_off[0] + q_len[0]] == b'quoted, with ""q""'
    assert rows[0]["fields"][2] == b'quoted, with "q"'


def test_pipelined_http_and_resp_over_tiny_frames():
    pool = FramePool(4096)
    http = b"".join(b"POST /p/%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" %
                    (i, i * 3, b"b" * (i * 3)) for i in range(40))
    records, _, _, rc = read_all(pool, frames_of(pool, http, iter(lambda: 5, None)),
                                 "http_request")
    assert rc == 0 and records == offline("http_request", http)
    resp = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" * 50 + b"*3\r\n:1\r\n*1\r\n+ok\r\n$-1\r\n"
    records, _, _, rc = read_all(pool, frames_of(pool, resp, iter(lambda: 3, None)), "resp")
    assert rc == 0 and records == offline("resp", resp)


def test_a_full_ring_stalls_the_parser_until_events_are_taken():
    pool = FramePool(1024)
    p = parsers.load("csv")
    rs = RecStream(str(p.path), p._params, 512, 1 << 20)
    spans = frames_of(pool, CSV, iter(lambda: 1448, None))
    assert rs.parse(pool, [s for s in spans]) == STALLED
    first = rs.parsed
    assert 0 < first < len(CSV)
    events, nrec, end, kick = rs.take(1 << 20, len(CSV))
    assert events.lent and len(events) <= 256 and not kick, "half the ring, lent"
    assert rs.parse(pool, spans) == STALLED and rs.parsed == first, "still the batch's"
    assert events.give_back(), "the consumer must tell a stalled producer"
    assert rs.parse(pool, spans) in (0, STALLED) and rs.parsed > first


def test_a_held_batch_keeps_its_events_when_the_next_is_taken():
    pool = FramePool(1024)
    p = parsers.load("csv")
    rs = RecStream(str(p.path), p._params, 512, 1 << 20)
    spans = frames_of(pool, CSV, iter(lambda: 1448, None))
    rs.parse(pool, spans)
    first, n1, _, _ = rs.take(10, len(CSV))
    before = first.tobytes()
    second, n2, _, _ = rs.take(10, len(CSV))     # the first is not given back: copied out
    assert (n1, n2) == (10, 10) and second.lent and not first.lent
    assert first.tobytes() == before and first.give_back() is False
    for _ in range(40):                          # the ring goes round: first stays as it was
        got = rs.take(10, len(CSV))
        if got is None:
            rs.parse(pool, spans)
            continue
        got[0].give_back()
    assert first.tobytes() == before


def test_records_past_the_received_edge_wait():
    pool = FramePool(64)
    p = parsers.load("csv")
    rs = RecStream(str(p.path), p._params, 1024, 1 << 20)
    rs.parse(pool, frames_of(pool, b"a,b\r\nc,d\r\n", iter(lambda: 100, None)))
    assert not rs.ready(4) and rs.take(10, 4) is None
    assert rs.ready(5)
    assert rs.take(10, 5)[1] == 1


def test_parse_error_and_limits_are_the_offline_errors():
    pool = FramePool(256)
    bad = b"a,b\r\n\"x\"y,z\r\n"
    p = parsers.load("csv")
    with pytest.raises(ParseError) as off:
        offline("csv", bad)
    records, _, rs, rc = read_all(pool, frames_of(pool, bad, iter(lambda: 3, None)))
    assert rc == FAILED and records == [{"fields": [b"a", b"b"]}]
    err = rs.error()
    assert (err.offset, err.reason) == (off.value.offset, off.value.reason)
    # a record longer than max_record fails, at the record's start
    rs = RecStream(str(p.path), p._params, 1024, 100)
    long_row = b"ok\r\n" + b"y" * 300 + b"\r\n"
    assert rs.parse(pool, frames_of(pool, long_row, iter(lambda: 50, None))) == FAILED
    assert rs.error().offset == 4 and "max_record (100 bytes)" in rs.error().reason
    # a record with more fields than the event ring holds
    rs = RecStream(str(p.path), p._params, 512, 1 << 20)
    wide = b",".join([b"f"] * 600) + b"\r\n"
    assert rs.parse(pool, frames_of(pool, wide, iter(lambda: 1000, None))) == FAILED
    assert "more fields than the event ring" in rs.error().reason


def test_shared_frames_go_back_when_the_last_holder_lets_go():
    pool = FramePool(16, 2048)
    shares = FrameQueue()
    for addr, n in ((0, 10), (2048, 10), (4096, 10)):
        shares.append(addr, n)

    def batch(frames):
        return RecordBatch(pool, None, None, None, 0, frames[0][2], frames[-1][2], frames)

    first = shares.take(15)           # frames 0 and 2048; 2048 is cut at 15
    second = shares.take(30)          # 2048 again, and 4096
    assert [a for a, _, _ in first] == [0, 2048] and [a for a, _, _ in second] == [2048, 4096]
    assert [o for _, _, o in second] == [10, 20]
    freed = []
    batch(first).give_back(freed.append, shares)
    assert freed == [0], "2048 is still the second batch's"
    batch(second).give_back(freed.append, shares)
    assert freed == [0, 2048, 4096]
    # spans not taken yet, and one a batch still holds, at socket close
    shares.append(6144, 10)
    held = batch(shares.take(35))
    shares.drop(freed.append)
    assert 6144 not in freed, "the batch that took [30, 35) still reads it"
    held.give_back(freed.append, shares)
    assert freed.count(6144) == 1


def test_frame_queue_keeps_stream_order_across_growth_and_partial_reads():
    q = FrameQueue()
    for i in range(50):                 # wraps the ring before it grows past 64
        q.append(i * 2048, 100)
    assert q.popleft(40) == [(i * 2048, 100) for i in range(40)]
    for i in range(50, 150):
        q.append(i * 2048, 100)
    assert len(q) == 110 and (q.offset, q.received) == (4000, 15000)
    assert q.after(4050) == [(40 * 2048, 100, 4000)] + [(i * 2048, 100, i * 100)
                                                      for i in range(41, 150)]
    assert q.popleft(1000) == [(i * 2048, 100) for i in range(40, 150)]
    assert not q and q.popleft() == [] and q.offset == q.received == 15000


def test_batch_views_follow_the_release_rules():
    pool = FramePool(256)
    spans = frames_of(pool, CSV[:2000], iter(lambda: 500, None))
    _, batches, _, _ = read_all(pool, spans)
    got = []
    b = RecordBatch(pool, got.append, parsers.load("csv")._lib,
                    Events(batches[0].events.tobytes()), len(batches[0]), batches[0].start,
                    batches[0].end, spans)
    view = b.view(0, 4)[0]
    mv = memoryview(view)
    with pytest.raises(BufferError):
        b.release()
    mv.release()
    with b:
        pass
    assert got == [b]
    with pytest.raises(ReleasedError):
        b.release()
    for call in (b.to_python, lambda: b.spans(0), lambda: b.view(0, 1),
                 lambda: bytes(view)):
        with pytest.raises(ReleasedError):
            call()
