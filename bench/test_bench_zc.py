"""Table 3.1 of seed 004 (rootless): `pytest bench/test_bench_zc.py`.

ns per in-order segment taken by a connection's receive side and consumed again: appended
to the zero-copy fragment ring (a frame reference) versus copied into a linear ring buffer
as mTCP did (vtlstack._tcp.bench_rx_append). The thesis measured 20.8 vs 29.0 ns/packet
(the list 1.39x faster). Both run in the same process, alternating, best of five; the ratio
goes into extra_info (and --benchmark-json).
"""

import pytest

from vtlstack._port import FramePool
from vtlstack._tcp import bench_rx_append

PACKETS = 2_000_000


@pytest.mark.parametrize("plen", [1448, 536])
def test_table_3_1_fragment_list_vs_ring_buffer(benchmark, plen):
    pool = FramePool(4096)
    best = {"fragment_list": float("inf"), "ring_buffer": float("inf")}

    def run() -> None:
        for _ in range(5):
            for name, copy in (("fragment_list", False), ("ring_buffer", True)):
                best[name] = min(best[name], bench_rx_append(pool, plen, PACKETS, copy))

    benchmark.pedantic(run, rounds=1, iterations=1)
    ratio = best["ring_buffer"] / best["fragment_list"]
    benchmark.extra_info.update({f"{k}_ns_per_packet": round(v, 2) for k, v in best.items()})
    benchmark.extra_info["fragment_list_speedup"] = round(ratio, 2)
    print(f"\nTable 3.1, {plen}-byte segments: fragment list {best['fragment_list']:.1f} "
          f"ns/packet, ring buffer {best['ring_buffer']:.1f} ns/packet: {ratio:.2f}x "
          "(thesis: 20.8 vs 29.0, 1.39x)")
    pool.check_frames(expect_idle=True)
    assert best["fragment_list"] > 0 and best["ring_buffer"] > 0
