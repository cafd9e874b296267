"""Graft manifests and the service -> graft rules (no root)."""

import pytest

from vtlstack._resources import data_dir
from vtlstack.vtl.grafts import GraftError, Services, load_pool, select


def names(want, pool=None):
    return [g.name for g in select(pool or load_pool(), want)]


def test_shipped_pool():
    pool = load_pool()
    assert sorted(pool) == ["canonical", "gbn", "pr", "sr"]
    assert {g.name: g.id for g in pool.values()} == {"canonical": 0, "gbn": 1, "sr": 2, "pr": 3}
    assert pool["pr"].max_loss == pytest.approx(0.1)


def test_services_pick_grafts_never_the_reverse():
    assert names(Services(reliable=True, ordered=True)) == ["sr", "gbn"]
    assert names(Services(max_loss=0.1)) == ["pr", "sr", "gbn"]
    assert names(Services(max_loss=0.1, ordered=True)) == ["pr", "sr", "gbn"]
    assert names(Services(max_loss=0.05)) == ["sr", "gbn"]      # PR's 10 % is too much
    assert names(Services()) == ["canonical", "pr", "sr", "gbn"]


def test_bad_services():
    with pytest.raises(ValueError, match="max_loss"):
        Services(max_loss=1.5)
    with pytest.raises(ValueError, match="one or the other"):
        Services(reliable=True, max_loss=0.2)


@pytest.mark.parametrize("text, match", [
    ("name = 'x'", "missing"),
    ("name = [", "not valid TOML"),
    ("""name = "gbn"\nid = 3\nversion = "1"\nobject = "o"\nservices = {}\n
        ktfs = { ingress = "a", egress = "b" }""", "vtl.h says 1"),
    ("""name = "gbn"\nid = 1\nversion = "1"\nobject = "o"\nservices = {}\n
        ktfs = { ingress = "a", egress = "b" }\n[qos]\nwindow = 1025""", "window 1025"),
])
def test_bad_manifests(tmp_path, text, match):
    (tmp_path / "canonical.toml").write_text((data_dir("grafts") / "canonical.toml").read_text())
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(GraftError, match=match):
        load_pool(tmp_path)


def test_pool_needs_canonical(tmp_path):
    with pytest.raises(GraftError, match="no canonical"):
        load_pool(tmp_path)


def test_vtl_grafts_lists_the_pool(capsys):
    import json

    from vtlstack.apps import grafts

    assert grafts.run(None) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["canonical", "gbn", "pr", "sr"]
    assert all(r["precompiled"] and r["object_bytes"] > 0 for r in rows)
    assert rows[2]["services"] == {"integrity": True, "reliable": False, "ordered": True,
                                   "max_loss": 0.1}
