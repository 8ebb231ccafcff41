"""Evaluation: the lm-eval adapter's numbers are `pretrax score`'s (decoder and encoder-decoder), its
is_greedy is the forward pass's argmax, rolling log-likelihood is the document's total, generation stops
at the until string; lm-eval's multiple-choice accuracy is the one computed here from scores; `pretrax
eval` end to end, over every checkpoint (a row per step), and its one-line errors.

The run dirs hold numpy-drawn weights (test_score.make_run: no jitted init, no training), a different
draw per checkpoint so that --all-steps has different numbers to table.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY
from lm_eval.api.instance import Instance
from pretrax import config as config_lib
from pretrax.cli import main as cli_main
from pretrax.data.tokenizer import ByteTokenizer
from pretrax.evaluation import evaluate_tasks, likelihood, probes
from pretrax.evaluation.lm_adapter import PretraxLM
from pretrax.evaluation.tasks import EVALS_DIR
from pretrax.generate import decoder_new_ids, load_run
from pretrax.score import target_logprobs, token_logprobs
from pretrax.train import checkpoint as ckpt
from test_encoder_decoder_training import ENC_DEC
from test_kv_cache import model_and_params

TOK = ByteTokenizer()
WIDE = "data.seq_len=128"  # room for the local tasks' contexts without truncation


def make_run(run_dir, *overrides, steps=(1,)):
    """A run dir with a checkpoint per step, each holding its own numpy draw of weights (std 0.3 + 0.1 step)."""
    cfg = config_lib.load(None, TINY + [f"run.dir={run_dir}", *overrides])
    with ckpt.open_manager(str(run_dir), cfg.checkpoint) as manager:
        for step in steps:
            setup, params = model_and_params(cfg, std=0.3 + 0.1 * step)
            state = {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": setup.tx.init(params),
                     "rng": jax.random.key_data(jax.random.key(0))}
            ckpt.save(manager, step, state, {}, cfg)
            ckpt.wait(manager)
    return str(run_dir)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """(run dir, likelihood.Model of its newest checkpoint as `pretrax eval` loads it)."""
    run_dir = make_run(tmp_path_factory.mktemp("eval") / "run", WIDE, steps=(1, 2))
    _, setup, tokenizer, params, _ = load_run(run_dir)
    return run_dir, likelihood.model_of(setup, params, tokenizer)


def requests(kind, *args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def score_json(capsys, *args):
    code = cli_main(["score", *map(str, args), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_loglikelihood_is_pretrax_scores_sum(decoder, capsys):
    run_dir, model = decoder
    pairs = [("def f(x):\n    return", " x + 1"), ("import", " os"), ("", "abc"), ("x" * 200, " = 1")]  # last: > window
    got = PretraxLM(model).loglikelihood(requests("loglikelihood", *pairs))
    for (context, continuation), (lp, _) in zip(pairs, got):
        ids = ([TOK.bos_id] + TOK.encode(context + continuation))[-128:]  # the newest 128: the window
        n = len(TOK.encode(continuation))
        assert lp == pytest.approx(float(token_logprobs(model.setup, model.params, ids)[-n:].sum()), abs=1e-4)
    # and as a user checks it: `pretrax score --text` scores bos + context + continuation
    scored = score_json(capsys, run_dir, "--text", "".join(pairs[0]), "--no-eos")["logprobs"]
    assert got[0][0] == pytest.approx(sum(scored[-len(pairs[0][1]):]), abs=1e-4)
    assert got[0][0] < -3  # not a near-zero number that would agree by accident


def test_is_greedy_is_the_forward_pass_argmax(decoder):
    _, model = decoder
    context = TOK.encode("for i in range(")
    greedy = decoder_new_ids(model.setup, model.params, [TOK.bos_id] + context, max_new_tokens=3)
    other = greedy[:2] + [greedy[2] + 1]
    (_, yes), (_, no), (_, prefix) = likelihood.token_loglikelihoods(
        model, [(context, greedy), (context, other), (context, greedy[:1])])
    assert (yes, no, prefix) == (True, False, True)
    # the cloze items, against argmax of the logits computed here
    docs = [json.loads(line) for line in (EVALS_DIR / "cloze.jsonl").read_text().splitlines()]
    got = PretraxLM(model).loglikelihood(requests("loglikelihood", *[(d["context"], d["target"]) for d in docs]))
    forward = jax.jit(lambda p, t: nnx.merge(model.setup.graphdef, p)(t))
    for d, (_, is_greedy) in zip(docs, got):
        ids = [TOK.bos_id] + TOK.encode(d["context"] + d["target"])
        n = len(TOK.encode(d["target"]))
        padded = ids + [0] * (128 - len(ids))  # one shape, one compilation; causal: the padding is unseen
        argmax = np.asarray(forward(model.params, jnp.asarray([padded])))[0].argmax(-1)
        assert is_greedy == all(argmax[len(ids) - 1 - n + k] == ids[len(ids) - n + k] for k in range(n))


def test_loglikelihood_rolling_is_the_documents_total(decoder, capsys):
    run_dir, model = decoder
    doc = "Beautiful is better than ugly."
    (total,) = PretraxLM(model).loglikelihood_rolling(requests("loglikelihood_rolling", (doc,)))
    scored = score_json(capsys, run_dir, "--text", doc, "--no-eos")  # bos + doc, as a document
    assert total == pytest.approx(sum(scored["logprobs"]), abs=1e-4)
    # a document longer than the window: every token scored once (an all-zero model: log(1/V) each)
    zeros = likelihood.Model(model.setup, jax.tree.map(jnp.zeros_like, model.params), TOK)
    long = "Simple is better than complex. " * 20  # 620 bytes, about 5 windows
    assert likelihood.rolling_loglikelihoods(zeros, [long]) == pytest.approx(
        [-len(long) * np.log(model.setup.vocab_size)], rel=1e-5)


def test_generate_until_stops_at_the_until_string(decoder):
    _, model = decoder
    context = "def main("
    greedy = decoder_new_ids(model.setup, model.params, [TOK.bos_id] + TOK.encode(context), max_new_tokens=12)
    full = TOK.decode(greedy)
    assert len(set(full[:6])) > 1  # a varied continuation
    stop = full[4]
    (got,) = PretraxLM(model).generate_until(requests("generate_until", (context, {"until": [stop],
                                                                                   "max_gen_toks": 12})))
    assert got == full[: full.index(stop)]
    (capped,) = PretraxLM(model).generate_until(requests("generate_until", (context, {"until": [],
                                                                                      "max_gen_toks": 3})))
    assert capped == TOK.decode(greedy[:3])


@pytest.mark.slow
def test_lm_evals_multiple_choice_accuracy_is_the_one_computed_from_scores(decoder):
    _, model = decoder
    metrics = evaluate_tasks(model.setup, model.params, model.tokenizer, ["pretrax_mc", "qa"], limit=15)
    docs = [json.loads(line) for line in (EVALS_DIR / "mc.jsonl").read_text().splitlines()][:15]
    right = right_avg = 0
    for d in docs:
        context = [TOK.bos_id] + TOK.encode(d["context"])
        lps = [token_logprobs(model.setup, model.params, context + TOK.encode(c))[len(context) - 1:]
               for c in d["choices"]]
        right += int(np.argmax([lp.sum() for lp in lps]) == d["label"])  # lm-eval's acc: the total
        right_avg += int(np.argmax([lp.mean() for lp in lps]) == d["label"])  # GPT-1's QA heuristic: the average
    assert metrics["eval/pretrax_mc/acc"] == pytest.approx(right / len(docs))
    assert metrics["probe/qa/acc"] == pytest.approx(right_avg / len(docs))


@pytest.mark.slow
def test_encoder_decoder_loglikelihood_is_pretrax_scores_sum(tmp_path, capsys):
    run_dir = make_run(tmp_path / "encdec", *ENC_DEC)
    _, setup, tokenizer, params, _ = load_run(run_dir)
    model = likelihood.model_of(setup, params, tokenizer)
    assert model.mode_ids == (TOK.mode_token_id("[S2S]"),)  # the run's S denoiser's mode, as generate uses
    pairs = [("x = 1", " + 2"), ("import", " os"), ("", "abc")]
    got = PretraxLM(model).loglikelihood(requests("loglikelihood", *pairs))
    for (context, continuation), (lp, _) in zip(pairs, got):
        enc = [TOK.mode_token_id("[S2S]")] + TOK.encode(context) + [TOK.eos_id]
        assert lp == pytest.approx(float(target_logprobs(setup, params, enc, TOK.encode(continuation),
                                                         bos_id=TOK.bos_id).sum()), abs=1e-4)
    scored = score_json(capsys, run_dir, "--inputs", pairs[0][0], "--targets", pairs[0][1], "--no-eos", "--mode", "S")
    assert got[0][0] == pytest.approx(sum(scored["logprobs"]), abs=1e-4)
    (total,) = PretraxLM(model).loglikelihood_rolling(requests("loglikelihood_rolling", ("abc",)))
    assert total == pytest.approx(got[2][0], abs=1e-5)  # one piece: the text given an empty context
    metrics = evaluate_tasks(setup, params, tokenizer, ["pretrax_gen", "cloze"], limit=2)
    assert set(metrics) == {"eval/pretrax_gen/exact_match", "probe/cloze/acc"}


# ---------------------------------------------------------------- `pretrax eval`


def test_pretrax_eval_end_to_end(decoder, capsys):
    run_dir, _ = decoder
    code = cli_main(["eval", run_dir, "--tasks", "pretrax_cloze,pretrax_gen,pretrax_zen,cloze,acceptability",
                     "--limit", "6", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["step"] == 2
    assert {"eval/pretrax_cloze/acc", "eval/pretrax_cloze/perplexity", "eval/pretrax_gen/exact_match",
            "eval/pretrax_zen/bits_per_byte", "probe/cloze/acc", "probe/acceptability/acc"} <= set(result)
    assert result["eval/pretrax_cloze/acc"] == result["probe/cloze/acc"]  # lm-eval's and pretrax's own count
    assert result["eval/pretrax_zen/bits_per_byte"] > 1


@pytest.mark.slow
def test_all_steps_writes_a_row_per_checkpoint(decoder, tmp_path, capsys):
    run_dir, _ = decoder
    code = cli_main(["eval", run_dir, "--all-steps", "--tasks", "qa,acceptability", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = (tmp_path / "eval.csv").read_text().splitlines()
    assert lines[0] == "step,probe/qa/acc,probe/acceptability/acc" and [row.split(",")[0] for row in lines[1:]] == [
        "1", "2"]
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [r["step"] for r in rows] == [1, 2] and rows[0] != rows[1] | {"step": 1}  # each step's own weights
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in out and str(tmp_path / "eval.csv") in out


def run_eval(capsys, *args):
    code = cli_main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_task_file_with_missing_fields_is_one_line(decoder, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("task: my_bad_task\ndataset_path: json\noutput_type: multiple_choice\n"
                                       "doc_to_text: '{{q}}'\ntest_split: test\n")
    code, out, err = run_eval(capsys, decoder[0], "--tasks", "my_bad_task", "--include-path", tmp_path)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "bad.yaml' is missing doc_to_target, doc_to_choice" in err
    (tmp_path / "bad.yaml").write_text("task: my_bad_task\ndataset_path: json\noutput_type: loglikelihood\n"
                                       "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\ntest_split: test\n"
                                       "dataset_kwargs:\n  data_files:\n    test: nowhere.jsonl\n")
    code, out, err = run_eval(capsys, decoder[0], "--tasks", "my_bad_task", "--include-path", tmp_path)
    assert code == 2 and "nowhere.jsonl' does not exist" in err and len(err.strip().splitlines()) == 1


def test_a_run_dir_without_a_checkpoint_is_one_line(tmp_path, capsys):
    for args in (["--tasks", "qa"], ["--all-steps"]):
        code, out, err = run_eval(capsys, tmp_path, *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert "holds no complete checkpoint" in err


def test_a_run_without_a_tokenizer_is_one_line(tmp_path, capsys):
    run_dir = make_run(tmp_path / "ids", "data.tokenizer=none", "model.vocab_size=384")
    code, out, err = run_eval(capsys, run_dir, "--tasks", "qa")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "evaluation reads text and this run has no tokenizer (data.tokenizer: none" in err


def test_an_unknown_task_is_one_line_listing_the_known_ones(decoder, capsys):
    code, out, err = run_eval(capsys, decoder[0], "--tasks", "pretrax_mcq")  # looked for in lm-eval's task files
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert ("unknown task 'pretrax_mcq'; the probes: qa, acceptability, cloze; pretrax's own tasks (evals/): "
            "pretrax_cloze, pretrax_gen, pretrax_mc, pretrax_zen; or any task of lm-eval's registry") in err


def test_the_probes_items():
    pairs = probes.acceptability_pairs()
    assert len(pairs) >= 40 and all(a != b and sorted(a.split(" ")) == sorted(b.split(" ")) for a, b in pairs)
    for name in ("mc.jsonl", "cloze.jsonl", "gen.jsonl", "zen.jsonl"):
        assert 19 <= len((EVALS_DIR / name).read_text().splitlines()) <= 50
