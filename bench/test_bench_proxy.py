"""pytest-benchmark suite for `vtl proxy` (needs root): `pytest bench/`.

`vtl bench proxy --repeat 3`: direct, HAProxy (TCP mode, splice-auto) and `vtl proxy`
(forward, splice, and splice with --inspect http) measured in turn, three times, through the
middle host of one chain testbed; the medians' ratios (each row against direct and against
HAProxy) are what to read. The figures land in the benchmark's extra_info (and in
--benchmark-json).
"""

from vtlstack.apps.bench_proxy import print_proxy_table, proxy_bench


def test_proxy_vs_haproxy_vs_direct(benchmark):
    result = benchmark.pedantic(proxy_bench,
                                kwargs={"seconds": 5.0, "big_mb": 1024, "repeat": 3},
                                rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print_proxy_table(result)
    # Every row has its figures (speed is not asserted: the machine is shared and noisy).
    for name, row in result["rows"].items():
        for key in ("rps", "gbit_per_s", "rps_vs_direct", "rps_vs_haproxy",
                    "gbit_per_s_vs_direct", "gbit_per_s_vs_haproxy"):
            assert row[key], (name, key)
        assert row["errors"] == 0, (name, row)
