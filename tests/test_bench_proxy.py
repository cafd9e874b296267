"""A quick run of `vtl bench proxy`, so CI exercises the harness: nginx, wrk, curl and
HAProxy on a chain testbed, every row that can run with its figures and ratios, the others
saying why (speed is not asserted)."""

import json
import subprocess

import pytest
from vtlstack.apps._common import vtl_argv
from vtlstack.apps.proxy import splice_supported, two_interfaces_supported

pytestmark = pytest.mark.root


def test_bench_proxy_quick():
    out = subprocess.run(vtl_argv("bench", "proxy", "--quick", "--json"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    rows = result["rows"]
    assert list(rows) == ["direct", "haproxy", "vtl-forward", "vtl-splice"]
    runnable = {"direct", "haproxy"}
    if two_interfaces_supported():
        runnable.add("vtl-forward")
        if splice_supported():
            runnable.add("vtl-splice")
    for name, row in rows.items():
        if name not in runnable:
            assert row["unavailable"].startswith("not available: "), row
            continue
        assert row["rps"] > 0 and row["gbit_per_s"] > 0 and row["errors"] == 0, row
        assert row["rps_vs_haproxy"] > 0 and row["gbit_per_s_vs_direct"] > 0, row
    assert rows["direct"]["rps_vs_direct"] == rows["haproxy"]["rps_vs_haproxy"] == 1.0
    if "vtl-splice" not in runnable:
        assert result["targets"]["met"] is None     # the targets are the splice row's
