"""`pretrax scaling fit`: the fit, its intervals, the compute-optimal rows and the isoFLOP view, as JSON or text.

One definition of compute C (points.compute) holds for every number in a
report: the compute-optimal rows, the default budgets and the isoFLOP
grouping; the report states it first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pretrax.scaling.fit import HUBER_DELTA, Law, bootstrap, fit_law
from pretrax.scaling.isoflop import isoflop_fit
from pretrax.scaling.results import N_COLUMNS, Points

CONSTANTS = ("E", "A", "B", "alpha", "beta")


def default_budgets(C: np.ndarray) -> list[float]:
    """Powers of ten from the sweep's smallest run to a hundred times its largest (at most six)."""
    low, high = math.ceil(math.log10(C.min())), math.floor(math.log10(C.max())) + 2
    return [10.0**k for k in range(max(low, high - 5), high + 1)]


def optimal_rows(law: Law, budgets: list[float], k: float = 6.0) -> list[dict[str, float | None]]:
    """N_opt, D_opt and their loss per budget C = k·N·D; None where an exponent is 0 (the optimum is unbounded)."""
    rows = []
    for C in budgets:
        if not (law.alpha > 0 and law.beta > 0):
            rows.append({"flops": C, "params": None, "tokens": None, "tokens_per_param": None, "loss": None})
            continue
        N, D = law.optimal(C, k)
        rows.append({"flops": C, "params": float(N), "tokens": float(D), "tokens_per_param": float(D / N),
                     "loss": float(law.loss(N, D))})
    return rows


def analyse(points: Points, budgets: list[float] | None = None, *, resamples: int = 100,
            seed: int = 0) -> dict[str, Any]:
    """Everything `scaling fit` reports, as one JSON-ready object."""
    fit = fit_law(points.N, points.D, points.L)
    intervals = bootstrap(points.N, points.D, points.L, fit, resamples=resamples, seed=seed) if resamples else {}
    budgets = budgets or default_budgets(points.C)
    iso = isoflop_fit(points.N, points.C, points.L)
    out: dict[str, Any] = {**fit.law.as_dict(), "intervals": intervals,
                           "optimal": optimal_rows(fit.law, budgets, points.k), "compute": compute_definition(points)}
    out["fit"] = {"runs": len(points.N), "skipped_not_ok": points.skipped, "params_column": points.n_column,
                  "params": next(k for k, c in N_COLUMNS.items() if c == points.n_column),
                  "huber_delta": HUBER_DELTA, "objective": fit.objective, "rms_log_residual": fit.rms_log_residual,
                  "starts": fit.starts, "undetermined": list(fit.undetermined), "bootstrap_resamples": resamples,
                  "seed": seed, "interval_level": 0.95}
    out["isoflop"] = None if iso is None else {
        "budgets": [{"flops": b.flops, "runs": b.runs, "sizes": b.sizes, "params_opt": b.n_opt,
                     "loss_opt": b.loss_opt, "inside_sampled_sizes": b.inside, "parabola": list(b.coefficients),
                     "params_range": list(b.n_range)} for b in iso.budgets],
        "exponent": iso.exponent, "coefficient": iso.coefficient,
    }
    return out


def compute_definition(points: Points) -> dict[str, Any]:
    """The report's one definition of C, in words and as k in C = k·N·D (the optimum's units)."""
    if points.compute == "6nd":
        text = "C = 6·N·D (Chinchilla's approximation)"
    else:
        lo, hi = points.k_range
        text = (f"C = the flops column (each run's model FLOPs; the optimum solves C = k·N·D with k = "
                f"{points.k:.4g}, the runs' geometric mean, {lo:.4g} to {hi:.4g})")
    return {"convention": points.compute, "definition": text, "flops_per_param_token": points.k,
            "flops_per_param_token_range": list(points.k_range),
            "used_for": ["compute-optimal N and D", "budgets", "isoFLOP grouping"]}


def format_report(r: dict[str, Any]) -> str:
    f = r["fit"]
    left_out = f"; {f['skipped_not_ok']} rows without status ok left out" if f["skipped_not_ok"] else ""
    n_words = {"params": "total parameters, the params column",
               "params_non_embedding": "non-embedding parameters, the params_non_embedding column"}
    lines = [f"L(N, D) = E + A/N^alpha + B/D^beta on {f['runs']} runs (N = {n_words[f['params_column']]}; "
             f"D = tokens{left_out})",
             f"compute: {r['compute']['definition']}, for the optimum, the budgets and the isoFLOP groups",
             (f"Huber (delta {f['huber_delta']:g}) on log loss, L-BFGS-B from the {f['starts']} best of the "
              f"paper's 5400 grid starts; rms log residual {f['rms_log_residual']:.4f}")]
    for k in CONSTANTS:
        iv = r["intervals"].get(k)
        shown = f"  [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else ""
        lines.append(f"  {k:<5} = {r[k]:<10.4g}{shown}".rstrip())
    if r["intervals"]:
        lines.append(f"  (95% bootstrap intervals, {f['bootstrap_resamples']} resamples of the runs, seed {f['seed']})")
    why = {"E": "it fell to its floor e^-10: the runs show no irreducible loss yet",
           "alpha": "at a bound of [0, 5], or its term is under 0.1% of every loss; vary N more",
           "beta": "at a bound of [0, 5], or its term is under 0.1% of every loss; vary D more"}
    for k in f["undetermined"]:
        lines.append(f"  warning: the runs do not determine {k} ({why[k]})")
    s = r["alpha"] + r["beta"]
    if r["optimal"] and r["optimal"][0]["params"] is None:
        lines.append("compute-optimal: undefined (a fitted exponent is 0: all compute would go to the other factor)")
        return "\n".join(lines + _isoflop_lines(r["isoflop"], _c_symbol(r)))
    lines.append(f"compute-optimal (C = {_c_symbol(r)}): N_opt ~ C^{r['beta'] / s:.3f}, D_opt ~ C^{r['alpha'] / s:.3f}")
    lines.append(f"  {'C':>10} {'N_opt':>10} {'D_opt':>10} {'D/N':>8} {'loss':>8}")
    for o in r["optimal"]:
        lines.append(f"  {o['flops']:>10.3g} {o['params']:>10.3g} {o['tokens']:>10.3g} "
                     f"{o['tokens_per_param']:>8.3g} {o['loss']:>8.4f}")
    return "\n".join(lines + _isoflop_lines(r["isoflop"], _c_symbol(r)))


def _c_symbol(r: dict[str, Any]) -> str:
    return "6ND" if r["compute"]["convention"] == "6nd" else "measured FLOPs"


def _isoflop_lines(iso: dict[str, Any] | None, c: str) -> list[str]:
    if iso is None:
        return [f"isoFLOP (approach 2): no budget has runs of 3 or more sizes within 10% of the same C = {c}"]
    lines = [f"isoFLOP (approach 2, runs grouped by C = {c}): parabola of loss vs log N per budget"]
    for b in iso["budgets"]:
        where = "" if b["inside_sampled_sizes"] else " (outside the sizes tried)"
        opt = (f"N_opt {b['params_opt']:.3g}, loss {b['loss_opt']:.4f}{where}" if b["params_opt"] is not None
               else "no minimum (the parabola opens downward)")
        lines.append(f"  {b['flops']:>10.3g} FLOPs, {b['runs']} runs, {b['sizes']} sizes: {opt}")
    if iso["exponent"] is not None:
        lines.append(f"  N_opt = {iso['coefficient']:.3g} * C^{iso['exponent']:.3f}")
    return lines
