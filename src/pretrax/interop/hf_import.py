"""`pretrax import HF_DIR RUN_DIR [key=value ...]`: a transformers model directory as a pretrax run.

RUN_DIR gets config.yaml and a step-0 checkpoint written by the project's own
checkpoint code (train/checkpoint.py), so `pretrax train RUN_DIR/config.yaml`
resumes from it as from any checkpoint of its own: the weights, a fresh
optimizer state, and the data iterator at its start. The config is
config.json's architecture (hf_families.py) plus the overrides (data.*,
train.*, optim.*, parametrization.*, ...; a model.* override may only change
how the same weights are computed, such as model.scan_layers or model.remat).
Under a parametrization.* override (muP, depth transfer) the weights are
divided by its multipliers (fold.py, inverted), so the run computes what the
HF model computes and trains on with muP's learning rates. The weights are
placed on the config's mesh as they are read, and restore on any other.

A SentencePiece tokenizer.model / spiece.model in HF_DIR is copied into
RUN_DIR and becomes data.tokenizer when pretrax can use it (an eos id, pad/eos
ids that agree with config.json, its pieces plus sentinels within the
vocabulary); otherwise data.tokenizer is none (token ids only).

Everything is checked before anything is written: config.json, the
architecture, every tensor's presence and shape, an existing checkpoint in
RUN_DIR (refused, nothing touched).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from pretrax import config as config_lib
from pretrax import storage
from pretrax.errors import CheckpointError, ConfigError
from pretrax.interop import hf_families, params as params_lib
from pretrax.interop.fold import fold
from pretrax.models.family import FAMILIES

# Tensors transformers writes that hold nothing pretrax needs: tied copies of the shared embedding, T5's
# unused cross-attention bias, rotary frequency and causal-mask buffers of older checkpoints.
IGNORED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$|EncDecAttention\.relative_attention_bias|"
                     r"\.inv_freq$|\.attn\.(bias|masked_bias)$")
# model.* keys an override may change: how the same weights are computed, stored or trained
FREE_MODEL_KEYS = frozenset({"scan_layers", "remat", "attention", "dropout", "param_dtype", "dtype", "init_std",
                             "residual_init_scaling"})


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise ConfigError(f"HF_DIR {hf_dir!r} is not a directory; give a directory written by save_pretrained")
    if not os.path.isfile(path):
        raise ConfigError(f"{hf_dir!r} has no config.json; give a directory written by save_pretrained "
                          "(config.json + model.safetensors)")
    try:
        with open(path, encoding="utf-8") as f:
            c = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(c, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return c


def require_safetensors() -> None:
    """One line instead of a traceback when the hf extra is not installed."""
    try:
        import safetensors  # noqa: F401
    except ImportError:
        raise ConfigError("pretrax import and export read and write safetensors, which is not installed; "
                          "pip install 'pretrax[hf]' (or: pip install safetensors)") from None


class Weights:
    """The tensors of model.safetensors (or the shards model.safetensors.index.json lists), read on demand."""

    def __init__(self, hf_dir: str):
        require_safetensors()
        from safetensors import safe_open

        single, index = os.path.join(hf_dir, "model.safetensors"), os.path.join(hf_dir, "model.safetensors.index.json")
        if os.path.isfile(single):
            files = [single]
        elif os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted({os.path.join(hf_dir, v) for v in json.load(f)["weight_map"].values()})
        else:
            raise ConfigError(f"{hf_dir!r} has no model.safetensors; save the model with save_pretrained "
                              "(safetensors; pytorch_model.bin is not read)")
        self._where = {}
        for path in files:
            with safe_open(path, framework="numpy") as f:
                self._where.update({name: path for name in f.keys()})
        self.names = set(self._where)
        self.hf_dir = hf_dir

    def shape(self, name: str) -> tuple[int, ...]:
        from safetensors import safe_open

        with safe_open(self._where[name], framework="numpy") as f:
            return tuple(f.get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(self._where[name], framework="flax") as f:  # flax: reads bfloat16 too
            return np.asarray(f.get_tensor(name), np.float32)


def hf_model_config(hf_dir: str, overrides: list[str] | tuple[str, ...] = (), run_dir: str | None = None):
    """(family, config.json, weights, tokenizer source, Config) of HF_DIR, checked; nothing written."""
    c = read_hf_config(hf_dir)
    family = hf_families.family_of_config(c, os.path.join(hf_dir, "config.json"))
    weights = Weights(hf_dir)
    model = family.model(c, weights.names)
    raw: dict = {"model": model, "data": {}}
    if run_dir is not None:
        raw["run"] = {"dir": run_dir}
    raw["data"]["objective"] = FAMILIES[model["kind"]].default_objective  # T5: span corruption; ul2 by override
    if model["positions"] == "learned":
        raw["data"]["seq_len"] = min(config_lib.DataSection.seq_len, model["max_seq_len"])
    source, data = tokenizer_settings(hf_dir, c, model["vocab_size"])
    raw["data"].update(data)
    cfg = config_lib.from_dict(raw, overrides)
    for key, value in model.items():
        if key not in FREE_MODEL_KEYS and getattr(cfg.model, key) != value:
            raise ConfigError(f"model.{key}={getattr(cfg.model, key)!r} does not fit the imported weights "
                              f"(config.json gives {value!r}); only {', '.join(sorted(FREE_MODEL_KEYS))} may change")
    return family, c, weights, source, cfg


def tokenizer_settings(hf_dir: str, c: dict, vocab_size: int) -> tuple[str | None, dict]:
    """(the SentencePiece file to copy or None, data.* values) for HF_DIR's tokenizer."""
    from pretrax.data.tokenizer import NUM_SENTINELS, SentencePieceTokenizer

    for name in ("tokenizer.model", "spiece.model"):
        path = os.path.join(hf_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            tok = SentencePieceTokenizer.from_file(path, num_sentinels=0)
        except ConfigError:  # no eos id, or not a SentencePiece model
            break
        agree = all(c.get(key) in (None, getattr(tok, attr)) for key, attr in (("eos_token_id", "eos_id"),
                                                                                ("pad_token_id", "pad_id")))
        sentinels = min(NUM_SENTINELS, vocab_size - tok.base_vocab_size)
        if agree and sentinels >= 0:
            return path, {"tokenizer": name, "num_sentinels": sentinels}
        break
    return None, {"tokenizer": "none"}


def import_hf(hf_dir: str, run_dir: str, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Make RUN_DIR from HF_DIR; returns a one-line summary."""
    import jax

    from pretrax.data.pipeline import make_train_iterator
    from pretrax.parallel.mesh import make_mesh
    from pretrax.train import checkpoint as ckpt
    from pretrax.train.checkpoint_verify import checkpoint_dir
    from pretrax.train.loop import write_config
    from pretrax.train.state import make_setup

    family, c, weights, spm_path, cfg = hf_model_config(hf_dir, overrides, run_dir)
    run_dir = cfg.run.dir
    if storage.isdir(checkpoint_dir(run_dir)) and storage.listdir(checkpoint_dir(run_dir)):
        raise CheckpointError(f"run dir {run_dir!r} already has checkpoints ({checkpoint_dir(run_dir)}); import "
                              "into a new run dir (nothing was changed)")
    tokenizer_file = None
    if cfg.data.tokenizer != "none" and spm_path is not None and cfg.data.tokenizer == os.path.basename(spm_path):
        tokenizer_file = storage.join(storage.absolute(run_dir), os.path.basename(spm_path))
        cfg = cfg.replace(**{"data.tokenizer": tokenizer_file})
    setup = make_setup(cfg, make_mesh(cfg.mesh), cfg.model.vocab_size)
    check_tokenizer(cfg, spm_path, tokenizer_file)
    flat = read_weights(family, c, weights, cfg, setup)
    params = params_lib.unflatten(flat, setup.abstract_params, setup.state_shardings["params"], cfg.model.scan_layers)

    # the data iterator at its start, read with the tokenizer where it is now (the state holds no path and
    # no tokenizer: ids only has no sentinels to build an objective with, so bytes stands in)
    here = cfg if tokenizer_file is None else cfg.replace(**{"data.tokenizer": spm_path})
    if cfg.data.tokenizer == "none":
        here = cfg.replace(**{"data.tokenizer": "bytes", "data.num_sentinels": 100})
    data = make_train_iterator(here, process_index=jax.process_index(), process_count=jax.process_count())
    data_state = ckpt.gather_data_state(data)
    data.close()

    state = fresh_state(setup, params, cfg.run.seed)
    storage.makedirs(run_dir)
    if tokenizer_file is not None:
        with open(spm_path, "rb") as f:
            storage.write_bytes(tokenizer_file, f.read())
    write_config(cfg, run_dir)
    manager = ckpt.open_manager(run_dir, cfg.checkpoint)
    try:
        ckpt.save(manager, 0, state, data_state, cfg, force=True)
        ckpt.wait(manager)
    finally:
        manager.close()
    tok = f"data.tokenizer {os.path.basename(tokenizer_file)}" if tokenizer_file else f"data.tokenizer {cfg.data.tokenizer}"
    return (f"imported {family.architecture} from {hf_dir} into {run_dir} (step 0, {tok}); continue with "
            f"`pretrax train {storage.join(run_dir, 'config.yaml')}`")


def check_tokenizer(cfg: config_lib.Config, spm_path: str | None, tokenizer_file: str | None) -> None:
    """The data.tokenizer of the config must fit the model's vocabulary."""
    from pretrax.data.tokenizer import config_tokenizer

    data = cfg.data
    if tokenizer_file is not None:
        data = config_lib.from_dict(cfg.to_dict(), [f"data.tokenizer={spm_path}"]).data
    tok = config_tokenizer(data)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"data.tokenizer {cfg.data.tokenizer!r} has {tok.vocab_size} ids (with "
                          f"data.num_sentinels={cfg.data.num_sentinels}), more than the model's vocab_size "
                          f"{cfg.model.vocab_size}; use fewer data.num_sentinels or another tokenizer")


def read_weights(family: hf_families.Family, c: dict, weights: Weights, cfg: config_lib.Config,
                 setup) -> dict[str, np.ndarray]:
    """{pretrax per-layer name: array} from the HF tensors, each checked against config.json's shapes."""
    shapes = params_lib.shapes(setup.abstract_params, cfg.model.scan_layers)
    flat, used = {}, set()
    links = family.links(cfg.model, c)
    cache: dict[str, np.ndarray] = {}
    for link in links:
        if link.hf not in weights.names:
            raise ConfigError(f"{weights.hf_dir}: tensor {link.hf!r} is missing; config.json describes a "
                              f"{family.name} that has it")
        want, have = link.hf_shape(shapes[link.ours]), weights.shape(link.hf)
        if want != have:
            raise ConfigError(f"{weights.hf_dir}: tensor {link.hf!r} has shape {list(have)}, config.json gives "
                              f"{list(want)}")
        if link.hf not in cache:
            cache[link.hf] = weights.read(link.hf)
        flat[link.ours] = link.from_hf(cache[link.hf], shapes[link.ours])
        used.add(link.hf)
    unused = sorted(n for n in weights.names - used if not IGNORED.search(n)
                    and not (n == "lm_head.weight" and cfg.model.tie_embeddings))
    if unused:
        raise ConfigError(f"{weights.hf_dir}: tensors pretrax's {family.name} has no place for: "
                          f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}")
    missing = set(shapes) - set(flat)
    assert not missing, f"pretrax weights no {family.name} tensor fills: {sorted(missing)}"
    return fold(flat, cfg, inverse=True)[0]  # under a muP override: the same function with its multipliers


def fresh_state(setup, params, seed: int) -> dict:
    """The train state a run starting from `params` has: a fresh optimizer state, step 0, the run's rng
    (as train/state.py's _init derives it), each on its sharding; only the optimizer's init is compiled."""
    import jax
    import jax.numpy as jnp

    sh = setup.state_shardings
    return {
        "step": jax.device_put(jnp.zeros((), jnp.int32), sh["step"]),
        "params": params,
        "opt_state": jax.jit(setup.tx.init, out_shardings=sh["opt_state"])(params),
        "rng": jax.device_put(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)), sh["rng"]),
    }
