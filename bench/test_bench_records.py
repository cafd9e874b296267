"""pytest-benchmark suite for records on the stack (needs root): `pytest bench/`.

One round of `vtl bench records`: CSV rows received by read_records() with parsing in the
network thread, in the application thread, as numpy columns, and Python's csv module on a
kernel socket, on one testbed with one sender. The rows/s and the ratios land in the
benchmark's extra_info (and in --benchmark-json).
"""

from vtlstack.apps.bench_records import RECEIVERS, records_bench


def test_csv_records_stack_vs_csv_module(benchmark):
    result = benchmark.pedantic(records_bench, kwargs={"rows": 4_000_000}, rounds=1,
                                iterations=1)
    benchmark.extra_info.update(result)
    print("\n" + "\n".join(f"  {r:17} {result[r]['rows_per_s'] / 1e6:6.2f} M rows/s"
                           for r in RECEIVERS))
    print("  " + ", ".join(f"{k} {v}x" for k, v in result["ratios"].items()))
    # every receiver read every row (records_bench raises otherwise); speed is not
    # asserted: the machine is shared and noisy
    assert all(result[r]["rows_per_s"] > 0 for r in RECEIVERS)
