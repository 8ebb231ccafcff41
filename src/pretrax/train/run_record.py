"""The run's record: which config governed which steps, and resumes that would change the data order.

`RUN_DIR/config.yaml` is the config of the latest start. `RUN_DIR/config_history.jsonl`
gains one line per start or resume: the resolved config, the first step it governs, the
checkpoint it resumed from, what it changed against that checkpoint's config, and who
started it. So a run resumed with other overrides still records how its earlier steps
were trained.

A resume that changes what the batches hold or their order (the data section, the seed,
the global batch size) is refused, naming the keys, unless the user allows it
(`pretrax train --allow-data-change`); the allowed change is then recorded in the history.
Changed `paths` that name the same documents (the data mounted elsewhere) are no change.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from pretrax import config as config_lib
from pretrax import storage
from pretrax.config import Config, get_dotted
from pretrax.errors import CheckpointError

HISTORY = "config_history.jsonl"

# Keys outside `data` that decide which tokens land in which batch row at which step.
DATA_ORDER_KEYS = ("run.seed", "train.batch_size")
# `data` keys that only say how or where the same documents are read: free to change on a resume.
DATA_RUNTIME_KEYS = frozenset({"data.num_workers", "data.prefetch", "data.data_dir"})


def history_path(run_dir: str) -> str:
    return storage.join(run_dir, HISTORY)


# sections holding a list of sub-sections, and the class each item has
_ITEM_CLASSES = {"mixture": config_lib.SourceSection, "denoisers": config_lib.DenoiserSection}


def saved_section(section: str, raw: Any) -> Any:
    """A saved section as a plain dict with today's defaults filled in (older checkpoints lack newer keys)."""
    defaults = Config().to_dict()[section]
    if not isinstance(raw, dict):
        return defaults
    merged = {**defaults, **raw}
    for key, cls in _ITEM_CLASSES.items():
        if isinstance(merged.get(key), (list, tuple)):
            item = config_lib.to_plain(cls())
            merged[key] = [{**item, **v} if isinstance(v, dict) else v for v in merged[key]]
    return merged


def data_order_changes(saved: dict, cfg: Config, *, same_documents: bool = False) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (checkpoint's value, this run's)} for every change that alters the batches' content or order.

    same_documents: the training documents have the checkpoint's names, in its order (the corpus
    fingerprint in its data state is this run's), so changed ``paths`` only say where the same files
    are now (another mount, another working directory) and are no change.
    """
    now = cfg.to_dict()
    before = {section: saved_section(section, saved.get(section)) for section in ("data", "run", "train")}
    data_now = _without_paths(now["data"]) if same_documents else now["data"]
    data_before = _without_paths(before["data"]) if same_documents else before["data"]
    keys = [k for k in config_lib.diff(data_before, data_now, prefix="data.")
            if k not in DATA_RUNTIME_KEYS and not k.endswith(".data_dir")]
    keys += [k for k in DATA_ORDER_KEYS if get_dotted(before, k) != get_dotted(now, k)]
    return {k: (get_dotted(before, k), get_dotted(now, k)) for k in keys}


def _without_paths(data: dict) -> dict:
    """The data section without the sources' ``paths`` (its own and each mixture item's)."""
    out = {k: v for k, v in data.items() if k != "paths"}
    if isinstance(out.get("mixture"), list):
        out["mixture"] = [{k: v for k, v in m.items() if k != "paths"} if isinstance(m, dict) else m
                          for m in out["mixture"]]
    return out


def check_data_order(saved: dict, cfg: Config, step: int, *, allow: bool,
                     same_documents: bool = False) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume that changes the data order or batch layout, unless allowed; returns the changes."""
    changes = data_order_changes(saved, cfg, same_documents=same_documents)
    if changes and not allow:
        details = ", ".join(f"{k} (checkpoint {old!r}, now {new!r})" for k, (old, new) in changes.items())
        raise CheckpointError(
            f"resuming from step {step} would change what the batches hold or their order: {details}; use the "
            "checkpoint's values, a new run.dir, or `pretrax train ... --allow-data-change` to continue with the "
            f"new data (recorded in {HISTORY})"
        )
    return changes


def config_changes(saved: dict | None, cfg: Config) -> dict[str, list[Any]]:
    """{dotted key: [checkpoint's value, this run's]} over the whole config (runtime keys included)."""
    if saved is None:
        return {}
    now = cfg.to_dict()
    before = {section: saved_section(section, saved.get(section)) for section in now}
    return {k: [get_dotted(before, k), get_dotted(now, k)] for k in config_lib.diff(before, now)}


def append(run_dir: str, cfg: Config, *, first_step: int, resumed_from: int | None, saved: dict | None,
           data_change: dict[str, tuple[Any, Any]], data_position: str | None) -> None:
    """One history line for this start (process 0 only): enough to know what governed steps first_step onwards."""
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "first_step": first_step,
        "resumed_from": resumed_from,
        "changed": config_changes(saved, cfg),
        "allowed_data_change": sorted(data_change),
        "data_position": data_position,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": sys.argv,
        "config": cfg.to_dict(),
    }
    storage.append_text(history_path(run_dir), json.dumps(entry, sort_keys=True, default=str) + "\n")


def read(run_dir: str) -> list[dict]:
    """The history's entries, oldest first (a line cut short by a crash is left out)."""
    path = history_path(run_dir)
    if not storage.isfile(path):
        return []
    entries = []
    for line in storage.read_text(path).splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries
