"""GPT-1 fine-tuning (`pretrax finetune`): the input transformations id by id, the head and the λ-weighted
loss against an independent computation, learning on a held-out set, exact resume, and bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import TINY

from pretrax.data.tokenizer import ByteTokenizer
from pretrax.errors import ConfigError
from pretrax.finetune.task import Example, task_from_dict
from pretrax.finetune.transforms import Specials, encode_batch, sequences, specials_for

EVAL_TASK = os.path.join(os.path.dirname(__file__), "..", "evals", "finetune", "code_or_comment")
TOK = ByteTokenizer()  # ids: pad 0, eos 1, bos 2, byte b -> b + 3; 362 ids, so a 384-row table has spare rows
S = Specials(start=2, delimiter=(362,), extract=1)


def ids(text):
    return [b + 3 for b in text.encode()]


# ---------------------------------------------------------------- input transformations (Figure 1)

@pytest.mark.parametrize("kind, parts, choices, expected", [
    ("classification", ("ab",), (), [[2, *ids("ab"), 1]]),
    ("entailment", ("ab", "c"), (), [[2, *ids("ab"), 362, *ids("c"), 1]]),
    # similarity: both orders, each a sequence of its own
    ("similarity", ("ab", "c"), (), [[2, *ids("ab"), 362, *ids("c"), 1], [2, *ids("c"), 362, *ids("ab"), 1]]),
    # multiple choice: one sequence per option, context first
    ("multiple_choice", ("q",), ("x", "yz", "w"),
     [[2, *ids("q"), 362, *ids("x"), 1], [2, *ids("q"), 362, *ids("yz"), 1], [2, *ids("q"), 362, *ids("w"), 1]]),
])
def test_transformations_give_gpt1_sequences(kind, parts, choices, expected):
    assert sequences(kind, Example(parts, choices, 0), TOK.encode, S, 32) == expected
    batch = encode_batch(kind, [Example(parts, choices, 1)], TOK.encode, S, 12, TOK.pad_id)
    k = len(expected)
    assert batch["tokens"].shape == (1, k, 12) and batch["label"].tolist() == [1]
    for j, seq in enumerate(expected):
        assert batch["tokens"][0, j].tolist() == seq + [0] * (12 - len(seq))  # padded with pad ids
        assert batch["segment_ids"][0, j].tolist() == [1] * len(seq) + [0] * (12 - len(seq))
        assert batch["tokens"][0, j, batch["extract"][0, j]] == 1  # the head reads the extract token


def test_too_long_cuts_the_longest_part_keeping_the_specials():
    [seq] = sequences("entailment", Example(("abcdefgh", "xyz"), (), 0), TOK.encode, S, 9)
    assert seq == [2, *ids("abc"), 362, *ids("xyz"), 1]  # 9 ids: the premise cut to fit
    [seq] = sequences("entailment", Example(("abcdefgh", "uvwxyz"), (), 0), TOK.encode, S, 9)
    assert seq == [2, *ids("abc"), 362, *ids("uvw"), 1]  # both longer than 3: both cut to 3


def test_special_tokens():
    assert specials_for(TOK, 384, "spare") == Specials(2, (362,), 1)  # the first row past the tokenizer's ids
    assert specials_for(TOK, 362, " $ ") == Specials(2, tuple(ids(" $ ")), 1)
    with pytest.raises(ConfigError, match="set the task's delimiter to a string"):
        specials_for(TOK, 362, "spare")


# ---------------------------------------------------------------- the head and the λ-weighted loss

@pytest.fixture(scope="module")
def random_model():
    """A randomly initialised tiny decoder on the 8-device mesh, as a fine-tuning run builds it."""
    from pretrax import config as config_lib
    from pretrax.parallel.mesh import make_mesh
    from pretrax.train.state import init_state, make_setup

    cfg = config_lib.load("configs/tiny.yaml", TINY)
    mesh = make_mesh(cfg.mesh)
    pre = make_setup(cfg, mesh, 384)
    return cfg, mesh, pre, init_state(pre, 0)["params"]


@pytest.mark.parametrize("kind", ["classification", pytest.param("similarity", marks=pytest.mark.slow),
                                  pytest.param("multiple_choice", marks=pytest.mark.slow)])
def test_loss_is_task_ce_plus_lambda_lm_ce(random_model, kind):
    import jax
    from flax import nnx

    from pretrax.finetune import step as ft_step

    cfg, mesh, pre, lm_params = random_model
    texts = ["x = f(y)", "a comment here", "def g():", "plain words"]
    examples = [Example((t, texts[(i + 1) % 4]) if kind == "similarity" else (t,),
                        tuple(texts[:3]) if kind == "multiple_choice" else (), i % (3 if kind == "multiple_choice" else 2))
                for i, t in enumerate(texts * 2)]
    batch = encode_batch(kind, examples, TOK.encode, S, 24, 0)
    batch["weight"] = np.ones(8, np.float32)
    outputs = 1 if kind == "multiple_choice" else 2

    setup = ft_step.make_setup(cfg, mesh, pre.graphdef, pre.abstract_params, pre.logical_specs, kind=kind,
                               head_outputs=outputs, lm_weight=0.5, classifier_dropout=0.0, optim=cfg.optim,
                               total_steps=10)
    params = ft_step.init_state(setup, lm_params, seed=3)["params"]
    terms = jax.jit(lambda p, b: ft_step.loss_terms(setup, p, b))(params, ft_step.to_global(setup, batch))
    loss_half = float(ft_step.combined_loss(setup, terms)[0])
    loss_zero = float(ft_step.combined_loss(dataclasses.replace(setup, lm_weight=0.0), terms)[0])

    # independently: the plain model call for the LM loss, numpy for the head and both cross-entropies
    tokens, segments = batch["tokens"].reshape(-1, 24), batch["segment_ids"].reshape(-1, 24)

    @jax.jit
    def reference(lm, tokens):
        model = nnx.merge(pre.graphdef, lm)
        hidden = model.hidden_states(tokens)
        return model(tokens), hidden, model.readout(hidden)

    logits, hidden, read = (np.asarray(x, np.float64) for x in reference(params["lm"], tokens))
    np.testing.assert_array_equal(read, logits)  # the hidden states are what the logits are read from
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    lm_ce = -(picked * segments[:, 1:]).sum() / segments[:, 1:].sum()  # every real target token
    K = batch["tokens"].shape[1]
    h = hidden.reshape(8, K, 24, -1)[np.arange(8)[:, None], np.arange(K)[None], batch["extract"]]  # (B, K, D)
    W, b = np.asarray(params["head"]["kernel"], np.float64), np.asarray(params["head"]["bias"], np.float64)
    if kind == "similarity":
        task_logits = (h[:, 0] + h[:, 1]) @ W + b  # the two orders' states summed
    elif kind == "multiple_choice":
        task_logits = (h @ W + b)[..., 0]  # one score per option
    else:
        task_logits = h[:, 0] @ W + b
    z = task_logits - task_logits.max(-1, keepdims=True)
    task_ce = -np.mean(z[np.arange(8), batch["label"]] - np.log(np.exp(z).sum(-1)))
    assert loss_half == pytest.approx(task_ce + 0.5 * lm_ce, rel=1e-5)
    assert loss_zero == pytest.approx(task_ce, rel=1e-5)
    assert abs(loss_half - loss_zero) > 0.1  # λ is applied: the LM term is large at random init


# ---------------------------------------------------------------- task files and bad input

def write_task(directory, **changes):
    task = {"name": "t", "type": "classification",
            "data": {"train": os.path.abspath(os.path.join(EVAL_TASK, "train.jsonl")),
                     "validation": os.path.abspath(os.path.join(EVAL_TASK, "validation.jsonl"))},
            "labels": ["code", "comment"], "max_len": 96}
    for key, value in changes.items():
        if value is None:
            task.pop(key)
        else:
            task[key] = value
    path = os.path.join(directory, f"task_{abs(hash(json.dumps(changes, sort_keys=True)))}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(task, f)
    return path


def cli(capsys, *args):
    from pretrax.cli import main

    code = main(["finetune", *map(str, args)])
    err = capsys.readouterr().err
    return code, err


def test_task_file_defaults_and_paths(tmp_path):
    task = task_from_dict({"name": "n", "type": "entailment", "data": {"train": "a.jsonl", "validation": "b.jsonl"},
                           "labels": ["yes", "no"], "finetune": {"epochs": 2}}, base_dir=str(tmp_path))
    assert task.train == str(tmp_path / "a.jsonl")
    assert task.fields == {"premise": "premise", "hypothesis": "hypothesis", "label": "label"}
    assert (task.finetune.lr, task.finetune.batch_size, task.finetune.lm_weight, task.finetune.epochs) == \
        (6.25e-5, 32, 0.5, 2)  # GPT-1's recipe unless the file says otherwise


@pytest.mark.parametrize("changes, message", [
    ({"name": None, "labels": None}, "is missing required fields name, labels (a task file needs: name, type, "
                                     "data.train, data.validation, labels)"),
    ({"type": "regression"}, "unknown task type 'regression'; valid: classification, entailment, similarity, "
                             "multiple_choice"),
    ({"finetune": {"lm_wieght": 0.5}}, "unknown key 'finetune.lm_wieght'; did you mean 'finetune.lm_weight'?"),
    ({"labels": ["code", "prose"]}, "label 'comment' is not one of the declared classes; valid: code, prose"),
])
def test_bad_task_files_are_one_line(tmp_path, capsys, changes, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code, err = cli(capsys, run_dir, write_task(tmp_path, **changes))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert os.listdir(run_dir) == []  # nothing written


def test_run_dir_without_a_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code, err = cli(capsys, run_dir, write_task(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "holds no complete checkpoint to fine-tune from" in err, err
    assert os.listdir(run_dir) == []


def test_hooks_schedule_rows_evaluations_and_checkpoints(tmp_path):
    """Pretraining's Trainer with fine-tuning's hooks: a row every log_every steps, at the end and with every
    evaluation (its scores in that row, after the step's own metrics); checkpoints every checkpoint_every."""
    from pretrax import config as config_lib
    from pretrax.finetune.hooks import finetune_hooks
    from pretrax.train.metrics import MetricsWriter
    from pretrax.train.trainer import Trainer

    ft = task_from_dict({"name": "n", "type": "classification", "data": {"train": "a", "validation": "b"},
                         "labels": ["x", "y"], "finetune": {"steps": 8, "log_every": 3, "eval_every": 4}},
                        base_dir=str(tmp_path)).finetune
    cfg = config_lib.load("configs/tiny.yaml", ["checkpoint.every=3"])
    out = MetricsWriter(str(tmp_path), 8, 0, progress=False)
    from pretrax.train.preemption import PreemptionWatcher

    hooks = finetune_hooks(lambda params: {"eval_accuracy": params / 10}, out, None, {}, cfg, ft,
                           PreemptionWatcher(), total=8, end=8)
    step = lambda state, batch: ({"params": state["params"] + 1}, {"loss": batch, "lr": 0.5})  # noqa: E731
    trainer = Trainer(step, float, [hooks.validation, hooks.log], say=lambda line: None)
    assert trainer.run({"params": 0}, 0, 8) == ({"params": 8}, 8)
    out.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [{"step": 3, "loss": 3.0, "lr": 0.5}, {"step": 4, "loss": 4.0, "lr": 0.5, "eval_accuracy": 0.4},
                    {"step": 6, "loss": 6.0, "lr": 0.5}, {"step": 8, "loss": 8.0, "lr": 0.5, "eval_accuracy": 0.8}]
    assert hooks.log.losses == {s: float(s) for s in range(1, 9)} and hooks.validation.latest == {"eval_accuracy": 0.8}
    assert [s for s in range(1, 9) if hooks.checkpoint.due(s)] == [3, 6, 8]


# ---------------------------------------------------------------- end to end on a briefly pretrained model

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The conftest tiny decoder pretrained for 6 steps (48 sequences of 32 bytes of stdlib text)."""
    from pretrax import config as config_lib
    from pretrax.train.loop import train

    run_dir = tmp_path_factory.mktemp("finetune") / "pre"
    train(config_lib.load("configs/tiny.yaml", [*TINY, f"run.dir={run_dir}"]), progress=False)
    return run_dir


LEARN = {"lr": 3.0e-3, "batch_size": 32, "epochs": 6, "classifier_dropout": 0.1, "log_every": 1}


@pytest.fixture(scope="module")
def learned(pretrained, tmp_path_factory):
    from pretrax.finetune.loop import finetune

    directory = tmp_path_factory.mktemp("learn")
    task = write_task(str(directory), finetune=LEARN)
    return task, finetune(str(pretrained), task, progress=False)


@pytest.mark.slow
def test_learns_the_held_out_task(learned, pretrained):
    _, result = learned
    assert result["final_step"] == 42  # 6 epochs of ceil(200 / 32)
    assert result["eval"]["eval_accuracy"] >= 0.8, result["eval"]  # chance is 0.5 (50 of each class)
    assert result["eval"]["eval_examples"] == 100
    out = result["out_dir"]
    assert out == os.path.join(str(pretrained), "finetune", "t")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, 43))
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["task_loss"] + 0.5 * rows[-1]["lm_loss"], rel=1e-5)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["35", "42"]  # every epoch, keep 2
    # the pretrained weights stay where the run's mesh.rules put them in pretraining
    import jax

    placed = jax.tree.leaves(jax.tree.map(lambda x: x.sharding, result["state"]["params"]["lm"]))
    assert placed == jax.tree.leaves(result["prepared"].pre_setup.state_shardings["params"])


@pytest.mark.slow
def test_resume_gives_the_same_losses(learned, pretrained, tmp_path):
    from pretrax.finetune.loop import finetune

    task, full = learned
    out = str(tmp_path / "resumed")
    first = finetune(str(pretrained), task, out=out, stop_at=20, progress=False)
    assert first["final_step"] == 20 and "eval" not in first
    second = finetune(str(pretrained), task, out=out, progress=False)
    assert second["start_step"] == 20
    losses = {**first["losses"], **second["losses"]}
    assert losses == full["losses"]  # bit for bit, dropout masks included
    assert second["eval"] == full["eval"]


@pytest.mark.slow
def test_bad_input_after_a_run_leaves_it_untouched(learned, pretrained, tmp_path, capsys):
    from test_cli import snapshot

    task, result = learned
    before = snapshot(str(pretrained))
    # an encoder-decoder (here the run's config overridden to one) is refused in one line
    code, err = cli(capsys, pretrained, task, "model.kind=encoder_decoder", "model.positions=relative")
    assert code == 2 and err.count("\n") == 1 and "fine-tuning supports decoder models" in err, err
    bad = write_task(str(tmp_path), labels=["code", "prose"], finetune=LEARN)
    code, err = cli(capsys, pretrained, bad)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert "is not one of the declared classes; valid: code, prose" in err
    # another task into the finished run's dir: refused, naming what differs
    other = write_task(str(tmp_path), finetune={**LEARN, "lm_weight": 0.25})
    code, err = cli(capsys, pretrained, other, "--out", result["out_dir"])
    assert code == 2 and "finetune.lm_weight differ" in err, err
    assert snapshot(str(pretrained)) == before


@pytest.mark.slow
def test_sigterm_saves_the_step_exits_143_and_the_same_command_resumes_exactly(learned, pretrained, tmp_path):
    from pretrax.finetune.loop import finetune
    from pretrax.train import checkpoint as ckpt
    from test_nan_and_preemption import sigterm_after_rows

    task, full = learned
    out = tmp_path / "preempted"
    proc = subprocess.Popen([sys.executable, "-m", "pretrax.cli", "finetune", str(pretrained), task, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = sigterm_after_rows(proc, out / "metrics.jsonl", rows=3, wait=180)
    assert proc.returncode == 143, err[-2000:]
    stopped = ckpt.latest_step(str(out))
    assert stopped is not None and stopped < 42 and f"preempted at step {stopped}" in err and "Traceback" not in err
    resumed = finetune(str(pretrained), task, out=str(out), progress=False)  # the same command again
    assert resumed["start_step"] == stopped and resumed["final_step"] == 42
    assert {s: resumed["losses"][s] for s in range(stopped + 1, 43)} == \
        {s: full["losses"][s] for s in range(stopped + 1, 43)}  # bit for bit
