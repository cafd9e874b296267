"""A quick run of `vtl bench proxy`, so CI exercises the harness: nginx, wrk, curl and
HAProxy on a chain testbed and `vtl proxy` in each mode on its middle host, every row with
its figures and ratios (speed is not asserted); and how repeated runs become a row."""

import json
import subprocess

import pytest
from vtlstack.apps._common import vtl_argv
from vtlstack.apps.bench_proxy import median_row, proxy_bench

from vtlstack.errors import VtlError


@pytest.mark.root
def test_bench_proxy_quick():
    out = subprocess.run(vtl_argv("bench", "proxy", "--quick", "--json"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    rows = result["rows"]
    assert list(rows) == ["direct", "haproxy", "vtl-forward", "vtl-splice", "vtl-inspect"]
    for name, row in rows.items():
        assert row["rps"] > 0 and row["gbit_per_s"] > 0 and row["errors"] == 0, (name, row)
        assert row["rps_vs_haproxy"] > 0 and row["gbit_per_s_vs_direct"] > 0, (name, row)
    assert rows["direct"]["rps_vs_direct"] == rows["haproxy"]["rps_vs_haproxy"] == 1.0
    assert rows["vtl-inspect"]["rps_vs_splice"] > 0
    assert isinstance(result["targets"]["splice_met"], bool)


def test_repeated_runs_give_medians_and_keep_every_run():
    runs = [{"rps": 30000, "gbit_per_s": 2.5, "seconds": 9.0, "errors": 0},
            {"rps": 20000, "gbit_per_s": 3.1, "seconds": 9.2, "errors": 2},
            {"rps": 35001, "gbit_per_s": 1.9, "seconds": 8.8, "errors": 0}]
    row = median_row(runs)
    # each figure's own median: the rps and the Gbit/s may come from different runs
    assert (row["rps"], row["gbit_per_s"], row["seconds"]) == (30000, 2.5, 9.0)
    assert row["errors"] == 2 and row["runs"] == runs
    assert "runs" not in median_row(runs[:1])


def test_repeat_below_one_is_refused():
    with pytest.raises(VtlError, match="--repeat must be at least 1"):
        proxy_bench(repeat=0)
