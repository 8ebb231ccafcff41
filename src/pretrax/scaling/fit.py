"""Chinchilla approach 3 (Hoffmann et al. 2022, appendix D.2): fit L(N, D) = E + A/N^alpha + B/D^beta.

The fit works in log space with a = log A, b = log B, e = log E, so that

    log L_hat = LSE(a - alpha log N, b - beta log D, e)

and minimises the sum over runs of Huber_delta(log L_hat - log L), delta =
1e-3: robust to a few bad runs, and relative errors weigh the same at every
loss. L-BFGS-B starts from the paper's grid (alpha, beta in 0..2 by 0.5; e in
-1..1.5 by 0.5; a, b in 0..25 by 5). The objective is cheap, so it is
evaluated on the whole grid at once and only the best distinct starts are
refined: refining all 5400 gives the same minimum, much slower. Nothing
assumes the published constants (Epoch AI's refit, arXiv 2404.10102, found
others on the same data).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy.optimize import minimize

from threadpoolctl import threadpool_limits

HUBER_DELTA = 1e-3
GRID = {
    "a": np.arange(0.0, 26.0, 5.0),
    "b": np.arange(0.0, 26.0, 5.0),
    "e": np.arange(-1.0, 1.6, 0.5),
    "alpha": np.arange(0.0, 2.1, 0.5),
    "beta": np.arange(0.0, 2.1, 0.5),
}
ORDER = ("a", "b", "e", "alpha", "beta")  # the layout of a parameter vector theta
# exponents stay non-negative; E >= e^-10 keeps log E finite when the runs show no floor (then E is flagged)
BOUNDS = [(None, None), (None, None), (-10.0, None), (0.0, 5.0), (0.0, 5.0)]


@dataclasses.dataclass(frozen=True)
class Law:
    """L(N, D) = E + A/N^alpha + B/D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    def optimal(self, C, k: float = 6.0):
        """Compute-optimal (N, D) for training FLOPs C = k·N·D (Chinchilla eq. 4 has k = 6).

        Only the product N·D = C/k is fixed, so another k (FLOPs measured per
        parameter per token) moves the optimum along the same frontier.
        """
        nd = np.asarray(C, dtype=float) / k
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        return G * nd ** (self.beta / s), nd ** (self.alpha / s) / G

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Fit:
    law: Law
    objective: float  # the minimised Huber sum
    rms_log_residual: float  # sqrt(mean((log L_hat - log L)^2)): about the relative error of a prediction
    starts: int  # grid starts refined with L-BFGS-B
    undetermined: tuple[str, ...]  # E, alpha, beta at a bound, or the alpha / beta term below 0.1% of every loss
    theta: np.ndarray  # the minimiser (a, b, e, alpha, beta)


def objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray):
    """Huber sum and its gradient for a parameter vector, or for a (G, 5) stack of them (values only)."""
    theta = np.asarray(theta, dtype=float)
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))
    u = np.stack(np.broadcast_arrays(a - alpha * logN, b - beta * logD, e + 0 * logN), axis=-1)  # (..., n, 3)
    top = u.max(axis=-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(u - top).sum(axis=-1))
    r = lse - logL
    small = np.abs(r) <= HUBER_DELTA
    value = np.where(small, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)).sum(axis=-1)
    if theta.ndim > 1:
        return value
    dr = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # d Huber / d r
    w = np.exp(u - lse[..., None])  # softmax: d lse / d u
    grad = np.array([
        (dr * w[:, 0]).sum(), (dr * w[:, 1]).sum(), (dr * w[:, 2]).sum(),
        -(dr * w[:, 0] * logN).sum(), -(dr * w[:, 1] * logD).sum(),
    ])
    return value, grad


def grid_starts() -> np.ndarray:
    """The paper's grid of initialisations, as a (5400, 5) array in ORDER."""
    return np.array(list(itertools.product(*(GRID[k] for k in ORDER))))


def fit_law(N, D, L, *, starts: int = 16, extra_starts: np.ndarray | None = None) -> Fit:
    """Fit the law to runs (N parameters, D tokens, L loss) from the best `starts` grid points (and extra_starts)."""
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    logs = (np.log(N), np.log(D), np.log(L))
    grid = grid_starts()
    chosen = grid[np.argsort(objective(grid, *logs), kind="stable")[:starts]]
    if extra_starts is not None:
        chosen = np.vstack([np.atleast_2d(extra_starts), chosen])
    best = None
    with threadpool_limits(limits=1, user_api="blas"):  # L-BFGS-B's tiny LAPACK calls lose to thread hand-offs
        for theta0 in chosen:
            res = minimize(objective, theta0, args=logs, jac=True, method="L-BFGS-B", bounds=BOUNDS,
                           options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
    a, b, e, alpha, beta = best.x
    law = Law(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha), beta=float(beta))
    rms = float(np.sqrt(np.mean((np.log(law.loss(N, D)) - logs[2]) ** 2)))
    return Fit(law, float(best.fun), rms, len(chosen), _undetermined(best.x, law, N, D, L), best.x)


def _undetermined(theta: np.ndarray, law: Law, N, D, L) -> tuple[str, ...]:
    """Constants the runs do not pin down: stopped at a bound, or (alpha, beta) a term too small to matter."""
    near = [min(abs(v - lo) if lo is not None else np.inf, abs(hi - v) if hi is not None else np.inf) < 1e-3
            for v, (lo, hi) in zip(theta, BOUNDS)]
    share = {"alpha": np.max(law.A / N**law.alpha / L), "beta": np.max(law.B / D**law.beta / L)}
    flagged = ["E"] if near[2] else []
    return tuple(flagged + [k for k, i in (("alpha", 3), ("beta", 4)) if near[i] or share[k] < 1e-3])


def bootstrap(N, D, L, fit: Fit, *, resamples: int = 100, seed: int = 0, level: float = 0.95):
    """Percentile intervals of each constant over refits to runs resampled with replacement (seeded)."""
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(N), len(N))
        draws.append(fit_law(N[idx], D[idx], L[idx], starts=3, extra_starts=fit.theta).law.as_dict())
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {k: [float(np.percentile([d[k] for d in draws], lo)), float(np.percentile([d[k] for d in draws], hi))]
            for k in fit.law.as_dict()}
