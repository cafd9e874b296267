"""A quick run of `vtl bench proxy`, so CI exercises the harness: nginx, wrk, curl and
HAProxy on a chain testbed and `vtl proxy` in each mode on its middle host, every row with
its figures and ratios (speed is not asserted)."""

import json
import subprocess

import pytest
from vtlstack.apps._common import vtl_argv

pytestmark = pytest.mark.root


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
