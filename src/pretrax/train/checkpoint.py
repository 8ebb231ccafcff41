"""Orbax checkpoints: params, optimizer state, step, RNG, data-iterator state and config.

Each checkpoint is one Orbax step directory with three items:
  state   the train-state pytree (sharded arrays; every process writes its shards)
  data    the data iterator's state (JSON), so a resume reads exactly the next batch
  config  the resolved config (JSON), so an incompatible resume is refused
Orbax writes into a temporary directory and renames it when complete, so the
newest *complete* checkpoint is always the one restored; saves are
asynchronous and overlap with the following train steps.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from pretrax import config as config_lib
from pretrax.config import CheckpointSection, Config
from pretrax.errors import CheckpointError

ITEMS = ("state", "data", "config")


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(os.path.abspath(run_dir), "checkpoints")


def open_manager(run_dir: str, cfg: CheckpointSection, *, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep,
        enable_async_checkpointing=cfg.async_save,
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options, item_names=ITEMS)


def latest_step(run_dir: str) -> int | None:
    """The newest complete checkpoint's step, or None (never creates anything)."""
    if not os.path.isdir(checkpoint_dir(run_dir)):
        return None
    with ocp.CheckpointManager(
        checkpoint_dir(run_dir), options=ocp.CheckpointManagerOptions(read_only=True, create=False), item_names=ITEMS
    ) as manager:
        return manager.latest_step()


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_state: dict, cfg: Config, *, force=False):
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(cfg.to_dict()),
        ),
        force=force,
    )


def gather_data_state(data) -> dict:
    """The data iterator state of ALL hosts, merged: saved once, resumable on any host count.

    Each host's state covers only its own batch rows (two integers per row);
    they are all-gathered as one small int array, so every host holds the same
    merged state and process 0's JSON write is complete.
    """
    state = data.get_state()
    if jax.process_count() == 1:
        return state
    import numpy as np
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


def check_compatible(saved: dict, cfg: Config, step: int) -> None:
    """Refuse a resume whose model differs from the checkpoint's, naming the keys."""
    differing = config_lib.diff(saved.get("model", {}), cfg.to_dict()["model"], prefix="model.")
    if differing:
        details = ", ".join(f"{k} (checkpoint {_get(saved, k)!r}, now {_get(cfg.to_dict(), k)!r})" for k in differing)
        raise CheckpointError(
            f"checkpoint at step {step} was written for a different model: {details}; "
            "use the checkpoint's values or a new run.dir"
        )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict) -> tuple[dict, dict]:
    """Restore state onto the shardings in abstract_state (any mesh), plus the data state."""
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
        )
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint at step {step} does not match this run's state: {first}") from None
    return restored["state"], restored["data"]


def _get(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def wait(manager: ocp.CheckpointManager) -> None:
    manager.wait_until_finished()
    jax.effects_barrier()
