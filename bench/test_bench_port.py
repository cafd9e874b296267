"""pytest-benchmark suite for the AF_XDP port (needs root): `pytest bench/`.

One round of `vtl bench port`: every receiver against the same generator, in one run, so
the ratios (Cython vs the C reference, the stack vs kernel UDP) are what to read. The
figures land in the benchmark's extra_info (and in --benchmark-json).
"""

from vtlstack.apps.bench import port_bench, print_port_table


def test_port_rates_and_idle_cpu(benchmark):
    result = benchmark.pedantic(port_bench, kwargs={"seconds": 2.0, "idle_seconds": 5.0},
                                rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print_port_table(result)
    # Every receiver produced a figure: a missing one is a broken run, not a slow one.
    for mode in ("rxdrop", "echo"):
        for size, row in result[mode].items():
            assert all(v is not None for k, v in row.items() if k.endswith("_pps")), (mode, size)
    assert result["idle_cpu_pct"] >= 0
