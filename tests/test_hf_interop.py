"""Hugging Face import/export (issue 14), proven against transformers itself (torch, CPU, float32).

Randomly initialised transformers models of each family, at small odd sizes (d_model 48, 3 heads,
GQA with one kv head, rope_theta 5000, vocab 389, T5 buckets 8 / max distance 20 and 6 / 12), are
saved, imported into pretrax run dirs (three of them under muP, whose multipliers the import divides
out of the weights) and compared on the same ids: log-probabilities within 1e-4, the same after
export (muP folded back in) and export -> import, and after pretrax trains a muP model and exports
it; greedy tokens identical; SentencePiece ids identical through the exported tokenizer. The weights are drawn at
std 0.2 (norm gains 1 +- 0.2) so that the log-probabilities spread far from uniform: a mapping
error shows as a difference of order 1, not 1e-3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import TINY
from pretrax import config as config_lib
from pretrax.cli import main
from pretrax.data.tokenizer import IdsTokenizer
from pretrax.errors import ConfigError
from pretrax.generate import load_run, sample
from pretrax.interop import hf_families
from pretrax.interop.hf_export import export
from pretrax.interop.hf_import import import_hf


class _OnFirstUse:
    """A module imported when first used: every xdist worker imports this file to collect it, even under
    `-m "not slow"`, and torch + transformers take 6 s to import."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("_"):  # pytest's collection asks objects for __test__, _fixture_function_marker...
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)


torch = _OnFirstUse("torch")
transformers = _OnFirstUse("transformers")

V = 389  # not a multiple of 128
TOL = 1e-4
SEQ2SEQ = {"t5", "t5_silu"}


def _randomize(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if p.ndim == 1 and ("norm" in name or "ln_" in name) else 0.0
            p.copy_(centre + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _build(name: str):
    t = transformers
    if name == "llama":  # GQA (3 heads, 1 kv head), rope_theta 5000, untied, SwiGLU
        return t.LlamaForCausalLM(t.LlamaConfig(vocab_size=V, hidden_size=48, intermediate_size=72,
                                                num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                                                head_dim=16, rope_theta=5000.0, tie_word_embeddings=False,
                                                bos_token_id=2, eos_token_id=1, pad_token_id=0))
    if name == "llama_tied":  # tied, GeGLU (gelu_pytorch_tanh), biases, head_dim 8 != 48/3, eps 1e-5
        return t.LlamaForCausalLM(t.LlamaConfig(vocab_size=V, hidden_size=48, intermediate_size=40,
                                                num_hidden_layers=1, num_attention_heads=3, num_key_value_heads=3,
                                                head_dim=8, rope_theta=20000.0, rms_norm_eps=1e-5,
                                                hidden_act="gelu_pytorch_tanh", attention_bias=True, mlp_bias=True,
                                                tie_word_embeddings=True, bos_token_id=2, eos_token_id=1,
                                                pad_token_id=0))
    if name == "gpt":  # GPT-1: learned positions (40), post-LayerNorm, GELU, biases, tied
        return t.OpenAIGPTLMHeadModel(t.OpenAIGPTConfig(vocab_size=V, n_embd=48, n_layer=2, n_head=3, n_positions=40))
    if name == "t5":  # T5.1.1: gated-gelu, decoder output scaled before the tied output layer
        return t.T5ForConditionalGeneration(t.T5Config(vocab_size=V, d_model=48, d_kv=16, d_ff=72, num_layers=2,
                                                       num_decoder_layers=1, num_heads=3,
                                                       relative_attention_num_buckets=8,
                                                       relative_attention_max_distance=20,
                                                       feed_forward_proj="gated-gelu", decoder_start_token_id=2))
    assert name == "t5_silu"  # UL2: gated-silu, no output scaling, d_kv 8 != 48/3
    return t.T5ForConditionalGeneration(t.T5Config(vocab_size=V, d_model=48, d_kv=8, d_ff=40, num_layers=1,
                                                   num_decoder_layers=1, num_heads=3, relative_attention_num_buckets=6,
                                                   relative_attention_max_distance=12, feed_forward_proj="gated-silu",
                                                   tie_word_embeddings=False, decoder_start_token_id=2))


NAMES = ["llama", "llama_tied", "gpt", "t5", "t5_silu"]
SHORT = ["data.seq_len=32", "data.inputs_len=24", "data.targets_len=16"]  # short windows: fast greedy sampling
# muP at width multiplier 2 with every multiplier on, and depth transfer: imported under it, a run must compute
# what the HF model computes (the multipliers divided out of the weights), and its export the same again (folded in)
MUP = ["parametrization.kind=mup", "parametrization.base_d_model=24", "parametrization.alpha_in=2.0",
       "parametrization.alpha_out=3.0", "parametrization.depth_alpha=1.0", "parametrization.base_n_layers=1"]
IMPORTED_WITH = {"llama": MUP,  # untied: the readout multiplier on the output kernel
                 "gpt": MUP,  # tied: in the last LayerNorm; 1/head_dim attention; branches x 1/2 (2 layers)
                 "t5_silu": MUP,  # tied: in the decoder's final norm
                 "t5": ["model.scan_layers=true"]}  # the stacked (L, ...) layout


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """name -> (HF dir, the torch model, the pretrax run dir it was imported into), each made when first asked
    for (the same seed whichever test asks first), so a test pays only for the models it reads."""
    return _Imported(tmp_path_factory.mktemp("hf"))


class _Imported(dict):
    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name: str):
        seed = NAMES.index(name)
        torch.manual_seed(seed)
        model = _randomize(_build(name), seed)
        transformers.utils.logging.disable_progress_bar()  # made inside a test: nothing on its stderr
        model.save_pretrained(self.root / name)
        run = str(self.root / f"{name}_run")
        import_hf(str(self.root / name), run, SHORT + IMPORTED_WITH.get(name, []))
        self[name] = (str(self.root / name), model, run)
        return self[name]


IDS = np.random.default_rng(0).integers(3, V, (2, 23))
DEC = np.random.default_rng(1).integers(3, V, (2, 11))


def hf_logprobs(model, name: str) -> np.ndarray:
    with torch.no_grad():
        if name in SEQ2SEQ:
            logits = model(input_ids=torch.tensor(IDS), decoder_input_ids=torch.tensor(DEC)).logits
        else:
            logits = model(torch.tensor(IDS)).logits
    return torch.log_softmax(logits, -1).numpy()


def pretrax_logprobs(run_dir: str, name: str) -> np.ndarray:
    _, setup, _, params, _ = load_run(run_dir)

    @jax.jit
    def logprobs(params):
        model = nnx.merge(setup.graphdef, params)
        return jax.nn.log_softmax(model(IDS, DEC) if name in SEQ2SEQ else model(IDS), -1)

    return np.asarray(logprobs(params))


def max_diff(a, b) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


# the edit-test loop imports one model (Llama, the modern decoder); `make test` all five
@pytest.mark.parametrize("name", [n if n == "llama" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAMES])
@pytest.mark.slow
def test_imported_logprobs_match_transformers(hf, name):
    hf_dir, model, run = hf[name]
    theirs = hf_logprobs(model, name)
    assert theirs.std() > 0.15  # far from uniform: a wrong mapping cannot hide under the tolerance
    saved = config_lib.load(os.path.join(run, "config.yaml"))
    assert saved.parametrization.kind == ("mup" if IMPORTED_WITH.get(name) == MUP else "sp")
    diff = max_diff(pretrax_logprobs(run, name), theirs)
    print(f"{name}: import max |dlogp| = {diff:.2e}")
    assert diff <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_export_loads_without_warnings_and_round_trips(hf, name, tmp_path):
    hf_dir, model, run = hf[name]
    out = str(tmp_path / "out")
    main(["export", run, out])
    auto = transformers.AutoModelForSeq2SeqLM if name in SEQ2SEQ else transformers.AutoModelForCausalLM
    loaded, info = auto.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    exported = max_diff(hf_logprobs(loaded.eval(), name), hf_logprobs(model, name))
    import_hf(out, str(tmp_path / "again"))
    again = max_diff(pretrax_logprobs(str(tmp_path / "again"), name), hf_logprobs(model, name))
    print(f"{name}: export max |dlogp| = {exported:.2e}, export -> import {again:.2e}")
    assert exported <= TOL and again <= TOL


@pytest.mark.slow
def test_untied_t5_imports_and_exports_untied(hf, tmp_path):
    """T5.1.1 and UL2 checkpoints have their own lm_head.weight and tie_word_embeddings false (transformers 5
    ties T5's unless the two tensors differ): imported untied, the logits are transformers' decoder output
    times that weight, and the export loads back untied with the same logits."""
    from safetensors.numpy import load_file, save_file

    hf_dir, model, _ = hf["t5_silu"]
    shutil.copytree(hf_dir, tmp_path / "hf")
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    lm_head = (0.2 * np.random.default_rng(3).standard_normal((V, 48))).astype(np.float32)
    save_file({**tensors, "lm_head.weight": lm_head}, str(tmp_path / "hf" / "model.safetensors"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.pop("scale_decoder_outputs", None)
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    run = str(tmp_path / "run")
    import_hf(str(tmp_path / "hf"), run, SHORT)
    assert not config_lib.load(os.path.join(run, "config.yaml")).model.tie_embeddings
    with torch.no_grad():
        encoded = model.encoder(input_ids=torch.tensor(IDS)).last_hidden_state
        decoded = model.decoder(input_ids=torch.tensor(DEC), encoder_hidden_states=encoded).last_hidden_state
        theirs = torch.log_softmax(decoded @ torch.tensor(lm_head).T, -1).numpy()
    diff = max_diff(pretrax_logprobs(run, "t5_silu"), theirs)
    main(["export", run, str(tmp_path / "out")])  # and back: its own lm_head.weight, no output scaling
    loaded, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert not json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"]
    assert loaded.lm_head.weight.data_ptr() != loaded.shared.weight.data_ptr()  # not tied on load
    exported = max_diff(hf_logprobs(loaded.eval(), "t5_silu"), theirs)
    print(f"t5 untied (transformers 4 layout): import max |dlogp| = {diff:.2e}, export {exported:.2e}")
    assert diff <= TOL and exported <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "t5"])
def test_greedy_generation_gives_the_same_tokens(hf, name):
    hf_dir, model, run = hf[name]
    cfg, setup, _, params, _ = load_run(run)
    prompt = [5, 17, 9, 200, 33]
    ids = IdsTokenizer(pad_id=0, eos_id=1, bos_id=2)
    ours = ids.encode(sample(setup, params, ids, "5,17,9,200,33", max_new_tokens=8, temperature=0))
    with torch.no_grad():
        if name in SEQ2SEQ:  # the encoder reads prompt + eos, the decoder starts from bos (generate.py)
            out = model.generate(torch.tensor([prompt + [1]]), do_sample=False, max_new_tokens=8,
                                 decoder_start_token_id=2, eos_token_id=1, pad_token_id=0)[0, 1:].tolist()
        else:  # a plain document start: bos + prompt
            out = model.generate(torch.tensor([[2] + prompt]), do_sample=False, max_new_tokens=8, eos_token_id=1,
                                 pad_token_id=0)[0, len(prompt) + 1:].tolist()
    theirs = out[: out.index(1)] if 1 in out else out
    assert len(theirs) >= 4 and ours == theirs


# ---------------------------------------------------------------- trained by pretrax (muP folded), then exported

TRAIN = ["data.seq_len=32", "train.batch_size=8", "train.steps=3", "train.log_every=1", "train.eval_every=0",
         "train.eval_batches=1", "train.sample_tokens=0", "optim.warmup_steps=1", "optim.lr=1e-2",
         "checkpoint.async_save=false"]
# Llama-style (GQA, tied), muP with every multiplier on and depth transfer: trained, then exported (the
# other families' folding is proven by the muP imports above, whose exports match transformers too)
TRAINED = {"llama": TRAIN + MUP + [
    "model.d_model=48", "model.n_heads=3", "model.n_kv_heads=1", "model.n_layers=2", "model.d_ff=72",
    "model.rope_theta=5000", "parametrization.zero_init_query=false"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRAINED))
def test_trained_mup_model_exports_with_the_same_logprobs(name, tmp_path):
    from pretrax.train.loop import train

    cfg = config_lib.load(None, TRAINED[name] + [f"run.dir={tmp_path / 'run'}"])
    result = train(cfg, progress=False, stop_at=2)  # stopped before the end: no evaluation to compile
    assert result.final_step == 2
    out = str(tmp_path / "out")
    export(cfg.run.dir, out)
    auto = transformers.AutoModelForSeq2SeqLM if name in SEQ2SEQ else transformers.AutoModelForCausalLM
    loaded, info = auto.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ours = pretrax_logprobs(cfg.run.dir, name)
    assert ours.std() > 0.01  # trained away from the uniform start
    diff = max_diff(ours, hf_logprobs(loaded.eval(), name))
    print(f"{name} (muP, trained 2 steps): export max |dlogp| = {diff:.2e}")
    assert diff <= TOL


# ---------------------------------------------------------------- continued pretraining


@pytest.mark.slow
def test_pretrax_train_continues_from_an_import(hf, tmp_path):
    """`pretrax train RUN_DIR/config.yaml` resumes the step-0 checkpoint: its first loss is the imported
    model's loss on the first batch (the imported weights match transformers: the tests above)."""
    import optax

    from pretrax.data.pipeline import make_train_iterator
    from pretrax.train.loop import train
    from pretrax.train.step import batch_keys, logits_of, to_global

    hf_dir, _, _ = hf["llama"]
    run = str(tmp_path / "run")
    main(["import", hf_dir, run, "data.tokenizer=bytes", *TRAIN, "mesh.fsdp=2"])  # sharded over 2 ways
    cfg = config_lib.load(os.path.join(run, "config.yaml"))
    assert cfg.model.vocab_size == V and cfg.data.tokenizer == "bytes" and cfg.run.dir == run
    _, setup, _, params, step = load_run(run)
    assert step == 0
    data = make_train_iterator(cfg)
    batch = to_global(setup, next(data), batch_keys(cfg))
    data.close()
    logits = logits_of(nnx.merge(setup.graphdef, params), batch)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * batch["loss_mask"]
    expected = float(losses.sum() / batch["loss_mask"].sum())
    result = train(cfg, progress=False, stop_at=2)  # stopped before the end: no evaluation to compile
    assert result.start_step == 0 and result.final_step == 2
    assert abs(result.losses[1] - expected) < 1e-4 * expected
    assert result.losses[2] < result.losses[1]


# ---------------------------------------------------------------- SentencePiece through the exported tokenizer


@pytest.mark.slow
def test_sentencepiece_ids_identical_through_exported_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from pretrax.data.corpus import stdlib_corpus
    from pretrax.data.spm_train import train_sentencepiece
    from pretrax.data.tokenizer import SentencePieceTokenizer

    (tmp_path / "a.txt").write_text("".join(stdlib_corpus()[i] for i in range(0, 120, 3)), encoding="utf-8")
    spm_path = train_sentencepiece([str(tmp_path / "a.txt")], vocab_size=640, out=str(tmp_path / "tok.model"))
    hf_dir = tmp_path / "hf"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=640, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                                      num_attention_heads=2, eos_token_id=1, bos_token_id=2, pad_token_id=0)
    transformers.LlamaForCausalLM(config).save_pretrained(hf_dir)
    shutil.copy(spm_path, hf_dir / "tokenizer.model")
    run = str(tmp_path / "run")
    import_hf(str(hf_dir), run)
    cfg = config_lib.load(os.path.join(run, "config.yaml"))
    assert cfg.data.tokenizer == os.path.join(run, "tokenizer.model") and cfg.data.num_sentinels == 100
    out = str(tmp_path / "out")
    export(run, out)
    ours = SentencePieceTokenizer.from_file(cfg.data.tokenizer)
    theirs = AutoTokenizer.from_pretrained(out)
    text = "def greet(name):\n    return f'Hello, {name}!'  # café ünïcode\n\n\tx = [1, 2, 3]"
    ids = ours.encode(text)
    assert len(ids) > 10
    assert theirs(text, add_special_tokens=False)["input_ids"] == ids
    # special ids that disagree with config.json, or pieces that do not fit the vocabulary: ids only
    from pretrax.interop.hf_import import tokenizer_settings

    config = json.loads((hf_dir / "config.json").read_text())
    assert tokenizer_settings(str(hf_dir), config, 640)[1] == {"tokenizer": "tokenizer.model", "num_sentinels": 100}
    assert tokenizer_settings(str(hf_dir), {**config, "eos_token_id": 7}, 640) == (None, {"tokenizer": "none"})
    assert tokenizer_settings(str(hf_dir), config, 500) == (None, {"tokenizer": "none"})


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def run_cli(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("pretrax: error: "), err
    return err


def test_import_refuses_a_dir_without_config_json(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    err = run_cli(capsys, "import", str(tmp_path / "hf"), str(tmp_path / "run"))
    assert "config.json" in err and not (tmp_path / "run").exists()


def test_import_refuses_an_unsupported_architecture(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    err = run_cli(capsys, "import", str(tmp_path / "hf"), str(tmp_path / "run"))
    assert "GPT2LMHeadModel" in err and hf_families.supported() in err and not (tmp_path / "run").exists()


def test_import_names_a_tensor_whose_shape_disagrees_with_config_json(hf, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    src = hf["llama"][0]
    shutil.copytree(src, tmp_path / "hf")
    tensors = load_file(os.path.join(src, "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:70]
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    err = run_cli(capsys, "import", str(tmp_path / "hf"), str(tmp_path / "run"))
    assert "'model.layers.1.mlp.up_proj.weight'" in err and "[70, 48]" in err and "[72, 48]" in err
    assert not (tmp_path / "run").exists()


def test_import_refuses_a_run_dir_with_checkpoints(hf, capsys):
    hf_dir, _, run = hf["gpt"]
    before = {p: os.stat(os.path.join(dp, p)).st_mtime_ns for dp, _, fs in os.walk(run) for p in fs}
    err = run_cli(capsys, "import", hf_dir, run)
    assert "already has checkpoints" in err
    assert before == {p: os.stat(os.path.join(dp, p)).st_mtime_ns for dp, _, fs in os.walk(run) for p in fs}


def test_export_lists_the_steps_when_step_does_not_exist(hf, tmp_path, capsys):
    err = run_cli(capsys, "export", hf["gpt"][2], str(tmp_path / "out"), "--step", "7")
    assert "--step 7: " in err and "checkpoints are at steps 0" in err and not (tmp_path / "out").exists()


def test_export_refuses_an_out_dir_that_holds_a_model(hf, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    err = run_cli(capsys, "export", hf["gpt"][2], str(out))
    assert "already holds a model" in err and (out / "config.json").read_text() == "{}"
    assert sorted(os.listdir(out)) == ["config.json"]


@pytest.mark.slow
def test_export_names_the_feature_transformers_cannot_express(tmp_path, capsys):
    """A real step-0 checkpoint of a RoPE + LayerNorm decoder (Llama has RMSNorm only): refused by name."""
    from pretrax.interop.hf_import import fresh_state
    from pretrax.models import build_model
    from pretrax.parallel.mesh import make_mesh
    from pretrax.train import checkpoint as ckpt
    from pretrax.train.state import make_setup

    cfg = config_lib.load(None, ["model.norm=layernorm", "model.d_model=32", "model.n_heads=2", "model.n_layers=1",
                                 "model.d_ff=64", "model.vocab_size=400", f"run.dir={tmp_path / 'run'}"])
    setup = make_setup(cfg, make_mesh(cfg.mesh), 400)
    state = fresh_state(setup, nnx.state(build_model(cfg, 400, 0), nnx.Param), 0)
    with ckpt.open_manager(cfg.run.dir, cfg.checkpoint) as manager:
        ckpt.save(manager, 0, state, {}, cfg, force=True)
        ckpt.wait(manager)
    err = run_cli(capsys, "export", cfg.run.dir, str(tmp_path / "out"))
    assert "model.norm=layernorm with rotary positions cannot be exported" in err and "RMSNorm" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, feature", [
    (["model.norm=layernorm"], "model.norm=layernorm with rotary positions"),
    (["model.positions=none"], "model.positions=none"),
    (["model.activation=relu"], "model.activation=relu with rotary positions"),
    (["model.positions=learned", "model.norm=layernorm", "model.norm_position=post", "model.final_norm=false",
      "model.activation=gelu", "model.use_bias=true", "model.d_ff=100", "model.d_model=32"], "model.d_ff=100"),
    (["model.kind=encoder_decoder", "model.positions=relative", "model.use_bias=true"],
     "model.use_bias=true in the encoder-decoder"),
    (["model.kind=encoder_decoder", "model.positions=relative", "model.n_kv_heads=2"], "model.n_kv_heads=2"),
    (["model.moe.num_experts=4"], "model.moe.num_experts=4"),
])
def test_a_model_transformers_cannot_express_is_named(overrides, feature):
    cfg = config_lib.load(None, overrides)
    with pytest.raises(ConfigError, match="cannot be exported") as e:
        hf_families.family_of_model(cfg.model)
    assert str(e.value).startswith(feature)


@pytest.mark.slow
def test_training_and_interop_never_import_torch_transformers_or_google_cloud_storage(tmp_path):
    """Imports, and a real local run: tensorboardX would import torch and google-cloud-storage where they are
    installed (metrics.py stops it: 2.4 s and 0.5 s of every start)."""
    code = ("import sys, pretrax.cli, pretrax.train.loop, pretrax.generate\n"
            "from pretrax.interop import hf_import, hf_export\n"
            "from pretrax import config as config_lib\n"
            f"pretrax.train.loop.train(config_lib.load(None, {TINY + ['train.steps=1']!r} + sys.argv[1:]), "
            "progress=False)\n"
            "bad = [m for m in ('torch', 'transformers', 'google.cloud.storage') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code, f"run.dir={tmp_path / 'run'}"], check=True,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert (tmp_path / "run" / "tensorboard").is_dir()  # the writer was made


def test_ids_only_tokenizer_reads_and_writes_ids_and_refuses_text():
    ids = IdsTokenizer()
    assert ids.encode("5,17, 9") == [5, 17, 9] and ids.decode([5, 17, 9]) == "5,17,9"
    with pytest.raises(ConfigError, match="takes token ids such as 5,17,9"):
        ids.encode("hello")


def test_training_an_ids_only_import_is_refused_in_one_line(hf, capsys):
    run = hf["llama"][2]
    assert config_lib.load(os.path.join(run, "config.yaml")).data.tokenizer == "none"
    err = run_cli(capsys, "train", os.path.join(run, "config.yaml"))
    assert "data.tokenizer is none" in err
