"""Scoring: every token's log-probability given its prefix, checked against the forward pass's
log_softmax computed here, against a per-prefix recompute and against an all-zero model whose
answer is log(1/V); and `pretrax score` as a user meets it (JSON, the table, ids-only, too long,
the encoder-decoder's flags, --step)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY
from pretrax import config as config_lib
from pretrax.cli import main as cli_main
from pretrax.data.tokenizer import ByteTokenizer
from pretrax.errors import ConfigError
from pretrax.score import score_run, target_logprobs, token_logprobs
from pretrax.train import checkpoint as ckpt
from test_encoder_decoder_training import ENC_DEC
from test_kv_cache import model_and_params

TOK = ByteTokenizer()


def log_softmax(logits):
    """The reference, in float64 numpy: logits - log(sum(exp(logits)))."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def test_token_logprobs_are_the_forward_passes_and_a_per_prefix_recomputes(tiny_cfg):
    setup, params = model_and_params(tiny_cfg("model.n_kv_heads=2"))
    ids = [TOK.bos_id] + TOK.encode("for x in y:")  # 12 tokens, in a 32-token window
    got = token_logprobs(setup, params, ids)
    assert got.shape == (len(ids) - 1,)
    # row 0: the sequence itself; row 1 + i: its first i + 1 tokens, then other tokens that a causal
    # model must not see (a score that read ahead, or was off by one, would change)
    n = len(ids)
    junk = np.random.default_rng(1).integers(3, 300, (n - 1, n))
    rows = np.concatenate([np.asarray(ids)[None], np.where(np.arange(n) <= np.arange(n - 1)[:, None], ids, junk)])
    logits = np.asarray(jax.jit(lambda p, t: nnx.merge(setup.graphdef, p)(t))(params, jnp.asarray(rows, jnp.int32)))
    whole = log_softmax(logits[0])[np.arange(n - 1), ids[1:]]
    per_prefix = log_softmax(logits[1 + np.arange(n - 1), np.arange(n - 1)])[np.arange(n - 1), ids[1:]]
    np.testing.assert_allclose(got, whole, atol=1e-5)
    np.testing.assert_allclose(got, per_prefix, atol=1e-5)
    assert got.min() < -1  # a peaked model: not near-uniform values that would agree by accident


def test_an_all_zero_model_gives_every_token_log_one_over_v(tiny_cfg):
    setup, params = model_and_params(tiny_cfg())
    zeros = jax.tree.map(jnp.zeros_like, params)  # zero logits everywhere: every token has probability 1/V
    np.testing.assert_allclose(token_logprobs(setup, zeros, [2, 70, 71, 72]), [-np.log(setup.vocab_size)] * 3,
                               rtol=1e-6)


def test_target_logprobs_are_the_encoder_decoders_forward_pass(tiny_cfg):
    setup, params = model_and_params(tiny_cfg(*ENC_DEC))
    inputs, targets = TOK.encode("x = 1") + [TOK.eos_id], TOK.encode("ab") + [TOK.eos_id]
    got = target_logprobs(setup, params, inputs, targets, bos_id=TOK.bos_id)
    # unpadded, segment ids by default: the decoder reads bos + targets[:-1] and predicts targets
    logits = jax.jit(lambda p, e, d: nnx.merge(setup.graphdef, p)(e, d))(
        params, jnp.asarray([inputs]), jnp.asarray([[TOK.bos_id] + targets[:-1]]))
    np.testing.assert_allclose(got, log_softmax(logits[0])[np.arange(3), targets], atol=1e-5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    np.testing.assert_allclose(target_logprobs(setup, zeros, inputs, targets, bos_id=TOK.bos_id),
                               [-np.log(setup.vocab_size)] * 3, rtol=1e-6)


def test_without_a_tokenizer_score_takes_ids_only(tiny_cfg):
    setup, params = model_and_params(tiny_cfg())
    with pytest.raises(ConfigError, match=r"--text needs a tokenizer .*data.tokenizer: none.*--ids 5,17,9"):
        score_run(setup, params, None, text="abc")
    assert len(score_run(setup, params, None, ids="2,70,71")["logprobs"]) == 2


# ---------------------------------------------------------------- the command, on run dirs


def make_run(run_dir, *overrides, steps=(1,)):
    """A run dir whose checkpoints hold numpy-drawn weights (what load_run restores), without training."""
    cfg = config_lib.load(None, TINY + [f"run.dir={run_dir}", *overrides])
    setup, params = model_and_params(cfg)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": setup.tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    with ckpt.open_manager(str(run_dir), cfg.checkpoint) as manager:
        for step in steps:
            ckpt.save(manager, step, state, {}, cfg)
            ckpt.wait(manager)
    return str(run_dir), setup, params


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("score") / "run", steps=(1, 2))


def score(capsys, *args):
    """(exit code, stdout, stderr) of `pretrax score *args`, in this process."""
    code = cli_main(["score", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_score_json(decoder_run, capsys):
    run_dir, setup, params = decoder_run
    code, out, _ = score(capsys, run_dir, "--ids", "2,70,105,102,1", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["ids"] == [2, 70, 105, 102, 1] and len(result["logprobs"]) == 4
    np.testing.assert_allclose(result["logprobs"], token_logprobs(setup, params, result["ids"]), atol=1e-6)
    # text: a document as training forms it, bos + bytes + eos; --no-eos leaves the eos off
    code, out, _ = score(capsys, run_dir, "--text", "def", "--json")
    assert json.loads(out)["ids"] == [TOK.bos_id] + TOK.encode("def") + [TOK.eos_id]
    code, out, _ = score(capsys, run_dir, "--text", "def", "--json", "--no-eos")
    assert json.loads(out)["ids"] == [TOK.bos_id] + TOK.encode("def")


def test_score_table(decoder_run, capsys):
    run_dir, setup, params = decoder_run
    code, out, _ = score(capsys, run_dir, "--text", "ab")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["pos", "id", "token", "logprob"]
    assert lines[1].split() == ["0", "2", "<bos>", "-"]
    assert [line.split()[:3] for line in lines[2:5]] == [["1", "100", "'a'"], ["2", "101", "'b'"], ["3", "1", "<eos>"]]
    expected = token_logprobs(setup, params, [2, 100, 101, 1])
    assert [float(line.split()[3]) for line in lines[2:5]] == pytest.approx(expected, abs=1e-4)
    assert lines[5] == (f"total {expected.sum():.4f} nats over 3 tokens; mean {expected.mean():.4f} "
                        f"(perplexity {np.exp(-expected.mean()):.2f})")


@pytest.mark.parametrize("args, message", [
    (["--ids", ",".join(["70"] * 33)], "the sequence is 33 tokens, longer than the model's window "
                                       "(model.max_seq_len, or data.seq_len when 0) = 32 tokens"),
    (["--ids", "2,400"], "token id 400 in the sequence is outside the model's vocabulary (0..383)"),
    (["--ids", "2,x"], "--ids takes token ids such as 5,17,9, got '2,x'"),
    (["--text", "a", "--ids", "2,3"], "exactly one of --text TEXT or --ids 5,17,9"),
    (["--inputs", "a", "--targets", "b"], "--inputs does not apply to this run (a decoder-only model)"),
    (["--ids", "2,3", "--step", "9"], "has no checkpoint at step 9; its checkpoints are at steps 1, 2"),
])
def test_score_errors_are_one_line(decoder_run, capsys, args, message):
    code, out, err = score(capsys, decoder_run[0], *args)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_a_run_without_a_tokenizer_scores_ids_only(tmp_path, capsys):
    run_dir, _, _ = make_run(tmp_path / "ids", "data.tokenizer=none", "model.vocab_size=384")  # as `pretrax import`
    code, _, err = score(capsys, run_dir, "--text", "abc")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--text needs a tokenizer and this run has none (data.tokenizer: none); give token ids with --ids" in err
    code, out, _ = score(capsys, run_dir, "--ids", "2,70,71")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["pos", "id", "logprob"] and lines[3].split()[:2] == ["2", "71"]
    code = cli_main(["generate", run_dir, "--prompt", "2,70,71", "--max-new-tokens", "3", "--temperature", "0"])
    out = capsys.readouterr().out.strip()  # the prompt's ids, then the new ones, one comma-separated list
    assert code == 0 and out.startswith("2,70,71,") and all(s.isdigit() for s in out.split(","))


def test_score_a_given_step(decoder_run, capsys):
    code, out, _ = score(capsys, decoder_run[0], "--ids", "2,3,4", "--step", "1", "--json")
    assert code == 0 and len(json.loads(out)["logprobs"]) == 2


@pytest.mark.slow
def test_score_encoder_decoder_flags(tmp_path, capsys):
    run_dir, setup, params = make_run(tmp_path / "encdec", *ENC_DEC)
    code, out, _ = score(capsys, run_dir, "--inputs", "x = 1", "--targets", "ab", "--mode", "S", "--json")
    result = json.loads(out)
    assert code == 0 and result["input_ids"] == [TOK.mode_token_id("[S2S]")] + TOK.encode("x = 1") + [TOK.eos_id]
    assert result["target_ids"] == TOK.encode("ab") + [TOK.eos_id] and len(result["logprobs"]) == 3
    code, out, _ = score(capsys, run_dir, "--input-ids", ",".join(map(str, result["input_ids"])), "--target-ids",
                         ",".join(map(str, result["target_ids"])), "--json")
    assert json.loads(out) == result  # the same example given as ids
    code, out, _ = score(capsys, run_dir, "--input-ids", "70,1", "--target-ids", "71,1")
    assert code == 0 and out.splitlines()[0].startswith("inputs: 2 tokens") and "over 2 tokens" in out
    code, _, err = score(capsys, run_dir, "--text", "ab")
    assert code == 2 and "--text does not apply to this run (an encoder-decoder)" in err
    code, _, err = score(capsys, run_dir, "--input-ids", ",".join(["70"] * 49), "--target-ids", "1")
    assert code == 2 and "the inputs is 49 tokens, longer than data.inputs_len = 48 tokens" in err
