"""`vtl bench vtl --repeat`: how a Fig. 9 cell is reduced to one row (no root)."""

from vtlstack.apps.vtlbench import _fig9_row


def _run(fct: float, retransmitted: int, intact: bool = True) -> dict:
    return {"fct_s": fct, "mbit": 8 / fct, "lost_packets": 0, "intact": intact,
            "retransmitted": retransmitted, "timeouts": 0, "frames_held_peak": 32}


def test_a_cell_reports_the_median_run_with_its_own_counters():
    row = _fig9_row("sr", 4.0, 2.0, [_run(2.3, 30), _run(2.1, 10), _run(2.2, 20)])
    assert row["fct_s"] == 2.2 and row["retransmitted"] == 20
    assert row["fct_runs_s"] == [2.3, 2.1, 2.2]
    assert (row["graft"], row["size_mb"], row["loss_pct"]) == ("sr", 4.0, 2.0)
    assert row["intact"]


def test_one_damaged_run_marks_the_cell_not_intact():
    row = _fig9_row("gbn", 1.0, 5.0, [_run(1.0, 5), _run(1.1, 6, intact=False), _run(0.9, 4)])
    assert not row["intact"]
    assert row["fct_s"] == 1.0


def test_a_single_run_is_its_own_median():
    row = _fig9_row("tcp", 1.0, 0.0, [_run(0.55, 0)])
    assert row["fct_s"] == 0.55 and row["fct_runs_s"] == [0.55]
