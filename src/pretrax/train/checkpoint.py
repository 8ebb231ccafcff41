"""Orbax checkpoints: params, optimizer state, step, RNG, data-iterator state and config.

Each checkpoint is one Orbax step directory with three items:
  state   the train-state pytree (sharded arrays; every process writes its shards)
  data    the data iterator's state (JSON), so a resume reads exactly the next batch
  config  the resolved config (JSON), so an incompatible resume is refused
On a disk Orbax writes into a temporary directory and renames it when
complete; on GCS (no rename) it marks a finished step with a last
commit_success.txt object; either way a save cut short (kill -9, full disk)
never looks complete. The run dir may be local or gs:// (pretrax.storage); saves are
asynchronous and overlap with the following train steps. A resume takes the
newest checkpoint that restores: damaged newer ones are skipped (said in one
line on stderr) and set aside in RUN_DIR/damaged_checkpoints/, never deleted.
A save that fails stops training with one CheckpointError line, and the older
checkpoints stay: the ones past `keep` are deleted only after a new one is
complete, and never left half deleted (retire_old). docs/reliability.md lists these promises and the tests that prove them.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import uuid
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from pretrax import config as config_lib
from pretrax import storage
from pretrax.config import CheckpointSection, Config, get_dotted
from pretrax.errors import CheckpointError, StorageError
from pretrax.train import run_record
from pretrax.train.checkpoint_verify import (  # checkpoint_dir: used by callers too
    COMMIT_MARK,
    checkpoint_dir,
    find_problem,
    list_steps,
)

ITEMS = ("state", "data", "config")
RETIRED = ".retired"  # in checkpoints/: steps being deleted (renamed here first, so none is ever half deleted)

# Orbax splits the writing of a replicated array among its replicas ("replica-parallel"). For an array whose
# share per replica is tiny (norm scales, biases, a small model's every weight) the split costs more than it
# saves: each device's share is a separate eager slice, compiled once per device and shape, about 0.8 s of
# a small run's first two saves on 8 CPU devices. Arrays of 4 MiB or more per replica are still split.
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _register_array_handler() -> None:
    """Replace Orbax's jax.Array handler by one with MIN_REPLICA_SLICE_BYTES, without the absl warning
    ("Type handler registry type ... overriding ...") the override would print at every start."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
            override=True)
    finally:
        absl_logger.setLevel(level)


_register_array_handler()


def damaged_dir(run_dir: str) -> str:
    return storage.join(storage.absolute(run_dir), "damaged_checkpoints")


def open_manager(run_dir: str, cfg: CheckpointSection, *, read_only: bool = False,
                 set_aside: Iterable[int] = ()) -> ocp.CheckpointManager:
    """The run's checkpoint manager; a writer first moves the damaged steps in set_aside out of its way.

    A writer also removes the temporary directories of saves that never
    finished (a kill -9 mid-save): they were never complete, so nothing is lost.
    """
    if not read_only:
        _check_writable(checkpoint_dir(run_dir))
        _set_aside(run_dir, set_aside)
        _purge_retired(checkpoint_dir(run_dir))  # steps a killed run had begun to delete
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,  # retention is pretrax's own (retire_old): Orbax's deletion can be cut half way
        enable_async_checkpointing=cfg.async_save,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
    )
    try:
        return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options, item_names=ITEMS)
    except (OSError, ValueError) as e:  # a StorageError passes through: it names the bucket
        raise CheckpointError(f"cannot use checkpoint dir {checkpoint_dir(run_dir)}: {_reason(e)}; "
                              "give a run.dir whose checkpoints/ is a writable directory") from e


def _check_writable(directory: str) -> None:
    """Fail before the first train step, not at the first save, when checkpoints cannot be written at all."""
    if storage.isfile(directory):
        raise CheckpointError(f"checkpoint dir {directory} is a file; move it away or give another run.dir")
    probe = storage.join(directory, f".pretrax-write-test-{uuid.uuid4().hex[:8]}")
    try:
        storage.makedirs(directory)
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except StorageError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot write in checkpoint dir {directory}: {_reason(e)}; "
                              "give a run.dir on a writable disk") from e


def _set_aside(run_dir: str, steps: Iterable[int]) -> None:
    """Move damaged step directories to RUN_DIR/damaged_checkpoints/ (kept, out of the way of new saves)."""
    steps = sorted(steps)
    if steps and jax.process_index() == 0:
        storage.makedirs(damaged_dir(run_dir))
        for step in steps:
            target = storage.join(damaged_dir(run_dir), str(step))
            n = 1
            while storage.exists(target):
                target, n = storage.join(damaged_dir(run_dir), f"{step}.{n}"), n + 1
            storage.move(storage.join(checkpoint_dir(run_dir), str(step)), target)
    if steps and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("pretrax: damaged checkpoints set aside")


def latest_step(run_dir: str) -> int | None:
    """The newest complete checkpoint's step, or None (never creates anything)."""
    if not storage.isdir(checkpoint_dir(run_dir)):
        return None
    with ocp.CheckpointManager(
        checkpoint_dir(run_dir), options=ocp.CheckpointManagerOptions(read_only=True, create=False), item_names=ITEMS
    ) as manager:
        return manager.latest_step()


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_state: dict, cfg: Config, *, force=False):
    """Start writing checkpoint `step`; it completes in the background while training goes on.

    A write that fails (this one, or the previous one still finishing) raises
    one CheckpointError line naming the directory and the cause, so the run
    stops; no failed step ever gets its final name, and older steps stay.
    """
    _finish_writing(manager)
    retire_old(manager, cfg.checkpoint.keep)  # the previous save is complete: older ones may go
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(cfg.to_dict()),
            ),
            force=force,
        )
    except Exception as e:  # OSError from a mkdir, ValueError from TensorStore, ...
        raise _write_error(manager, step, e) from e


def _finish_writing(manager: ocp.CheckpointManager) -> None:
    """Wait for the save in flight; its failure becomes a CheckpointError naming its step."""
    in_flight = manager.latest_step() if manager.is_saving_in_progress() else None
    try:
        manager.wait_until_finished()
    except Exception as e:
        raise _write_error(manager, in_flight, e) from e


def _write_error(manager: ocp.CheckpointManager, step: int | None, e: Exception) -> CheckpointError:
    # from disk: after a failed save Orbax's own list has already dropped the steps past `keep`, which are still there
    older = [r.step for r in list_steps(str(manager.directory), verify=False)
             if r.complete and (step is None or r.step < step)]
    kept = f"the newest complete checkpoint (step {max(older)}) is untouched" if older else "no earlier checkpoint exists"
    what = f"checkpoint step {step}" if step is not None else "a checkpoint"
    return CheckpointError(f"could not write {what} in {manager.directory}: {_reason(e)}; training stopped and "
                           f"{kept}; free space or fix the directory, then run the same command to resume")


def _reason(e: BaseException) -> str:
    """The cause in a few words: the OS error when there is one, else the first line."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} ({e.filename})" if e.filename else e.strerror
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # TensorStore tags an OS error [os_error_code='N'], sometimes after other [key='...'] payloads (a spec
    # ending in "true}'"): the errno names the cause, the text before the tag need not
    os_error = re.search(r"\[os_error_code='(\d+)'\]", text)
    if os_error:
        code = int(os_error.group(1))
        return f"{os.strerror(code)} (errno {code})"
    return text[:300]


def gather_data_state(data) -> dict:
    """The data iterator state of ALL hosts, merged: saved once, resumable on any host count.

    Each host's state covers only its own batch rows (two integers per row);
    they are all-gathered as one small int array, so every host holds the same
    merged state and process 0's JSON write is complete.
    """
    state = data.get_state()
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils

    from pretrax.data.pipeline import merge_states

    mine = np.asarray([[state["first_row"], d, o] for d, o in zip(state["doc"], state["offset"])], np.int64)
    everyone = np.asarray(multihost_utils.process_allgather(mine))  # (hosts, rows, 3)
    hosts = []
    for rows in everyone:
        hosts.append({**state, "first_row": int(rows[0, 0]), "doc": rows[:, 1].tolist(), "offset": rows[:, 2].tolist()})
    return merge_states(hosts)


def read_config(manager: ocp.CheckpointManager, step: int) -> dict:
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]


def saved_config(run_dir: str, step: int, cfg: Config) -> dict:
    """The resolved config checkpoint `step` was written with (read only)."""
    with open_manager(run_dir, cfg.checkpoint, read_only=True) as reader:
        return read_config(reader, step)


# how the same weights are computed or trained with, or how they were first drawn, not what they are:
# free to change on a resume (run_record.py records the change)
RUNTIME_MODEL_KEYS = frozenset({"model.remat", "model.attention", "model.dropout", "model.residual_init_scaling"})


def check_compatible(saved: dict, cfg: Config, step: int) -> None:
    """Refuse a resume whose model or parametrization differs from the checkpoint's, naming the keys."""
    now = cfg.to_dict()
    # a checkpoint from before a section or key existed had its defaults
    before = {section: run_record.saved_section(section, saved.get(section)) for section in ("model", "parametrization")}
    differing = [key for section in before
                 for key in config_lib.diff(before[section], now[section], prefix=f"{section}.")
                 if key not in RUNTIME_MODEL_KEYS]
    saved_optim = run_record.saved_section("optim", saved.get("optim"))
    if saved_optim.get("name") != now["optim"]["name"]:  # Adam's moments and Adafactor's factors differ in shape
        differing.append("optim.name")
        before["optim"] = saved_optim
    if differing:
        details = ", ".join(f"{k} (checkpoint {get_dotted(before, k)!r}, now {get_dotted(now, k)!r})" for k in differing)
        raise CheckpointError(
            f"checkpoint at step {step} was written for a different "
            f"{'optimizer' if differing == ['optim.name'] else 'model'}: {details}; "
            "use the checkpoint's values or a new run.dir"
        )


class DamagedCheckpointError(CheckpointError):
    """A complete checkpoint whose files no longer read back whole (problem says what)."""

    def __init__(self, step: int, problem: str):
        super().__init__(f"checkpoint at step {step} is damaged ({problem})")
        self.step, self.problem = step, problem


def restore_latest_good(run_dir: str, cfg: Config, abstract_state: dict, *, announce: bool = True):
    """Restore the newest checkpoint that reads back whole, skipping damaged newer ones.

    Returns (step, state, data_state, skipped), skipped = {step: what is
    damaged} for the newer steps passed over (a line on stderr says so), or
    (None, None, None, {}) when the run holds no complete checkpoint. A
    checkpoint written for a different model is refused, not skipped; when
    every checkpoint is damaged nothing is restored and the error lists them.
    Nothing is written here: the caller sets the skipped steps aside (announce=False: and
    says so itself).
    """
    skipped: dict[int, str] = {}
    if not storage.isdir(checkpoint_dir(run_dir)):
        return None, None, None, skipped
    with open_manager(run_dir, cfg.checkpoint, read_only=True) as reader:
        for step in sorted(reader.all_steps(), reverse=True):
            error: CheckpointError | None = None
            try:
                state, data_state = _restore_step(reader, step, cfg, abstract_state)
            except CheckpointError as e:
                error = e
            verdict = _agree(0 if error is None else 1 if isinstance(error, DamagedCheckpointError) else 2)
            if verdict == 2:  # does not fit this run: an error, not a reason to go back further
                if error is not None and not isinstance(error, DamagedCheckpointError):
                    raise error
                raise CheckpointError(f"checkpoint at step {step} does not match this run's state on another host")
            if verdict == 1:
                skipped[step] = error.problem if isinstance(error, DamagedCheckpointError) else "damaged on another host"
                continue
            if skipped and announce and jax.process_index() == 0:
                print(f"pretrax: {describe_skipped(skipped)}; resuming from step {step}, the newest that restores "
                      f"(the damaged ones are moved to {damaged_dir(run_dir)})", file=sys.stderr, flush=True)
            return step, state, data_state, skipped
    if not skipped:
        return None, None, None, skipped
    raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)} can be restored: {describe_skipped(skipped)}; "
                          f"`pretrax checkpoints {shlex.quote(str(run_dir))}` lists them; move them away to start afresh, "
                          "or use a new run.dir")


def _restore_step(reader: ocp.CheckpointManager, step: int, cfg: Config, abstract_state: dict):
    # Orbax's own metadata files first: a restore with explicit args does not read them all
    problem = find_problem(storage.join(str(reader.directory), str(step)), read_arrays=False)
    if problem:
        raise DamagedCheckpointError(step, problem)
    try:
        saved = read_config(reader, step)
    except Exception as e:
        raise _restore_error(reader, step, e) from e
    check_compatible(saved, cfg, step)
    return restore(reader, step, abstract_state)


def describe_skipped(skipped: dict[int, str]) -> str:
    return "; ".join(f"checkpoint at step {s} is damaged ({p})" for s, p in skipped.items())


def _agree(verdict: int) -> int:
    """The worst verdict over all hosts (0 restored, 1 damaged, 2 does not fit), so every host picks the same step."""
    if jax.process_count() == 1:
        return verdict
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(verdict))))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict) -> tuple[dict, dict]:
    """Restore state onto the shardings in abstract_state (any mesh), plus the data state.

    A failure is a DamagedCheckpointError when the step no longer reads back
    whole (checkpoint_verify), else a CheckpointError: it does not fit this run.
    """
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
        )
    except Exception as e:  # TensorStore, tree-structure and JSON errors come in many types
        raise _restore_error(manager, step, e) from e
    return restored["state"], restored["data"]


def _restore_error(manager: ocp.CheckpointManager, step: int, e: Exception) -> CheckpointError:
    problem = find_problem(storage.join(str(manager.directory), str(step)))
    if problem:
        return DamagedCheckpointError(step, problem)
    return CheckpointError(f"checkpoint at step {step} does not match this run's state: {_reason(e)}")


def wait(manager: ocp.CheckpointManager, keep: int | None = None) -> None:
    """Wait for the save in flight; with keep, then delete the complete steps past the newest `keep`."""
    _finish_writing(manager)
    if keep is not None:
        retire_old(manager, keep)
    jax.effects_barrier()


def retire_old(manager: ocp.CheckpointManager, keep: int) -> None:
    """Delete the complete checkpoints older than the newest `keep`, never leaving one half deleted.

    Called only once the newest save is complete. On a disk a step is first renamed into
    checkpoints/.retired/ (atomic), then deleted there; on GCS its commit_success.txt goes
    first, so what a kill leaves is an incomplete step, never a complete one with files missing
    (`pretrax checkpoints` would call that damaged). Process 0 deletes; all then re-read the list.
    """
    directory = str(manager.directory)
    if jax.process_index() == 0:
        complete = sorted(r.step for r in list_steps(directory, verify=False) if r.complete)
        for step in complete[:-keep] if keep > 0 else []:
            _retire(directory, step)
        _purge_retired(directory)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("pretrax: old checkpoints retired")
    manager.reload()


def _retire(directory: str, step: int) -> None:
    path = storage.join(directory, str(step))
    if storage.is_remote(path):
        storage.remove(storage.join(path, COMMIT_MARK))  # from here on the step is incomplete, not damaged
        storage.rmtree(path)
        return
    retired = storage.join(directory, RETIRED)
    storage.makedirs(retired)
    target = storage.join(retired, f"{step}.{uuid.uuid4().hex[:8]}")
    os.rename(path, target)
    storage.rmtree(target)


def _purge_retired(directory: str) -> None:
    """Finish deleting what retire_old renamed away (a kill can interrupt it); never a listed step."""
    retired = storage.join(directory, RETIRED)
    if storage.is_remote(directory) or not storage.isdir(retired):
        return
    for name in storage.listdir(retired):
        storage.rmtree(storage.join(retired, name))
    os.rmdir(retired)  # only process 0 retires, one step at a time: nothing is being renamed into it now
