"""The scaling-fit figure: the runs with the fitted law, loss vs compute with the frontier, and the allocation.

Panels: (1) loss vs N, runs coloured by tokens, the law's curve for each
token count; (2) loss vs C (the report's one definition: 6ND or the measured
FLOPs) with the compute-optimal frontier; (3)
N_opt(C) and D_opt(C), with the isoFLOP optima when there are any; (4) only
with isoFLOP budgets: loss vs N per budget and its parabola.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from pretrax import storage
from pretrax.scaling.fit import Law
from pretrax.scaling.results import Points


def plot_fit(points: Points, report: dict[str, Any], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    law = Law(*(report[k] for k in ("E", "A", "B", "alpha", "beta")))
    iso = report["isoflop"]
    if iso:
        fig, axes = plt.subplots(2, 2, figsize=(11.5, 9.0), dpi=110)
        axes = axes.ravel()
    else:
        fig, axes = plt.subplots(1, 3, figsize=(16.5, 4.6), dpi=110)
    norm = LogNorm(points.D.min(), points.D.max() * (1.0001 if points.D.min() == points.D.max() else 1))
    cmap = plt.get_cmap("viridis")

    ax = axes[0]
    n_line = np.geomspace(points.N.min() / 2, points.N.max() * 2, 100)
    for D in _few(np.unique(points.D)):
        ax.plot(n_line, law.loss(n_line, D), color=cmap(norm(D)), lw=1, alpha=0.8)
    sc = ax.scatter(points.N, points.L, c=points.D, cmap=cmap, norm=norm, edgecolor="k", lw=0.4, zorder=3)
    fig.colorbar(sc, ax=ax, label="tokens D")
    ax.set(xscale="log", xlabel=f"parameters N ({points.n_column})", ylabel="held-out loss",
           title="runs and the fitted law")

    ax = axes[1]
    budgets = [o["flops"] for o in report["optimal"]]
    c_line = np.geomspace(min(points.C.min(), min(budgets)) / 2, max(points.C.max(), max(budgets)) * 2, 100)
    bounded = law.alpha > 0 and law.beta > 0  # else the optimum is unbounded and there is no frontier
    n_opt, d_opt = law.optimal(c_line, points.k) if bounded else (c_line * np.nan, c_line * np.nan)
    c_label = "6ND" if points.compute == "6nd" else "measured"
    ax.scatter(points.C, points.L, c=points.D, cmap=cmap, norm=norm, edgecolor="k", lw=0.4, zorder=3)
    if bounded:
        ax.plot(c_line, law.loss(n_opt, d_opt), color="crimson", lw=2, label="compute-optimal frontier")
    ax.axhline(law.E, color="gray", ls=":", lw=1, label=f"E = {law.E:.3g}")
    ax.set(xscale="log", xlabel=f"training compute C = {c_label} (FLOPs)", ylabel="held-out loss",
           title="loss vs compute")
    ax.legend(fontsize=8)

    ax = axes[2]
    if bounded:
        ax.plot(c_line, n_opt, color="crimson", lw=2, label="N_opt (approach 3)")
        ax.plot(c_line, d_opt, color="navy", lw=2, label="D_opt (approach 3)")
        ax.scatter(budgets, [o["params"] for o in report["optimal"]], color="crimson", s=18, zorder=3)
        ax.scatter(budgets, [o["tokens"] for o in report["optimal"]], color="navy", s=18, zorder=3)
    if iso:
        found = [b for b in iso["budgets"] if b["params_opt"] is not None]
        ax.scatter([b["flops"] for b in found], [b["params_opt"] for b in found], marker="s", color="orange",
                   edgecolor="k", zorder=4, label="N_opt (isoFLOP)")
    ax.set(xscale="log", yscale="log", xlabel=f"training compute C = {c_label} (FLOPs)", ylabel="parameters / tokens",
           title="compute-optimal allocation")
    ax.legend(fontsize=8)

    if iso:
        ax = axes[3]
        colors = plt.get_cmap("plasma")(np.linspace(0.1, 0.85, len(iso["budgets"])))
        for b, color in zip(iso["budgets"], colors):
            mine = np.abs(np.log(points.C / b["flops"])) <= np.log(1.1)
            ax.scatter(points.N[mine], points.L[mine], color=color, edgecolor="k", lw=0.4, zorder=3,
                       label=f"C = {b['flops']:.2g}")
            x = np.linspace(*np.log(b["params_range"]), 60)  # the parabola over the sizes tried
            ax.plot(np.exp(x), np.polyval(b["parabola"], x), color=color, lw=1)
            if b["params_opt"] is not None:
                ax.axvline(b["params_opt"], color=color, ls="--", lw=1)
        ax.set(xscale="log", xlabel="parameters N", ylabel="held-out loss", title="isoFLOP profiles (approach 2)")
        ax.legend(fontsize=8)

    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    storage.write_bytes(out, png.getvalue())  # local (folders made) or gs://
    return out


def _few(values: np.ndarray, most: int = 6) -> np.ndarray:
    return values if len(values) <= most else values[np.linspace(0, len(values) - 1, most).round().astype(int)]
