"""Reading a results table (pretrax sweep's results.csv) into the arrays a fit needs, with one-line errors.

Two conventions are chosen here, once, so every number of a report shares them:
N (`--params`: total parameters as Chinchilla counts them, the default, or
Kaplan's non-embedding count) and compute C (`--compute`: 6·N·D, Chinchilla's
approximation and the default, or the table's flops column).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

import numpy as np

from pretrax import storage
from pretrax.errors import ConfigError, DataError

N_COLUMNS = {"total": "params", "non_embedding": "params_non_embedding"}  # --params: the column that is N
COMPUTE = ("6nd", "measured")  # --compute: C = 6·N·D, or the flops column
MIN_POINTS = 5  # the law has five free parameters (E, A, B, alpha, beta)


@dataclasses.dataclass(frozen=True)
class Points:
    """Finished runs: parameters N, tokens D, held-out loss L and training FLOPs C, one entry per run."""

    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    C: np.ndarray  # training FLOPs under `compute`: 6·N·D, or the flops column
    n_column: str
    skipped: int  # rows whose status was not ok
    compute: str = "6nd"
    # FLOPs per parameter per token, k in C = k·N·D: 6, or (measured) the runs' geometric mean, so that the
    # compute-optimal split is solved in the same units as the budgets and the isoFLOP groups
    k: float = 6.0
    k_range: tuple[float, float] = (6.0, 6.0)  # the smallest and largest flops / (N·D) over the runs


def check_conventions(params: str, compute: str) -> None:
    """--params and --compute, refused in one line before any file is read."""
    if params not in N_COLUMNS:
        raise ConfigError(f"--params must be one of {', '.join(N_COLUMNS)} (total: Chinchilla's N, all "
                          f"parameters; non_embedding: Kaplan's), got {params!r}")
    if compute not in COMPUTE:
        raise ConfigError(f"--compute must be one of {', '.join(COMPUTE)} (6nd: C = 6·N·D, Chinchilla's "
                          f"approximation; measured: the results file's flops column), got {compute!r}")


def read_points(path: str, params: str = "total", compute: str = "6nd") -> Points:
    """The rows with status ok (every row when there is no status column) of a results CSV."""
    check_conventions(params, compute)
    n_column = N_COLUMNS[params]
    storage.check_url(path, "results file")  # a sweep dir in a bucket: gs://.../results.csv reads as well
    if not storage.isfile(path):
        raise DataError(f"results file {path!r} does not exist (pretrax sweep writes DIR/results.csv)")
    try:
        text = storage.read_text(path)
    except UnicodeDecodeError:
        raise DataError(f"results file {path!r} is not UTF-8 text; give the results.csv pretrax sweep wrote") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    rows = list(reader)
    missing = [c for c in (n_column, "tokens", "eval_loss") if c not in columns]
    if missing:
        raise DataError(f"results file {path!r} lacks the column(s) {', '.join(missing)}; it needs {n_column} "
                        f"(--params {params}), tokens and eval_loss (and optionally flops and status), as pretrax "
                        f"sweep writes them")
    if compute == "measured" and "flops" not in columns:
        raise DataError(f"results file {path!r} has no flops column for --compute measured; use --compute 6nd")
    ok = [(i, r) for i, r in enumerate(rows, start=2) if r.get("status", "ok") == "ok"]  # line 1 is the header
    if len(ok) < MIN_POINTS:
        raise DataError(f"results file {path!r} has {len(ok)} finished run(s) (status ok); fitting "
                        f"L = E + A/N^alpha + B/D^beta needs at least {MIN_POINTS} (it has 5 free parameters)")
    use_flops = compute == "measured"  # then every finished run needs its flops (a blank one is refused below)
    values = {c: [] for c in (n_column, "tokens", "eval_loss") + (("flops",) if use_flops else ())}
    for line, row in ok:
        for column, out in values.items():
            out.append(_positive(path, line, column, row[column]))
    N, D, L = (np.array(values[c]) for c in (n_column, "tokens", "eval_loss"))
    if len(set(N)) < 2 or len(set(D)) < 2:
        raise DataError(f"results file {path!r}: the runs need at least 2 different {n_column} and 2 different "
                        f"tokens values to separate the two terms; got {len(set(N))} and {len(set(D))}")
    if not use_flops:
        return Points(N, D, L, 6.0 * N * D, n_column, len(rows) - len(ok))
    C = np.array(values["flops"])
    ratio = C / (N * D)
    k = float(np.exp(np.log(ratio).mean()))
    return Points(N, D, L, C, n_column, len(rows) - len(ok), compute, k, (float(ratio.min()), float(ratio.max())))


def _positive(path: str, line: int, column: str, text: str | None) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"results file {path!r} line {line}: {column} is {text!r}, not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise DataError(f"results file {path!r} line {line}: {column} is {text!r}; it must be a positive number")
    return value
