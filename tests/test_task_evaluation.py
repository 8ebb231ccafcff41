"""Downstream tasks while training (config `eval`): the scores of the model at each evaluation step land in
metrics.jsonl and in a sweep's results.csv, and equal the same tasks scored afterwards from that step's
checkpoint; an unknown task is refused before the run writes anything."""

import json
import os

import pytest
from conftest import TINY

from pretrax.cli import main
from pretrax.config import load
from pretrax.errors import ConfigError
from pretrax.evaluation import evaluate_tasks
from pretrax.generate import load_run
from pretrax.train.loop import train
from test_sweep import read_csv, write_sweep

TASKS = ["eval.tasks=[qa,cloze]", "eval.limit=6", "eval.every=2", "data.seq_len=128", "train.steps=4",
         "train.eval_every=4", "checkpoint.every=2", "checkpoint.keep=3", "model.n_layers=1"]


@pytest.mark.slow
def test_task_scores_reach_the_metrics_rows_and_the_sweep_results(tmp_path):
    path = write_sweep(tmp_path / "sweep.yaml", {"product": {"optim.lr": [1e-2]}}, overrides=[*TINY, *TASKS])
    assert main(["sweep", path]) == 0
    run_dir = tmp_path / "runs" / "lr=0.01"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r for r in rows if "probe/qa/acc" in r}
    assert sorted(scored) == [2, 4]  # eval.every=2, held-out loss only at 4 (train.eval_every)
    assert "eval_loss" not in scored[2] and "eval_loss" in scored[4]
    for step, row in scored.items():  # the scores are those of the model as it was at that step
        _, setup, tokenizer, params, _ = load_run(str(run_dir), step)
        again = evaluate_tasks(setup, params, tokenizer, ["qa", "cloze"], 6)
        assert {k: row[k] for k in again} == again, step
    result = read_csv(tmp_path / "runs" / "results.csv")[0]
    assert result["status"] == "ok"
    assert float(result["probe/qa/acc"]) == scored[4]["probe/qa/acc"]
    assert float(result["probe/cloze/acc"]) == scored[4]["probe/cloze/acc"]


@pytest.mark.slow
def test_an_unknown_task_is_refused_before_the_run_writes_anything(tmp_path):
    cfg = load(None, [*TINY, *TASKS, "eval.tasks=[qa,no_such_task]", f"run.dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="no_such_task"):
        train(cfg)
    assert not os.path.exists(tmp_path / "run")
