"""Which lm-eval tasks a name means: pretrax's own (evals/*.yaml), a user's (--include-path), or lm-eval's.

Local task files are lm-eval YAML over local JSONL files. lm-eval hands `data_files` to `datasets` as
given, so a relative path would be read from the current directory; here it is made relative to the YAML
file, so evals/ works from anywhere. Each local file is checked before anything runs: a missing field or
data file is one line naming the file. Names that are not local are looked up in lm-eval's own registry
(indexing its ~15,000 task files takes 20 s or more, so only then, and only for a name that occurs in them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrax.errors import ConfigError, first_line

EVALS_DIR = Path(__file__).resolve().parents[3] / "evals"  # the repository's evals/ (an editable install)

# the fields each output_type needs to form its requests (besides task, dataset_path and a split)
NEEDS = {
    "loglikelihood": ("doc_to_text", "doc_to_target"),
    "multiple_choice": ("doc_to_text", "doc_to_target", "doc_to_choice"),
    "generate_until": ("doc_to_text", "doc_to_target"),
    "loglikelihood_rolling": ("doc_to_target",),
}
SPLITS = ("test_split", "validation_split", "training_split")


@dataclass
class Resolved:
    """What lm-eval's simple_evaluate takes: task specs (config dicts or registry names) and a TaskManager."""

    specs: list[Any]
    names: list[str]
    task_manager: Any = None
    registry: list[str] = field(default_factory=list)  # the names looked up in lm-eval's registry


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("lm-eval tasks need the lm-eval harness, which is not installed; "
                          "pip install -e '.[eval]' (lm_eval==0.4.13)") from None


def local_tasks(include_paths: list[str] = ()) -> dict[str, Path]:
    """{task name: its YAML file} in evals/ and the include paths (a later path wins a name)."""
    found = {}
    for directory in [EVALS_DIR, *map(Path, include_paths)]:
        if not directory.is_dir():
            if directory != EVALS_DIR:
                raise ConfigError(f"--include-path {str(directory)!r} is not a directory of lm-eval task YAMLs")
            continue
        # evals/ itself: its top level only (evals/finetune/ holds `pretrax finetune`'s task files)
        for path in sorted(directory.glob("*.yaml" if directory == EVALS_DIR else "**/*.yaml")):
            name = _task_name(path)
            if name:
                found[name] = path
    return found


def _task_name(path: Path) -> str | None:
    """The `task:` of a task file (None for other YAML, such as a group or an included template)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("task:"):
            return line.split(":", 1)[1].strip().strip("'\"") or None
    return None


def task_config(path: Path) -> dict:
    """The checked config of one local task file, its data_files made absolute (relative to the file)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(path, resolve_func=True)
    except Exception as e:  # a YAML error, an include or !function that does not resolve
        raise ConfigError(f"task file {str(path)!r} does not load: {first_line(e)}") from None
    needed = ["task", "dataset_path", "output_type"]
    missing = [k for k in needed if not cfg.get(k)]
    if cfg.get("output_type") and cfg["output_type"] not in NEEDS:
        raise ConfigError(f"task file {str(path)!r}: output_type {cfg['output_type']!r} is not one of "
                          f"{', '.join(NEEDS)}")
    missing += [k for k in NEEDS.get(cfg.get("output_type"), ()) if cfg.get(k) in (None, "")]
    if not any(cfg.get(k) for k in SPLITS):
        missing.append("test_split (or validation_split)")
    if missing:
        raise ConfigError(f"task file {str(path)!r} is missing {', '.join(missing)}; an lm-eval task needs task, "
                          "dataset_path, output_type, a split and the doc_to_* fields of its output_type "
                          "(evals/README.md)")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": _absolute(files, path)}
    return cfg


def _absolute(files: Any, yaml_path: Path) -> Any:
    if isinstance(files, dict):
        return {k: _absolute(v, yaml_path) for k, v in files.items()}
    if isinstance(files, list):
        return [_absolute(v, yaml_path) for v in files]
    full = files if "://" in str(files) else str((yaml_path.parent / os.path.expanduser(str(files))).resolve())
    if "://" not in full and not any(ch in full for ch in "*?[") and not os.path.isfile(full):
        raise ConfigError(f"task file {str(yaml_path)!r}: its data file {full!r} does not exist")
    return full


def resolve(names: list[str], include_paths: list[str] = (), probes: tuple[str, ...] = ()) -> Resolved:
    """The task specs for names, local ones as checked config dicts; an unknown name is one line listing
    the probes (named by the caller) and the local tasks."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError("--tasks is empty; give task names such as " + ", ".join(sorted(local_tasks())))
    local = local_tasks(include_paths)
    specs = [task_config(local[n]) if n in local else n for n in names]
    others = [n for n in names if n not in local]
    if not others:
        return Resolved(specs, names, TaskManager(include_defaults=False))
    unknown = [n for n in others if not _named_in_lm_eval(n, include_paths)]
    if not unknown:
        manager = TaskManager(include_path=[str(p) for p in include_paths] or None)  # the slow index
        unknown = [n for n in others if n not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown task {unknown[0]!r}; the probes: {', '.join(probes)}; pretrax's own tasks "
                          f"(evals/): {', '.join(sorted(local))}; "
                          "or any task of lm-eval's registry whose dataset is reachable (`lm-eval ls tasks` lists "
                          "them)")
    return Resolved(specs, names, manager, others)



def _named_in_lm_eval(name: str, include_paths: list[str] = ()) -> bool:
    """Whether name occurs at all in lm-eval's task files or the include paths' (a registry name is
    written in one): a quick test (about 2 s of CPU against 10 or more to build the index) that settles a
    mistyped name."""
    import lm_eval.tasks

    needle = name.encode()
    roots = [os.path.dirname(lm_eval.tasks.__file__), *map(str, include_paths)]
    for directory, _, files in (walked for root in roots for walked in os.walk(root)):
        for file in files:
            if file.endswith((".yaml", ".yml", ".py")):
                with open(os.path.join(directory, file), "rb") as f:
                    if needle in f.read():
                        return True
    return False
