"""A sweep's results: one row per point, in DIR/results.csv (what `pretrax scaling fit` reads).

results.csv can have several writers (workers on many machines, --collect),
and object storage has no append, rename or lock: a worker that read the
table, added its row and wrote it back could erase a row another worker
added meanwhile. So each worker writes its own point's row to its own
object, DIR/results/POINT.json, and results.csv is only ever rebuilt: the
old table's rows, then every results/*.json over them. A rebuild can miss a
row written after it listed results/, but never loses one for good: the row
stays in its object, and every worker rebuilds the table again when it sees
every point finished, after every row was written. Rows of points no longer
in the grid are kept.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from pretrax import storage
from pretrax.errors import DataError
from pretrax.sweeps.grid import Sweep

RESULT_COLUMNS = ("params", "params_non_embedding", "tokens", "flops", "eval_loss", "eval_bits_per_byte", "status",
                  "run_dir")


def results_path(sweep: Sweep) -> str:
    return storage.join(sweep.dir, "results.csv")


def rows_dir(sweep: Sweep) -> str:
    return storage.join(sweep.dir, "results")


def read_rows(path: str) -> dict[str, dict[str, str]]:
    """An earlier results.csv as {point name: row}; empty when there is none."""
    if not storage.isfile(path):
        return {}
    reader = csv.DictReader(io.StringIO(storage.read_text(path), newline=""))
    if "point" not in (reader.fieldnames or []):
        raise DataError(f"{path} has no 'point' column, so it was not written by pretrax sweep; "
                        "move it away or give the sweep another dir")
    return {row["point"]: row for row in reader}


def write_rows(path: str, sweep: Sweep, rows: dict[str, dict[str, Any]]) -> None:
    """One row per point, grid order first; replaced whole (never half written)."""
    names = [p.name for p in sweep.points]
    order = [n for n in names if n in rows] + [n for n in rows if n not in names]
    keys = list(sweep.keys)
    for row in rows.values():  # swept keys of older grids, kept with their rows
        keys += [k for k in row if k not in keys and k != "point" and k not in RESULT_COLUMNS]
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, ["point", *keys, *RESULT_COLUMNS], restval="", extrasaction="ignore")
    writer.writeheader()
    for name in order:
        writer.writerow(rows[name])
    storage.write_text(path, out.getvalue())


def write_point_row(sweep: Sweep, row: dict[str, Any], **about: Any) -> None:
    """A worker's row for its point, in the point's own object (only the point's owner writes it).

    `about` (attempt, start step, worker) is kept beside the row, not in results.csv.
    """
    url = storage.join(rows_dir(sweep), row["point"] + ".json")
    storage.write_text(url, json.dumps({"row": row, **about}, indent=1) + "\n")


def point_rows(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """Every results/POINT.json, by point name."""
    rows = {}
    for name in storage.listdir(rows_dir(sweep)):
        if name.endswith(".json") and not name.startswith("."):  # not a temporary file of a write
            row = json.loads(storage.read_text(storage.join(rows_dir(sweep), name)))["row"]
            rows[row["point"]] = row
    return rows


def rebuild(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """results.csv from its earlier rows and every point's own row object; returns the rows."""
    path = results_path(sweep)
    rows: dict[str, dict[str, Any]] = {**read_rows(path), **point_rows(sweep)}
    write_rows(path, sweep, rows)
    return rows
