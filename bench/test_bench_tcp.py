"""pytest-benchmark suite for TCP through the stack (needs root): `pytest bench/`.

One round of `vtl bench tcp`: the stack and kernel TCP measured in turn on the same testbed,
so the ratios (bulk RX/TX, connections/s, p99 round trip, each against kernel TCP) are what
to read. The figures land in the benchmark's extra_info (and in --benchmark-json).
"""

from vtlstack.apps.bench_tcp import print_tcp_table, tcp_bench

FIGURES = {
    "bulk_rx": ("stack_mbit_per_s", "kernel_mbit_per_s", "stack_vs_kernel"),
    "bulk_tx": ("stack_mbit_per_s", "kernel_mbit_per_s", "stack_vs_kernel"),
    "connections": ("stack_per_s", "kernel_per_s", "stack_vs_kernel"),
    "latency": ("stack_p50_us", "stack_p99_us", "kernel_p50_us", "kernel_p99_us",
                "p50_stack_vs_kernel", "p99_stack_vs_kernel"),
    "ceiling": ("iperf3_offloads_off_mbit_per_s", "iperf3_offloads_on_mbit_per_s"),
}


def test_tcp_stack_vs_kernel(benchmark):
    result = benchmark.pedantic(tcp_bench, kwargs={"seconds": 2.0, "rounds": 10000},
                                rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print_tcp_table(result)
    # Every figure exists: a missing one is a broken run, not a slow one (speed is not
    # asserted: the machine is shared and noisy).
    for section, keys in FIGURES.items():
        for key in keys:
            assert result[section][key] is not None, (section, key)
    assert result["frames_back"]
