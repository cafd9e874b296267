"""`vtl bench vtl --plot`: the figures drawn from a run's JSON (no root, no testbed)."""

import builtins
import copy

import pytest
from vtlstack.apps import _vtlplot

from vtlstack.errors import VtlError

RUN = {
    "rate_mbit": 16.0, "rtt_ms": 10.0,
    "negotiation": {g: {"precompiled_ms": 14.0, "source_ms": 90.0, "source_cached_ms": 14.5,
                        "object_bytes": 50_000} for g in ("sr", "gbn", "pr")},
    "fct": [{"graft": g, "size_mb": mb, "loss_pct": loss, "fct_s": mb * 0.52}
            for g in ("sr", "gbn", "pr", "tcp") for mb in (1, 4) for loss in (0, 2)],
    "fig10": {"size_mb": 32.0, "rtt_ms": [20, 320], "raised_at_s": 5, "watched_s": 30,
              "runs": {name: {"t_s": [0.25, 0.5], "mbit": [15.0, 14.0], "finished": True,
                              "fct_s": 20.0, "grafts": [name], "switch_at_s": None}
                       for name in ("gbn", "gbn->pr", "tcp")}},
}


def test_every_figure_with_data_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    run = copy.deepcopy(RUN)
    run["fig10"]["runs"]["gbn->pr"]["switch_at_s"] = 5.6
    pngs = _vtlplot.plot_all(run, tmp_path / "plots")
    assert [p.name for p in pngs] == ["fig8.png", "fig9.png", "fig10.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Only the figures the run has data for.
    assert [p.name for p in _vtlplot.plot_all({**RUN, "fig10": None, "negotiation": {}},
                                              tmp_path / "some")] == ["fig9.png"]


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(VtlError, match="--plot needs matplotlib.*pip install matplotlib"):
        _vtlplot.check()
