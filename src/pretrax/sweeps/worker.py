"""`pretrax sweep FILE --worker`: one of any number of identical workers sharing one sweep dir.

Start the same command on N machines (tpu_scripts/launch.sh --sweep) and
they split the sweep between them. Each worker, in a loop: scans the claims
(claims.py); takes the first point, in grid order, that nobody claimed, or
whose claim went stale (its worker died: the point resumes from its newest
checkpoint); trains it while a background thread keeps its claim fresh;
writes the point's row (results/POINT.json) and outcome, rebuilds
results.csv, and goes on. When no point is free but some are still running
elsewhere, it waits and looks again, so that the workers still alive take
over from one that died. It ends when every point has finished (ok or
failed) and exits 1 if any failed.

A failed point (a PretraxError: a batch the mesh cannot split, ...) is not
retried by the other workers, who would fail the same way; workers started
with --retry-failed retry each point that failed before they started, once.

On a multi-host slice every host runs the same command and together they
are one worker: process 0 claims, beats and writes, and broadcasts each
decision (train point i, wait, end) to the others, which train with it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from pretrax import storage
from pretrax.errors import StorageError
from pretrax.sweeps import results
from pretrax.sweeps.claims import Claim, Claims, PointClaims, heartbeat_interval
from pretrax.sweeps.grid import Point, Sweep
from pretrax.sweeps.identity import claim_dir
from pretrax.sweeps.runner import describe, run_point

TRAIN, WAIT, END = 1, 2, 3


class Worker:
    def __init__(self, sweep: Sweep, stale_after: float, retry_failed: bool = False,
                 log: Callable[[str], None] | None = None):
        self.sweep, self.retry_failed = sweep, retry_failed
        self.claims = Claims(sweep.dir, stale_after)
        self.started = time.time()
        self.poll_s = max(heartbeat_interval(stale_after), 0.5)
        owner = self.claims.owner
        self.name = f"worker {owner['worker']} (host {owner['host']}, pid {owner['pid']})"
        self._log = log or (lambda line: print(line, flush=True))

    def log(self, line: str) -> None:
        self._log(f"[{self.name}] {line}")

    def run(self) -> int:
        """Work until every point is finished: 0 when all are ok, 1 when some failed, or the preemption code."""
        import jax

        leader = jax.process_index() == 0
        if leader:
            self.csv_ok = {n for n, r in results.read_rows(results.results_path(self.sweep)).items()
                           if r.get("status") == "ok"}  # done by a one-process `pretrax sweep` before
            self.log(f"joined sweep {self.sweep.path} in {self.sweep.dir} ({len(self.sweep.points)} point(s))")
        while True:
            claim = None
            if leader:
                kind, index, claim = self._next()
            else:
                kind, index = WAIT, 0
            if jax.process_count() > 1:
                kind, index = _broadcast(kind, index)
            if kind == WAIT:
                time.sleep(self.poll_s)
                continue
            if kind == END:
                return self._end(leader, failed=index)
            point = self.sweep.points[index]
            if not leader:
                row, _ = run_point(point)
                if row is None:
                    return _preempted_code()
                continue
            if not self._train(point, claim):
                return _preempted_code()

    def _next(self) -> tuple[int, int, Claim | None]:
        """(TRAIN, point index, this worker's new claim), (WAIT, 0, None) or (END, number failed, None)."""
        try:
            return self._choose()
        except StorageError as e:  # the bucket did not answer this time: look again later
            self.log(f"could not read or write the claims ({e}); trying again in {self.poll_s:g} s")
            return WAIT, 0, None

    def _choose(self) -> tuple[int, int, Claim | None]:
        states = self.claims.scan(p.name for p in self.sweep.points)
        running = failed = 0
        for index, point in enumerate(self.sweep.points):
            state = states[point.name]
            attempt = self._attempt_to_take(point, state)
            if attempt is None:
                failed += state.outcome == "failed"
                running += bool(state.attempt) and state.outcome is None
                continue
            claim = self.claims.try_claim(point.name, attempt)
            if claim is not None:
                if attempt > 1:
                    owner = state.content or {}
                    self.log(f"{point.name}: attempt {attempt - 1} (host {owner.get('host', '?')}, pid "
                             f"{owner.get('pid', '?')}) went stale; taking it over")
                return TRAIN, index, claim
            running += 1  # another worker got it first
        return (WAIT, 0, None) if running else (END, failed, None)

    def _attempt_to_take(self, point: Point, state: PointClaims) -> int | None:
        """The attempt number to claim for this point, or None when it is done or another worker runs it."""
        if state.outcome == "ok":
            return None
        if not state.attempt:
            return None if point.name in self.csv_ok else 1
        if state.outcome == "failed":
            if not self.retry_failed:
                return None
            outcome = self.claims.outcome(point.name, state.attempt) or {}
            return state.attempt + 1 if float(outcome.get("at", 0)) < self.started else None
        return state.attempt + 1 if self.claims.is_stale(point.name, state) else None

    def _train(self, point: Point, claim: Claim) -> bool:
        """Train the claimed point and record it; False when a preemption stopped it (its claim released)."""
        self.log(f"{point.name}: training in {point.cfg.run.dir} (attempt {claim.attempt})")
        with claim.heartbeat(self._lost, self.log):
            try:
                row, start = run_point(point)
            except BaseException:
                _quietly(claim.release)  # a crash: let another worker resume the point now
                raise
        if row is None:
            _quietly(claim.release)
            self.log(f"{point.name}: preempted; its checkpoint is saved and another worker resumes it")
            return False
        if claim.lost():
            self.log(f"{point.name}: another worker took this point over; its row is theirs")
            return True
        try:
            results.write_point_row(self.sweep, row, attempt=claim.attempt, start_step=start, **self.claims.owner)
            claim.finish(row["status"], start_step=start)
        except StorageError as e:  # unrecorded: the claim goes stale and whoever takes it over records the run
            self.log(f"{point.name}: trained, but its outcome could not be written ({e}); it is taken over "
                     "after --stale-after and recorded from its final checkpoint")
            return True
        self.log(f"{point.name}: {describe(row, start)}")
        self._rebuild()
        return True

    def _end(self, leader: bool, failed: int) -> int:
        if leader:
            self._rebuild()  # every point has finished: this table has every row
            done = len(self.sweep.points) - failed
            self.log(f"no point left; results: {results.results_path(self.sweep)} ({done} ok, {failed} failed"
                     f"{'; rerun with --retry-failed to retry them' if failed else ''})")
        return 1 if failed else 0

    def _rebuild(self) -> None:
        try:
            results.rebuild(self.sweep)
        except StorageError as e:  # the rows are safe in results/; the next rebuild writes them
            self.log(f"could not rewrite results.csv ({e}); the next finished point rewrites it")

    def _lost(self, claim: Claim) -> None:
        """Called by the heartbeat when another worker took this point over: stop now, writing nothing more."""
        print(f"pretrax: error: [{self.name}] {claim.point}: another worker took this point over (attempt "
              f"{claim.attempt + 1}) after this one missed its heartbeats; stopping so that only one trains it",
              file=sys.stderr, flush=True)
        os._exit(1)


def run_worker(sweep: Sweep, stale_after: float, retry_failed: bool = False) -> int:
    storage.makedirs(sweep.dir)
    claim_dir(sweep)  # on every process: refuses a dir that another sweep (or another version of this one) owns
    return Worker(sweep, stale_after, retry_failed).run()


def _broadcast(kind: int, index: int) -> tuple[int, int]:
    """Process 0's decision, on every process of this worker's slice."""
    import numpy as np
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(np.array([kind, index], dtype=np.int32))
    return int(out[0]), int(out[1])


def _preempted_code() -> int:
    from pretrax.train.preemption import PREEMPTED_EXIT_CODE

    return PREEMPTED_EXIT_CODE


def _quietly(call: Callable[[], Any]) -> None:
    try:
        call()
    except Exception:  # releasing is a courtesy: a stale heartbeat frees the point too
        pass
