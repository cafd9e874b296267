"""The figures of `vtl bench vtl --plot DIR`, drawn from one run's JSON.

fig8.png: negotiation delay per graft (precompiled, compiled from source, source with a warm
cache) against the issue's target, and the object sizes beside the paper's Table IV.
fig9.png: file completion time of each graft and of kernel TCP for each loss rate, and the
same relative to TCP. fig10.png: link throughput over time while the RTT rises, with and
without the monitor's switch. The paper's Fig. 8-10 are images whose values its text does
not give; Table IV's sizes are the paper's numbers shown here.

matplotlib is imported only here, when a plot is asked for: the rest of vtlstack runs
without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vtlstack.errors import VtlError

# VTL paper, Table IV: object file size (egress + ingress), KB.
PAPER_OBJECT_KB = {"gbn": 40.3, "sr": 40.5, "pr": 42.3}
STYLE = {"sr": ("tab:blue", "o"), "gbn": ("tab:orange", "s"), "pr": ("tab:green", "^"),
         "tcp": ("black", "x"), "gbn->pr": ("tab:green", None)}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise VtlError("--plot needs matplotlib, which is not installed: "
                       "pip install matplotlib (it is in requirements-dev.txt)") from None
    matplotlib.use("Agg")   # files only, no display
    import matplotlib.pyplot as plt

    return plt


def check() -> None:
    """Fail now, not after a long benchmark, when plots cannot be drawn."""
    _pyplot()


def plot_all(out: dict[str, Any], outdir: Path) -> list[Path]:
    """Write the figures the run has data for; returns their paths."""
    plt = _pyplot()
    outdir.mkdir(parents=True, exist_ok=True)
    pngs = []
    for key, draw, name in (("negotiation", _fig8, "fig8.png"), ("fct", _fig9, "fig9.png"),
                            ("fig10", _fig10, "fig10.png")):
        if out.get(key):
            fig = draw(plt, out)
            fig.savefig(outdir / name, dpi=90)
            plt.close(fig)
            pngs.append(outdir / name)
    return pngs


def _fig8(plt: Any, out: dict[str, Any]) -> Any:
    nego = out["negotiation"]
    grafts = list(nego)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.27
    for i, (key, label) in enumerate((("precompiled_ms", "precompiled object"),
                                      ("source_ms", "source, compiled"),
                                      ("source_cached_ms", "source, cached"))):
        ax.bar([x + (i - 1) * width for x in range(len(grafts))],
               [nego[g][key] for g in grafts], width, label=label)
    target = 2 * out["rtt_ms"] + 20
    top = max(max(v for k, v in nego[g].items() if k.endswith("_ms")) for g in grafts)
    ax.set_ylim(0, 1.4 * max(top, target))   # room for the legend above the bars
    ax.axhline(target, color="red", ls="--", lw=1, label=f"target 2 RTT + 20 ms = {target:g}")
    ax.set_xticks(range(len(grafts)), grafts)
    ax.set_ylabel("negotiation delay, ms (median)")
    ax.set_title(f"Fig. 8: negotiation, RTT {out['rtt_ms']:g} ms")
    ax.legend(fontsize=8)
    ours = [nego[g]["object_bytes"] / 1e3 for g in grafts]
    paper = [PAPER_OBJECT_KB.get(g, 0) for g in grafts]
    bx.bar([x - 0.2 for x in range(len(grafts))], ours, 0.4, label="ours (one object)")
    bx.bar([x + 0.2 for x in range(len(grafts))], paper, 0.4, label="paper, Table IV")
    bx.set_xticks(range(len(grafts)), grafts)
    bx.set_ylim(0, 1.35 * max(ours + paper))
    bx.set_ylabel("object file, KB")
    bx.set_title("Table IV: graft object size")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _fig9(plt: Any, out: dict[str, Any]) -> Any:
    rows = out["fct"]
    losses = sorted({r["loss_pct"] for r in rows})
    names = [g for g in ("sr", "gbn", "pr", "tcp") if any(r["graft"] == g for r in rows)]
    fig, axes = plt.subplots(2, len(losses), figsize=(3.6 * len(losses), 6.4), squeeze=False)
    for col, loss in enumerate(losses):
        at = {(r["graft"], r["size_mb"]): r["fct_s"] for r in rows if r["loss_pct"] == loss}
        sizes = sorted({mb for _, mb in at})
        top, bottom = axes[0][col], axes[1][col]
        for g in names:
            color, marker = STYLE[g]
            xs = [mb for mb in sizes if (g, mb) in at]
            top.plot(xs, [at[g, mb] for mb in xs], color=color, marker=marker, label=g)
            if g != "tcp":
                xs = [mb for mb in xs if ("tcp", mb) in at]
                bottom.plot(xs, [at[g, mb] / at["tcp", mb] for mb in xs], color=color,
                            marker=marker, label=g)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [f"{mb:g}" for mb in sizes])
            ax.set_xlabel("file, MB")
        ratios = [at[g, mb] / at["tcp", mb] for g in names if g not in ("tcp", "gbn")
                  for mb in sizes if (g, mb) in at and ("tcp", mb) in at]
        # GBN under loss runs far above: off the chart; SR and PR always on it.
        bottom.set_ylim(min([0.8, *[0.9 * r for r in ratios]]), 1.3)
        top.set_yscale("log")
        top.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        top.yaxis.set_minor_formatter(plt.NullFormatter())
        top.set_title(f"loss {loss:g} %")
        bottom.axhline(1.0, color="black", lw=1)
    axes[0][0].set_ylabel("FCT, s")
    axes[1][0].set_ylabel("FCT / TCP's FCT (below 1: faster)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Fig. 9: file completion time, {out['rate_mbit']:g} Mbit/s, "
                 f"RTT {out['rtt_ms']:g} ms, kernel TCP CUBIC alongside")
    fig.tight_layout()
    return fig


def _fig10(plt: Any, out: dict[str, Any]) -> Any:
    f10 = out["fig10"]
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, run in f10["runs"].items():
        color = STYLE[name][0]
        label = {"gbn": "Go-Back-N", "gbn->pr": "Go-Back-N, monitor rule rtt_ms>=300:gbn->pr",
                 "tcp": "kernel TCP (CUBIC)"}[name]
        if not run["finished"]:
            label += f" (stopped at {f10['watched_s']:g} s)"
        ax.plot(run["t_s"], run["mbit"], color=color, label=label, lw=1.4)
        if run.get("switch_at_s") is not None:
            ax.axvline(run["switch_at_s"], color=color, ls=":", lw=1)
            ax.annotate("switch to PR", (run["switch_at_s"], 0.5), color=color, fontsize=8,
                        xycoords=("data", "axes fraction"), rotation=90, va="center",
                        ha="left")
    low, high = f10["rtt_ms"]
    ax.axvline(f10["raised_at_s"], color="red", ls="--", lw=1)
    ax.annotate(f"RTT {low:g} -> {high:g} ms", (f10["raised_at_s"], 0.97), color="red",
                xycoords=("data", "axes fraction"), fontsize=8, rotation=90, va="top",
                ha="right")
    ax.set_xlabel("s since the first bytes")
    ax.set_ylabel("link throughput, Mbit/s")
    ax.set_title(f"Fig. 10: {f10['size_mb']:g} MB, {out['rate_mbit']:g} Mbit/s, RTT raised "
                 f"{f10['raised_at_s']:g} s in (the paper: 20 s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
