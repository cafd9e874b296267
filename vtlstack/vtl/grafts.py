"""Graft manifests (grafts/*.toml) and the rules that match services to grafts.

A manifest names the graft, its id (the index of its KTFs in the tail-call arrays, which
must be the one in bpf/include/vtl.h), its BPF object and KTF programs, the services it
provides (integrity, reliable, ordered, max_loss) and the QoS it suits. Applications ask
for services; ``select`` returns the grafts that provide them, best first.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtlstack._resources import data_dir
from vtlstack.errors import VtlError
from vtlstack.vtl.wire import GRAFT_IDS, C

__all__ = ["Graft", "Services", "GraftError", "GraftLoadError", "load_pool", "select"]


class GraftError(VtlError):
    """A manifest that is malformed or disagrees with vtl.h, or an unknown graft."""


class GraftLoadError(VtlError):
    """A graft whose object is missing, whose source does not compile, or that the
    verifier refused."""


@dataclass(frozen=True)
class Services:
    """What an application asks of the transport (never a protocol)."""

    reliable: bool = False
    ordered: bool = False
    max_loss: float = 1.0           # fraction of packets the application can lose
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_loss <= 1.0:
            raise ValueError(f"max_loss {self.max_loss}: a fraction in 0..1")
        if self.reliable and self.max_loss != 1.0 and self.max_loss > 0:
            raise ValueError("reliable=True means max_loss=0: ask for one or the other")

    @property
    def loss_allowed(self) -> float:
        return 0.0 if self.reliable else self.max_loss

    def as_dict(self) -> dict[str, Any]:
        return {"reliable": self.reliable, "ordered": self.ordered,
                "max_loss": self.max_loss, "max_latency_ms": self.max_latency_ms}


@dataclass(frozen=True)
class Graft:
    name: str
    id: int
    version: str
    description: str
    object: str
    ktfs: dict[str, str]
    integrity: bool
    reliable: bool
    ordered: bool
    max_loss: float
    rank: int = 9
    window: int = 32
    qos: dict[str, Any] = field(default_factory=dict)
    source: str | None = None       # the graft as C source, compiled on demand
    home: Path | None = None        # the manifest's directory (sources are found there)

    def provides(self, want: Services) -> bool:
        if want.reliable and not self.reliable:
            return False
        if want.ordered and not self.ordered:
            return False
        return self.max_loss <= want.loss_allowed


_REQUIRED = ("name", "id", "version", "object", "ktfs", "services")


def _parse(path: Path) -> Graft:
    try:
        m = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise GraftError(f"{path}: not valid TOML ({e})") from e
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise GraftError(f"{path}: missing {', '.join(missing)}")
    gid, name = m["id"], m["name"]
    if GRAFT_IDS.get(gid, "").lower() != name:
        raise GraftError(f"{path}: graft {name!r} has id {gid}, but vtl.h says "
                         f"{ {v.lower(): k for k, v in GRAFT_IDS.items()}.get(name, 'none') }")
    s, q = m["services"], m.get("qos", {})
    window = int(q.get("window", 32))
    if not 1 <= window <= C.VTL_MAX_WINDOW:
        raise GraftError(f"{path}: window {window} outside 1..{C.VTL_MAX_WINDOW} (the "
                         f"width of the KTFs' receive bitmap)")
    ktfs = m["ktfs"]
    if set(ktfs) != {"ingress", "egress"}:
        raise GraftError(f"{path}: ktfs must name an ingress and an egress program")
    return Graft(name=name, id=gid, version=str(m["version"]),
                 description=m.get("description", ""), object=m["object"], ktfs=dict(ktfs),
                 integrity=bool(s.get("integrity", True)), reliable=bool(s.get("reliable")),
                 ordered=bool(s.get("ordered")), max_loss=float(s.get("max_loss", 1.0)),
                 rank=int(q.get("rank", 9)), window=window, qos=dict(q),
                 source=m.get("source"), home=path.parent)


def load_pool(directory: Path | None = None) -> dict[str, Graft]:
    """Every manifest in the pool directory (the shipped grafts by default), by name.
    A manifest names a precompiled ``object``, a ``source`` to compile on demand, or
    both (the object is used when it is there)."""
    directory = directory or data_dir("grafts")
    pool: dict[str, Graft] = {}
    for path in sorted(directory.glob("*.toml")):
        g = _parse(path)
        if g.name in pool:
            raise GraftError(f"{path}: a second graft named {g.name!r}")
        pool[g.name] = g
    if "canonical" not in pool:
        raise GraftError(f"{directory}: no canonical graft, which negotiation needs")
    return pool


def select(pool: dict[str, Graft], want: Services) -> list[Graft]:
    """Grafts providing `want`, best first: the ones that spend least on services not
    asked for (a higher loss allowance) first, then by the manifest's rank."""
    fit = [g for g in pool.values() if g.provides(want)]
    return sorted(fit, key=lambda g: (-g.max_loss, g.rank, g.name))
