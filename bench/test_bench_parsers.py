"""pytest-benchmark suite for the generated record parsers (rootless): `pytest bench/`.

Each test parses the same in-memory bytes, fed in 64 KiB chunks as a socket would hand them
over, with the generated parser and with a peer in the same run, and reports records/s,
MB/s and the ratio (also in the benchmark's extra_info and --benchmark-json). Two figures
for the generated parser: `feed` delivers records (fields still spans, as the in-stack path
will), `values` also turns every record into Python values with as_dict().
"""

import csv
import io

from vtlstack.apps.bench_parsers import CHUNK, best, chunks, generated, inputs


def _compare(name: str, data: bytes, peer, peer_name: str) -> dict:
    counts = {generated(name, data, False), generated(name, data, True), peer(data)}
    assert len(counts) == 1, f"the parsers disagree on the record count: {counts}"
    n = counts.pop()
    mb = len(data) / 1e6
    times = {"feed": best(lambda: generated(name, data, False)),
             "values": best(lambda: generated(name, data, True)),
             peer_name: best(lambda: peer(data))}
    result = {"records": n, "bytes": len(data)}
    for k, t in times.items():
        result[f"{k}_records_per_s"] = round(n / t)
        result[f"{k}_MB_per_s"] = round(mb / t, 1)
    for k in ("feed", "values"):
        result[f"{k}_vs_{peer_name}"] = round(times[peer_name] / times[k], 2)
    print(f"\n{name}: {n} records, {mb:.1f} MB")
    for k, t in times.items():
        print(f"  {k:>10}: {n / t / 1e6:6.2f} M records/s  {mb / t:7.1f} MB/s")
    print(f"  ratio: feed {result[f'feed_vs_{peer_name}']}x, values "
          f"{result[f'values_vs_{peer_name}']}x the {peer_name}")
    return result


def _csv_module(data: bytes) -> int:
    n = 0
    text = io.TextIOWrapper(io.BufferedReader(io.BytesIO(data), CHUNK), newline="")
    for _ in csv.reader(text):
        n += 1
    return n


def _python_http(data: bytes) -> int:
    """A plain Python HTTP/1.1 request reader: what a server without a C parser does."""
    n, at, size = 0, 0, len(data)
    buf = b""
    for chunk in chunks(data):
        buf += chunk
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            lines = buf[:end].split(b"\r\n")
            method, target, version = lines[0].split(b" ")
            headers = []
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                value = value.strip()
                headers.append((name, value))
                if name.lower() == b"content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                break
            body = buf[end + 4:end + 4 + length]
            assert len(body) == length and method and target and version
            buf = buf[end + 4 + length:]
            n += 1
    at += size
    return n


INPUTS = inputs()


def test_csv_16_byte_rows_vs_csv_module(benchmark):
    result = benchmark.pedantic(_compare, args=(*INPUTS["csv_16_byte_rows"], _csv_module,
                                                "csv_module"), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["feed_vs_csv_module"] > 0


def test_csv_quoted_rows_vs_csv_module(benchmark):
    result = benchmark.pedantic(_compare, args=(*INPUTS["csv_quoted_rows"], _csv_module,
                                                "csv_module"), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["feed_vs_csv_module"] > 0


def test_http_requests_header_only_vs_python(benchmark):
    result = benchmark.pedantic(_compare, args=(*INPUTS["http_get_7_headers"], _python_http,
                                                "python"), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["feed_vs_python"] > 0


def test_http_requests_2k_bodies_vs_python(benchmark):
    result = benchmark.pedantic(_compare, args=(*INPUTS["http_post_2k_bodies"], _python_http,
                                                "python"), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["feed_vs_python"] > 0
