"""Run a sweep's points one after another in this process, resumably, collecting DIR/results.csv.

A point recorded with status ok is skipped; any other point is trained with
train(), which resumes from the point's newest checkpoint when its run dir
has one (a sweep stopped mid-point continues that point, not from scratch).
A point that fails with a PretraxError is recorded as failed and the sweep
goes on; rerunning the sweep retries it. A preempted point (SIGTERM: train()
saves and returns early) stops the sweep unrecorded; rerunning resumes it.
results.csv is replaced whole after every point (never half written), and
rows of points no longer in the grid are kept. The sweep dir may be a local
path or gs://bucket/path; everything goes through pretrax.storage.

worker.py runs the same points as one of many workers sharing the dir.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pretrax import storage
from pretrax.errors import ConfigError, PretraxError
from pretrax.sweeps.claims import Claims
from pretrax.sweeps.counts import point_counts
from pretrax.sweeps.grid import Point, Sweep
from pretrax.sweeps.results import read_rows, results_path, write_rows
from pretrax.train.metrics import logged_rows

DEFAULT_STALE_AFTER_S = 300.0  # a worker's claim with no heartbeat for this long is taken over


def run_point(point: Point) -> tuple[dict[str, Any] | None, int]:
    """Train one point (or resume it): its results row (None if preempted), and the step it resumed from."""
    from pretrax.train.loop import train  # imported here: a dry run or --collect never needs it

    row: dict[str, Any] = {"point": point.name, **point.values, "run_dir": point.cfg.run.dir}
    try:
        row.update(point_counts(point.cfg))
        result = train(point.cfg, progress=False)
    except PretraxError as e:
        row["status"] = f"failed: {e}"
        return row, 0
    if result.preempted:
        return None, result.start_step
    scores = {"eval_loss": result.eval_loss, "eval_bits_per_byte": result.eval_bits_per_byte,
              **result.task_scores}  # eval.tasks: downstream scores, one column each
    if not result.evaluated or (point.cfg.eval.tasks and not result.task_scores):
        # finished before (a worker died between its last step and its row): the scores its last row logged
        final, _ = final_eval(point.cfg.run.dir, point.cfg.train.steps)
        if final is None:
            return None, result.start_step
        scores = final_scores(final)
    row.update(scores, status="ok")
    return row, result.start_step


def run_sweep(sweep: Sweep, log: Callable[[str], None] = print) -> tuple[dict[str, dict[str, Any]], bool]:
    """Run every point not yet recorded ok; returns all rows by point name, and whether a preemption stopped it."""
    refuse_if_workers_run(sweep)
    path = results_path(sweep)
    rows: dict[str, dict[str, Any]] = read_rows(path)
    storage.makedirs(sweep.dir)
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
        log(f"[{i}/{total}] {point.name}: {describe(row, start)}")
    return rows, False


def describe(row: dict[str, Any], start: int) -> str:
    if row["status"] != "ok":
        return row["status"]
    resumed = f" (resumed from step {start})" if start else ""
    return f"eval_loss {row['eval_loss']:.4f}, bits per byte {row['eval_bits_per_byte']:.4f}{resumed}"


def refuse_if_workers_run(sweep: Sweep, stale_after: float = DEFAULT_STALE_AFTER_S) -> None:
    """The one-process sweep claims nothing, so it must not run beside workers (--worker) of the same dir."""
    claims = Claims(sweep.dir, stale_after)
    states = claims.scan(p.name for p in sweep.points)
    for name, state in states.items():
        if state.attempt and state.outcome is None and not claims.is_stale(name, state):
            owner = state.content or {}
            raise ConfigError(f"workers are running sweep dir {sweep.dir} (point {name} on host "
                              f"{owner.get('host', '?')}, pid {owner.get('pid', '?')}); join them with "
                              f"`pretrax sweep {sweep.path} --worker`, or wait until they are done")


def collect(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """results.csv from the points' run dirs, training nothing (--collect: progress of runs made elsewhere).

    A point is ok when its metrics.jsonl holds the held-out evaluation of its last step; otherwise it is
    recorded as not started or incomplete (with the newest step logged). Rows of other points are kept.
    """
    path = results_path(sweep)
    rows: dict[str, dict[str, Any]] = read_rows(path)
    for point in sweep.points:
        row: dict[str, Any] = {"point": point.name, **point.values, "run_dir": point.cfg.run.dir,
                               **point_counts(point.cfg)}
        final, newest = final_eval(point.cfg.run.dir, point.cfg.train.steps)
        if final is not None:
            row.update(final_scores(final), status="ok")
        else:
            row["status"] = "not started" if newest is None else f"incomplete (step {newest} of {point.cfg.train.steps})"
        rows[point.name] = row
    write_rows(path, sweep, rows)
    return rows


def final_scores(final: dict[str, Any]) -> dict[str, Any]:
    """The results columns of a point's last metrics row: held-out loss and bits per byte, and the downstream
    scores of eval.tasks (probe/... and eval/... keys)."""
    return {k: v for k, v in final.items()
            if k in ("eval_loss", "eval_bits_per_byte") or k.startswith(("probe/", "eval/"))}


def final_eval(run_dir: str, steps: int) -> tuple[dict[str, Any] | None, int | None]:
    """(the metrics row of step `steps` if it holds the evaluation, else None; the newest step logged or None)."""
    path = storage.join(run_dir, "metrics.jsonl")
    if not storage.isfile(path):
        return None, None
    rows = [row for _, row in logged_rows(path) if row is not None]  # a line cut off by a kill is skipped
    final = next((r for r in reversed(rows) if r["step"] == steps and "eval_loss" in r), None)
    return final, max((r["step"] for r in rows), default=None)


def plan(sweep: Sweep, stale_after: float = DEFAULT_STALE_AFTER_S) -> str:
    """What running the sweep would do (--dry-run): each point's size, and whether it is done, running or to run."""
    rows = read_rows(results_path(sweep))
    claims = Claims(sweep.dir, stale_after)
    states = claims.scan(p.name for p in sweep.points)
    now = time.time()
    lines = [f"sweep {sweep.path}: {len(sweep.points)} point(s) from {sweep.base} into {sweep.dir}",
             f"  {'point':<40} {'params':>10} {'non-emb':>10} {'tokens':>10} {'FLOPs':>10}  status"]
    for point in sweep.points:
        c = point_counts(point.cfg)
        status = rows.get(point.name, {}).get("status", "")
        state = states[point.name]
        if state.outcome == "ok" or (not state.attempt and status == "ok"):
            status = "done (skipped)"
        elif state.attempt and state.outcome is None:
            owner = state.content or {}
            age = state.age(now)
            beat = "unreadable claim" if age is None else f"heartbeat {age:.0f} s ago"
            where = f"host {owner.get('host', '?')} pid {owner.get('pid', '?')}, {beat}"
            status = (f"stale (attempt {state.attempt}, {where}): the next worker takes it over"
                      if claims.is_stale(point.name, state, now) else f"running (attempt {state.attempt}, {where})")
        elif state.outcome == "failed":
            status = f"failed (workers retry it with --retry-failed): {status.removeprefix('failed: ')}"
        else:
            status = f"to retry ({status})" if status else "to run"
        lines.append(f"  {point.name:<40} {c['params']:>10,} {c['params_non_embedding']:>10,} {c['tokens']:>10,} "
                     f"{c['flops']:>10.3g}  {status}")
    return "\n".join(lines)
