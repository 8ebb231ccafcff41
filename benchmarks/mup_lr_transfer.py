"""Learning-rate transfer, sp vs mup: final eval loss vs learning rate per width, from a sweep's results.csv.

    python benchmarks/mup_lr_transfer.py runs/sweeps/mup_lr_transfer/results.csv --plot docs/figures/mup_lr_transfer.png
    python benchmarks/mup_lr_transfer.py runs/sweeps/mup_lr_transfer_long/results.csv \
        "runs/sweeps/mup_alpha_out_transfer/results.csv=mup, alpha_out 4" --plot docs/figures/mup_lr_transfer_long.png

Prints, per parametrization and width, the best learning rate and its loss, and how many grid
steps (factors of 2) the best learning rate moves across the widths.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict


def load(path: str, kind: str = "mup") -> dict[tuple[str, int], list[tuple[float, float]]]:
    """{(parametrization, width): [(lr, loss)]}; `kind` names the parametrization of a sweep that fixed it
    in its overrides (then results.csv has no parametrization.kind column)."""
    curves: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok":
                continue
            loss = float(row["eval_loss"])
            key = (row.get("parametrization.kind") or kind, int(row["model.d_model"]))
            curves[key].append((float(row["optim.lr"]), loss if math.isfinite(loss) else float("nan")))
    return {k: sorted(v) for k, v in curves.items()}


def best(points: list[tuple[float, float]]) -> tuple[float, float]:
    finite = [(lr, loss) for lr, loss in points if math.isfinite(loss)]
    return min(finite, key=lambda p: p[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+",
                        help="results.csv files; PATH=LABEL labels the rows of a sweep that fixed its "
                             "parametrization in its overrides (no parametrization.kind column)")
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    curves: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for spec in args.results:
        path, _, label = spec.partition("=")
        curves.update(load(path, label or "mup"))
    kinds = list(dict.fromkeys(k for k, _ in curves))  # panels in the order the files name them
    for kind in kinds:
        widths = sorted(w for k, w in curves if k == kind)
        optima = [best(curves[(kind, w)]) for w in widths]
        for w, (lr, loss) in zip(widths, optima):
            print(f"{kind}: width {w:5d}: best lr {lr:.2e}, eval loss {loss:.4f}")
        shift = math.log2(max(lr for lr, _ in optima) / min(lr for lr, _ in optima))
        print(f"{kind}: best lr moves {shift:.0f} grid step(s) (x2 each) across widths {widths}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        titles = {"sp": "standard parametrization", "mup": "muP"}
        fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), sharey=True, squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for w in sorted(w for k, w in curves if k == kind):
                lrs, losses = zip(*curves[(kind, w)])
                line, = ax.plot(lrs, losses, marker="o", label=f"width {w}")
                lr, loss = best(curves[(kind, w)])
                ax.plot([lr], [loss], marker="*", markersize=14, color=line.get_color())
            ax.set_xscale("log", base=2)
            ax.set_xlabel("learning rate")
            ax.set_title(titles.get(kind, kind))
            ax.legend()
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("held-out loss (nats/token)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
