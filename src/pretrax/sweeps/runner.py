"""Run a sweep's points one after another in this process, resumably, collecting DIR/results.csv.

A point recorded with status ok is skipped; any other point is trained with
train(), which resumes from the point's newest checkpoint when its run dir
has one (a sweep stopped mid-point continues that point, not from scratch).
A point that fails with a PretraxError is recorded as failed and the sweep
goes on; rerunning the sweep retries it. A preempted point (SIGTERM: train()
saves and returns early) stops the sweep unrecorded; rerunning resumes it. results.csv is rewritten after every
point through a temporary file and a rename, so it is never half written,
and rows of points no longer in the grid are kept.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from typing import Any

from pretrax.errors import DataError, PretraxError
from pretrax.sweeps.counts import point_counts
from pretrax.sweeps.grid import Point, Sweep
from pretrax.train.metrics import logged_rows

RESULT_COLUMNS = ("params", "params_non_embedding", "tokens", "flops", "eval_loss", "eval_bits_per_byte", "status",
                  "run_dir")


def results_path(sweep: Sweep) -> str:
    return os.path.join(sweep.dir, "results.csv")


def read_rows(path: str) -> dict[str, dict[str, str]]:
    """An earlier results.csv as {point name: row}; empty when there is none."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "point" not in (reader.fieldnames or []):
            raise DataError(f"{path} has no 'point' column, so it was not written by pretrax sweep; "
                            "move it away or give the sweep another dir")
        return {row["point"]: row for row in reader}


def write_rows(path: str, sweep: Sweep, rows: dict[str, dict[str, Any]]) -> None:
    """One row per point, grid order first; replaced atomically."""
    names = [p.name for p in sweep.points]
    order = [n for n in names if n in rows] + [n for n in rows if n not in names]
    keys = list(sweep.keys)
    for row in rows.values():  # swept keys of older grids, kept with their rows
        keys += [k for k in row if k not in keys and k != "point" and k not in RESULT_COLUMNS]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["point", *keys, *RESULT_COLUMNS], restval="", extrasaction="ignore")
        writer.writeheader()
        for name in order:
            writer.writerow(rows[name])
    os.replace(tmp, path)


def run_point(point: Point) -> tuple[dict[str, Any] | None, int]:
    """Train one point (or resume it): its results row (None if preempted), and the step it resumed from."""
    from pretrax.train.loop import train  # imported here: a dry run or --emit-jobs never needs it

    row: dict[str, Any] = {"point": point.name, **point.values, "run_dir": point.cfg.run.dir}
    try:
        row.update(point_counts(point.cfg))
        result = train(point.cfg, progress=False)
    except PretraxError as e:
        row["status"] = f"failed: {e}"
        return row, 0
    if result.get("preempted") or "eval" not in result:
        return None, result["start_step"]
    row.update(result["eval"], status="ok")
    return row, result["start_step"]


def run_sweep(sweep: Sweep, log: Callable[[str], None] = print) -> tuple[dict[str, dict[str, Any]], bool]:
    """Run every point not yet recorded ok; returns all rows by point name, and whether a preemption stopped it."""
    path = results_path(sweep)
    rows: dict[str, dict[str, Any]] = read_rows(path)
    os.makedirs(sweep.dir, exist_ok=True)
    total = len(sweep.points)
    for i, point in enumerate(sweep.points, start=1):
        if rows.get(point.name, {}).get("status") == "ok":
            log(f"[{i}/{total}] {point.name}: ok in {path}, skipped")
            continue
        log(f"[{i}/{total}] {point.name}: training in {point.cfg.run.dir}")
        row, start = run_point(point)
        if row is None:
            log(f"[{i}/{total}] {point.name}: preempted; its checkpoint is saved, rerun the sweep to resume")
            return rows, True
        rows[point.name] = row
        write_rows(path, sweep, rows)
        if row["status"] == "ok":
            resumed = f" (resumed from step {start})" if start else ""
            log(f"[{i}/{total}] {point.name}: eval_loss {row['eval_loss']:.4f}, "
                f"bits per byte {row['eval_bits_per_byte']:.4f}{resumed}")
        else:
            log(f"[{i}/{total}] {point.name}: {row['status']}")
    return rows, False


def collect(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """results.csv from the points' run dirs, training nothing (--collect: after --emit-jobs ran them elsewhere).

    A point is ok when its metrics.jsonl holds the held-out evaluation of its last step; otherwise it is
    recorded as not started or incomplete (with the newest step logged). Rows of other points are kept.
    """
    path = results_path(sweep)
    rows: dict[str, dict[str, Any]] = read_rows(path)
    for point in sweep.points:
        row: dict[str, Any] = {"point": point.name, **point.values, "run_dir": point.cfg.run.dir,
                               **point_counts(point.cfg)}
        final, newest = _final_eval(point.cfg.run.dir, point.cfg.train.steps)
        if final is not None:
            row.update(eval_loss=final["eval_loss"], eval_bits_per_byte=final["eval_bits_per_byte"], status="ok")
        else:
            row["status"] = "not started" if newest is None else f"incomplete (step {newest} of {point.cfg.train.steps})"
        rows[point.name] = row
    os.makedirs(sweep.dir, exist_ok=True)
    write_rows(path, sweep, rows)
    return rows


def _final_eval(run_dir: str, steps: int) -> tuple[dict[str, Any] | None, int | None]:
    """(the metrics row of step `steps` if it holds the evaluation, else None; the newest step logged or None)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None, None
    rows = [row for _, row in logged_rows(path) if row is not None]  # a line cut off by a kill is skipped
    final = next((r for r in reversed(rows) if r["step"] == steps and "eval_loss" in r), None)
    return final, max((r["step"] for r in rows), default=None)


def plan(sweep: Sweep) -> str:
    """What running the sweep would do (--dry-run): each point's size and whether it is done or still to run."""
    rows = read_rows(results_path(sweep))
    lines = [f"sweep {sweep.path}: {len(sweep.points)} point(s) from {sweep.base} into {sweep.dir}",
             f"  {'point':<40} {'params':>10} {'non-emb':>10} {'tokens':>10} {'FLOPs':>10}  status"]
    for point in sweep.points:
        c = point_counts(point.cfg)
        status = rows.get(point.name, {}).get("status", "")
        status = "done (skipped)" if status == "ok" else f"to retry ({status})" if status else "to run"
        lines.append(f"  {point.name:<40} {c['params']:>10,} {c['params_non_embedding']:>10,} {c['tokens']:>10,} "
                     f"{c['flops']:>10.3g}  {status}")
    return "\n".join(lines)
