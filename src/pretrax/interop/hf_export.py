"""`pretrax export RUN_DIR OUT_DIR [--step N]`: a run's checkpoint as a transformers model directory.

OUT_DIR gets config.json and model.safetensors (float32), which
AutoModelForCausalLM / AutoModelForSeq2SeqLM load with every weight used, and,
when the run's data.tokenizer is a SentencePiece model, that model
(tokenizer.model; spiece.model for T5) with a tokenizer_config.json. muP and
depth multipliers are folded into the weights (fold.py), so the export is a
plain model computing the same log-probabilities. A model no transformers
family expresses is refused, naming the feature, before any weight is read or
anything written; so is an OUT_DIR that already holds a model. The checkpoint is
loaded as generate and score load it (generate.load_run).
"""

from __future__ import annotations

import json

from pretrax import config as config_lib
from pretrax import storage
from pretrax.errors import ConfigError
from pretrax.interop import hf_families, params as params_lib
from pretrax.interop.fold import fold

MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


def hf_tensors(cfg: config_lib.Config, params) -> tuple[hf_families.Family, dict, dict]:
    """(family, config.json dict, {tensor name: float32 array}) of a run's params."""
    import numpy as np

    from pretrax.models import max_positions

    family = hf_families.family_of_model(cfg.model)
    flat, cfg = fold(params_lib.flatten(params, cfg.model.scan_layers), cfg)
    vocab = flat["embed.table"].shape[0]
    hf_config = family.config(cfg.model, vocab, max_positions(cfg))
    pieces: dict[str, list] = {}
    for link in family.links(cfg.model, hf_config):
        pieces.setdefault(link.hf, [None] * link.parts)[link.part] = link.to_hf(flat.pop(link.ours))
    assert not flat, f"pretrax weights without a {family.name} tensor: {sorted(flat)}"
    tensors = {name: np.ascontiguousarray(np.concatenate(p, axis=-1) if len(p) > 1 else p[0], np.float32)
               for name, p in pieces.items()}
    return family, hf_config, tensors


def check_out_dir(out_dir: str) -> None:
    held = [f for f in MODEL_FILES if storage.exists(storage.join(out_dir, f))]
    if held:
        raise ConfigError(f"OUT_DIR {out_dir!r} already holds a model ({', '.join(held)}); give an empty or new "
                          "directory (nothing is overwritten)")
    if storage.isfile(out_dir):
        raise ConfigError(f"OUT_DIR {out_dir!r} is a file; give a directory")


def export(run_dir: str, out_dir: str, step: int | None = None) -> str:
    """Write the transformers directory; returns a one-line summary."""
    from pretrax.interop.hf_import import require_safetensors

    require_safetensors()
    from safetensors.numpy import save

    check_out_dir(out_dir)
    from pretrax.generate import load_run

    cfg, _, tokenizer, params, step = load_run(run_dir, step, check=lambda c: hf_families.family_of_model(c.model))
    family, hf_config, tensors = hf_tensors(cfg, params)
    for key, name in (("pad_token_id", "pad_id"), ("eos_token_id", "eos_id"), ("bos_token_id", "bos_id")):
        hf_config[key] = int(getattr(tokenizer, name))
    if family.model_type == "t5":
        hf_config["decoder_start_token_id"] = int(tokenizer.bos_id)  # pretrax's decoder starts from bos
    hf_config["dtype"] = "float32"
    spm = getattr(tokenizer, "_proto", None)  # a SentencePiece model's bytes
    storage.makedirs(out_dir)
    storage.write_bytes(storage.join(out_dir, "model.safetensors"), save(tensors, metadata={"format": "pt"}))
    if spm is not None:
        name = "spiece.model" if family.model_type == "t5" else "tokenizer.model"
        storage.write_bytes(storage.join(out_dir, name), spm)
        storage.write_text(storage.join(out_dir, "tokenizer_config.json"), json.dumps(tokenizer_config(
            family, tokenizer), indent=2) + "\n")
    storage.write_text(storage.join(out_dir, "config.json"), json.dumps(hf_config, indent=2) + "\n")  # last: complete
    return (f"exported step {step} of {run_dir} as {family.architecture} ({len(tensors)} tensors"
            f"{', tokenizer' if spm is not None else ''}) to {out_dir}")


def tokenizer_config(family: hf_families.Family, tokenizer) -> dict:
    """What AutoTokenizer needs to read the SentencePiece model with pretrax's special ids."""
    sp = tokenizer.sp
    piece = lambda i: sp.id_to_piece(i)  # noqa: E731
    config = {"tokenizer_class": "T5Tokenizer" if family.model_type == "t5" else "LlamaTokenizer",
              "eos_token": piece(tokenizer.eos_id), "pad_token": piece(tokenizer.pad_id),
              "unk_token": piece(tokenizer.unk_id), "add_bos_token": False, "add_eos_token": False,
              "legacy": True, "add_prefix_space": False}
    if family.model_type == "t5":
        config["extra_ids"] = 0
    else:
        config["bos_token"] = piece(tokenizer.bos_id)
    return config
