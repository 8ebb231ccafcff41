"""Chinchilla approach 2: isoFLOP profiles. At each compute budget, the size that reaches the lowest loss.

Runs whose training FLOPs agree within 10% form one budget. A budget with at
least three different model sizes gets a parabola of loss vs log N; its
vertex is that budget's optimal N. With two or more such optima, a line
through log N_opt vs log C gives N_opt = k·C^a (Chinchilla found a ~ 0.5).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SAME_BUDGET = 0.10  # runs within 10% of a budget's smallest FLOPs count as that budget
MIN_SIZES = 3  # a parabola has three coefficients


@dataclasses.dataclass(frozen=True)
class Budget:
    flops: float  # geometric mean of the group's FLOPs
    runs: int
    sizes: int  # distinct N
    n_opt: float | None  # None: the parabola opens downward (no minimum)
    loss_opt: float | None
    inside: bool  # the minimum lies within the sizes tried (else it is an extrapolation)
    coefficients: tuple[float, float, float]  # loss = c0·x^2 + c1·x + c2, x = log N
    n_range: tuple[float, float]  # smallest and largest N tried


@dataclasses.dataclass(frozen=True)
class IsoFlop:
    budgets: list[Budget]
    exponent: float | None  # a in N_opt = k·C^a, from the budgets with a minimum (needs two)
    coefficient: float | None  # k


def group_by_flops(C: np.ndarray) -> list[np.ndarray]:
    """Indices of runs grouped by compute: sorted, a new group when 10% above the current group's first."""
    order = np.argsort(C, kind="stable")
    groups, current = [], [order[0]]
    for i in order[1:]:
        if C[i] <= C[current[0]] * (1 + SAME_BUDGET):
            current.append(i)
        else:
            groups.append(np.array(current))
            current = [i]
    groups.append(np.array(current))
    return groups


def isoflop_fit(N, C, L) -> IsoFlop | None:
    """Per-budget parabola minima and their power law; None when no budget has three sizes."""
    N, C, L = (np.asarray(x, dtype=float) for x in (N, C, L))
    budgets = []
    for idx in group_by_flops(C):
        sizes = len(set(N[idx]))
        if sizes < MIN_SIZES:
            continue
        x = np.log(N[idx])
        c0, c1, c2 = np.polyfit(x, L[idx], 2)
        flops = float(np.exp(np.log(C[idx]).mean()))
        shape = {"coefficients": (float(c0), float(c1), float(c2)),
                 "n_range": (float(N[idx].min()), float(N[idx].max()))}
        if c0 <= 0:
            budgets.append(Budget(flops, len(idx), sizes, None, None, False, **shape))
            continue
        x_opt = -c1 / (2 * c0)
        budgets.append(Budget(flops, len(idx), sizes, float(np.exp(x_opt)), float(c2 - c1**2 / (4 * c0)),
                              bool(x.min() <= x_opt <= x.max()), **shape))
    if not budgets:
        return None
    found = [b for b in budgets if b.n_opt is not None]
    exponent = coefficient = None
    if len(found) >= 2:
        a, log_k = np.polyfit(np.log([b.flops for b in found]), np.log([b.n_opt for b in found]), 1)
        exponent, coefficient = float(a), float(np.exp(log_k))
    return IsoFlop(budgets, exponent, coefficient)
