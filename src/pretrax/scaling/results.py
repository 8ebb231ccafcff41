"""Reading a results table (pretrax sweep's results.csv) into the arrays a fit needs, with one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import io
import math

import numpy as np

from pretrax import storage
from pretrax.errors import DataError

N_COLUMNS = {"non_embedding": "params_non_embedding", "total": "params"}
MIN_POINTS = 5  # the law has five free parameters (E, A, B, alpha, beta)


@dataclasses.dataclass(frozen=True)
class Points:
    """Finished runs: parameters N, tokens D, held-out loss L and training FLOPs C, one entry per run."""

    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    C: np.ndarray  # the flops column, or 6·N·D when the table has none
    n_column: str
    skipped: int  # rows whose status was not ok


def read_points(path: str, params: str = "non_embedding") -> Points:
    """The rows with status ok (every row when there is no status column) of a results CSV."""
    if params not in N_COLUMNS:
        raise DataError(f"params must be one of {', '.join(N_COLUMNS)}, got {params!r}")
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
        raise DataError(f"results file {path!r} lacks the column(s) {', '.join(missing)}; it needs {n_column}, "
                        f"tokens and eval_loss (and optionally flops and status), as pretrax sweep writes them")
    ok = [(i, r) for i, r in enumerate(rows, start=2) if r.get("status", "ok") == "ok"]  # line 1 is the header
    if len(ok) < MIN_POINTS:
        raise DataError(f"results file {path!r} has {len(ok)} finished run(s) (status ok); fitting "
                        f"L = E + A/N^alpha + B/D^beta needs at least {MIN_POINTS} (it has 5 free parameters)")
    use_flops = "flops" in columns and all(r["flops"] not in ("", None) for _, r in ok)
    values = {c: [] for c in (n_column, "tokens", "eval_loss") + (("flops",) if use_flops else ())}
    for line, row in ok:
        for column, out in values.items():
            out.append(_positive(path, line, column, row[column]))
    N, D, L = (np.array(values[c]) for c in (n_column, "tokens", "eval_loss"))
    if len(set(N)) < 2 or len(set(D)) < 2:
        raise DataError(f"results file {path!r}: the runs need at least 2 different {n_column} and 2 different "
                        f"tokens values to separate the two terms; got {len(set(N))} and {len(set(D))}")
    C = np.array(values["flops"]) if use_flops else 6.0 * N * D
    return Points(N, D, L, C, n_column, len(rows) - len(ok))


def _positive(path: str, line: int, column: str, text: str | None) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"results file {path!r} line {line}: {column} is {text!r}, not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise DataError(f"results file {path!r} line {line}: {column} is {text!r}; it must be a positive number")
    return value
