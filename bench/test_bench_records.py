"""pytest-benchmark suite for records on the stack (needs root): `pytest bench/`.

Rounds of `vtl bench records`, each on one testbed with one sender: CSV rows received by
read_records() with parsing in the network thread, in the application thread, as numpy
columns, and Python's csv module on a kernel socket; HTTP/1.1 requests (header-only, and
with 2 KB bodies) received by read_records() parsed in either thread, by the stack with no
parser (recv and recv_zc), and by httptools on a kernel socket. The rates, the ratios and the
targets land in the benchmark's extra_info (and in --benchmark-json). Speed is not
asserted: the machine is shared and noisy, so each test prints the ratios of its own run.
"""

from vtlstack.apps.bench_records import WORKLOADS, records_bench


def _report(benchmark, result: dict) -> None:
    benchmark.extra_info.update(result)
    for w in WORKLOADS:
        if w not in result:
            continue
        res = result[w]
        print(f"\n{w}: " + ", ".join(f"{r} {res[r]['records_per_s'] / 1e6:.3f} M/s "
                                    f"{res[r]['mb_per_s']:.0f} MB/s" for r in WORKLOADS[w][1]))
        print("  " + ", ".join(f"{k} {v}x" for k, v in res["ratios"].items()))
        t = result["targets"][w]
        print(f"  target {t['of']} >= {t['target']}: {t['ratio']} "
              f"({'met' if t['met'] else 'not met'})")


def test_csv_records_stack_vs_csv_module(benchmark):
    result = benchmark.pedantic(records_bench, kwargs={"rows": 20_000_000,
                                                       "workloads": ("csv",)},
                                rounds=1, iterations=1)
    _report(benchmark, result)
    # every receiver read every row (records_bench raises otherwise)
    assert set(result) == {"repeat", "csv", "targets"}
    assert all(result["csv"][r]["records_per_s"] > 0 for r in WORKLOADS["csv"][1])


def test_http_requests_stack_vs_httptools_and_raw_tcp(benchmark):
    result = benchmark.pedantic(records_bench,
                                kwargs={"gets": 4_000_000, "posts": 400_000,
                                        "workloads": ("http_get", "http_post")},
                                rounds=1, iterations=1)
    _report(benchmark, result)
    # every receiver read every request, or all their bytes for stack-raw, with no parse
    # error and no frame left held (records_bench raises otherwise)
    assert all(result[w][r]["mb_per_s"] > 0 for w in ("http_get", "http_post")
               for r in WORKLOADS[w][1])
    # the requests are the ones the targets speak of: no body, and a 2 KB body
    assert result["http_get"]["record_bytes"] < 256 < 2048 < result["http_post"]["record_bytes"]
