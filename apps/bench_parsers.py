"""The generated parsers on in-memory bytes, and the inputs they are measured on.

bench/test_bench_parsers.py sets these rates against peers; `vtl bench records` prints them
beside its figures from the testbed, as the ceiling the parsing alone would allow there.
The request bytes here are also what `vtl bench records` sends over TCP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from vtlstack import parsers

CHUNK = 65536  # what a socket read hands over at a time

HEADERS = (b"Host: example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n"
           b"Accept-Language: en, mi\r\nAccept-Encoding: gzip, deflate\r\n"
           b"Connection: keep-alive\r\nCookie: a=1; b=2\r\n")
HTTP_GET = b"GET /index.html?x=1 HTTP/1.1\r\n" + HEADERS + b"\r\n"
HTTP_POST = (b"POST /upload HTTP/1.1\r\n" + HEADERS + b"Content-Length: 2048\r\n\r\n"
             + b"b" * 2048)


def inputs() -> dict[str, tuple[str, bytes]]:
    """name -> (parser, bytes): 16-byte and quoted CSV rows, pipelined GETs with 7 headers,
    POSTs with 2 KB bodies; each 7-23 MB (built on call: they take a moment)."""
    return {
        "csv_16_byte_rows": ("csv", b"".join(b"%05d,abcdef,xy\n" % (i % 100000)
                                             for i in range(500_000))),
        "csv_quoted_rows": ("csv", b"".join(
            b'%d,"quoted, with ""quotes""",plain text field,3.14159\r\n' % i
            for i in range(150_000))),
        "http_get_7_headers": ("http_request", HTTP_GET * 40_000),
        "http_post_2k_bodies": ("http_request", HTTP_POST * 10_000),
    }


def best(fn: Callable[[], object], rounds: int = 5) -> float:
    """The fastest of `rounds` calls, in seconds (the least disturbed by other work)."""
    fastest = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        fastest = min(fastest, time.perf_counter() - t)
    return fastest


def chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def generated(name: str, data: bytes, values: bool) -> int:
    """Records the generated parser `name` finds in data fed in CHUNK pieces; with values,
    each record is also turned into Python values (as_dict())."""
    s = parsers.load(name).stream()
    n = 0
    for chunk in chunks(data):
        records = s.feed(chunk)
        if values:
            for r in records:
                r.as_dict()
        n += len(records)
    if s.close() is not None:
        n += 1
    return n


def offline_rates(rounds: int = 3) -> dict[str, dict[str, float]]:
    """Each input through its generated parser (records, fields still spans): records/s
    and MB/s, the best of `rounds`."""
    result = {}
    for key, (name, data) in inputs().items():
        n = generated(name, data, False)
        seconds = best(partial(generated, name, data, False), rounds)
        result[key] = {"records_per_s": round(n / seconds),
                       "mb_per_s": round(len(data) / seconds / 1e6, 1)}
    return result
