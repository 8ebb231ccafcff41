"""Evaluate a model: lm-eval tasks and zero-shot probes over in-memory parameters (`evaluate_tasks`, what
training calls every `eval_every` steps) and over a run dir's checkpoints (`pretrax eval`).

A task name is a probe (probes.PROBES, pretrax's own scoring, no lm-eval) or an lm-eval task (evals/,
--include-path, or lm-eval's registry); lm-eval is imported only when a task needs it.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

from pretrax import storage
from pretrax.errors import ConfigError
from pretrax.evaluation import likelihood, probes


def evaluate_tasks(setup, params: Any, tokenizer, tasks: list[str], limit: int | None = None, *,
                   include_paths: list[str] = (), batch_size: int = 8) -> dict[str, float]:
    """{metric name: value} for a model's in-memory params (a training run's, no reload): probes give
    "probe/<name>/acc", lm-eval tasks "eval/<task>/<metric>" (e.g. "eval/pretrax_mc/acc"). limit: at most
    that many examples per task. Raises ConfigError for an unknown task, a bad task file or a run without
    a text tokenizer."""
    if not tasks:
        raise ConfigError("no tasks to evaluate; give probe names (" + ", ".join(probes.PROBES) + ") or lm-eval "
                          "task names")
    model = likelihood.model_of(setup, params, tokenizer, batch_size=batch_size)
    probe_names = tuple(t for t in tasks if t in probes.PROBES)
    lm_tasks = [t for t in tasks if t not in probes.PROBES]
    metrics = probes.run_probes(model, probe_names, limit) if probe_names else {}
    if lm_tasks:
        from pretrax.evaluation import tasks as tasks_lib

        resolved = tasks_lib.resolve(lm_tasks, include_paths, probes.PROBES)
        from pretrax.evaluation.lm_adapter import run_tasks

        metrics.update(run_tasks(model, resolved, limit=limit))
    return metrics


def evaluate_run(run_dir: str, tasks: list[str], *, limit: int | None = None, step: int | None = None,
                 include_paths: list[str] = (), batch_size: int = 8) -> tuple[int, dict[str, float]]:
    """(step, metrics) of one checkpoint of a run dir (the newest by default)."""
    from pretrax.generate import load_run

    check_task_names(tasks, include_paths)
    _, setup, tokenizer, params, step = load_run(run_dir, step)
    return step, evaluate_tasks(setup, params, tokenizer, tasks, limit, include_paths=include_paths,
                                batch_size=batch_size)


def evaluate_steps(run_dir: str, tasks: list[str], *, limit: int | None = None, include_paths: list[str] = (),
                   batch_size: int = 8, out_dir: str | None = None, log=None) -> tuple[list[dict], dict[str, str]]:
    """Every checkpoint of a run dir evaluated (GPT-1's zero-shot curves): one row {"step", metrics...} per
    step, written as eval.csv, eval.json and eval.png (score against step) in out_dir (RUN_DIR/eval)."""
    from pretrax.generate import load_run
    from pretrax.train import checkpoint as ckpt

    check_task_names(tasks, include_paths)
    storage.check_reachable(run_dir, "run dir")
    if not storage.isdir(run_dir):
        what = "is a file, not a run dir" if storage.isfile(run_dir) else "does not exist"
        raise ConfigError(f"run dir {run_dir!r} {what}; give the run.dir of a training run")
    if ckpt.latest_step(run_dir) is None:
        raise ConfigError(f"run dir {run_dir!r} holds no complete checkpoint to evaluate; give the run.dir of a "
                          "training run that saved one")
    from pretrax import config as config_lib

    with ckpt.open_manager(run_dir, config_lib.CheckpointSection(), read_only=True) as reader:
        steps = sorted(reader.all_steps())
    what = "--out" if out_dir else "the eval dir (RUN_DIR/eval)"
    out_dir = out_dir or storage.join(run_dir, "eval")
    storage.check_writable_dir(out_dir, what)  # before any checkpoint is read
    rows = []
    for step in steps:
        _, setup, tokenizer, params, _ = load_run(run_dir, step)
        rows.append({"step": step, **evaluate_tasks(setup, params, tokenizer, tasks, limit,
                                                    include_paths=include_paths, batch_size=batch_size)})
        if log:
            log(format_row(rows[-1]))
        paths = write_table(rows, out_dir, png=step == steps[-1])  # the rows so far survive an interruption
    return rows, paths


def check_task_names(tasks: list[str], include_paths: list[str]) -> None:
    """Refuse bad task names and files before a checkpoint is read (lm-eval ones checked by resolve)."""
    lm_tasks = [t for t in tasks if t not in probes.PROBES]
    if not tasks:
        raise ConfigError("--tasks is empty; give probe names (" + ", ".join(probes.PROBES) + ") or lm-eval tasks")
    if lm_tasks:
        from pretrax.evaluation import tasks as tasks_lib

        tasks_lib.resolve(lm_tasks, include_paths, probes.PROBES)


def format_row(row: dict) -> str:
    return "  ".join([f"step {row['step']}"] + [f"{k} {v:.4f}" for k, v in row.items() if k != "step"])


def write_table(rows: list[dict], out_dir: str, png: bool = True) -> dict[str, str]:
    """eval.csv and eval.json (one row per step) and (png) eval.png (each metric against step) in out_dir."""
    storage.makedirs(out_dir)
    paths = {ext: storage.join(out_dir, f"eval.{ext}") for ext in ("csv", "json") + ("png",) * png}
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(paths["csv"], text.getvalue())
    storage.write_text(paths["json"], json.dumps(rows, indent=1) + "\n")
    try:
        if png:
            plot(rows, paths["png"])
    except ImportError:  # matplotlib is a dependency, but an install may lack it: the tables are the result
        print("pretrax: matplotlib is not installed; wrote the tables without eval.png", file=sys.stderr)
        del paths["png"]
    return paths


def plot(rows: list[dict], path: str) -> None:
    """Each metric against the checkpoint's step, as GPT-1's Figure 2 (right): accuracies (acc, acc_norm,
    exact_match: 0..1) on the left, perplexities and bits per byte (log scale) on the right when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    names = list(dict.fromkeys(k for row in rows for k in row if k != "step"))
    shares = [n for n in names if n.rsplit("/", 1)[-1].split("_")[0] in ("acc", "exact")]
    panels = [(shares, "accuracy", False), ([n for n in names if n not in shares], "perplexity / bits", True)]
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (metrics, label, log) in zip(axes[0], panels):
        for name in metrics:
            ax.plot(steps, [row.get(name, float("nan")) for row in rows], marker="o", ms=3, label=name)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("training step (checkpoint)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("zero-shot evaluation over pretraining")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(path, png.getvalue())
