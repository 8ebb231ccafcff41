"""The fine-tuning model, loss and jitted steps (GPT-1 §3.2).

The pretrained decoder reads each of an example's K sequences (B, K, T) -> (B*K, T); the final
hidden state at the extract token, h (B, K, D), feeds one linear head W_y:

    classification, entailment   logits = h_0 W + b                      (B, C)
    similarity                   logits = (h_0 + h_1) W + b              (B, C)   both orders summed
    multiple choice              logits = h_k w + b, one per option      (B, K)   softmax over options

L2 = cross-entropy of the label; L1 = the next-token loss on the same sequences (every real target
token, the specials included); the loss is L3 = L2 + λ·L1 (λ = finetune.lm_weight, 0.5 in the paper).
Dropout: the run's model.dropout inside the decoder and finetune.classifier_dropout on h, with a key
from the fine-tuning seed folded with the step, so a resumed run draws the same masks.
The params are {"lm": the decoder's nnx.State, "head": {"kernel" (D, C), "bias" (C,)}}; the head's
kernel names its axes ('embed', None), so mesh.rules lays it out as the embedding's rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pretrax.models.layers import dropout
from pretrax.parallel.activations import sharding_context
from pretrax.parallel.rules import batch_sharding, tree_shardings
from pretrax.train.optimizer import learning_rate_schedule, make_optimizer, opt_state_shardings

BATCH = {"tokens": 3, "segment_ids": 3, "extract": 2, "label": 1, "weight": 1}  # key -> ndim


@dataclasses.dataclass(frozen=True)
class FinetuneSetup:
    cfg: Any  # the pretrained run's Config (mesh, rules, model)
    mesh: Any
    kind: str  # task type
    head_outputs: int  # classes, or 1 for multiple choice
    lm_weight: float
    classifier_dropout: float
    model_dropout: float
    lm_graphdef: Any
    logical_specs: Any
    tx: optax.GradientTransformation
    schedule: Callable
    state_shardings: dict
    abstract_params: Any

    def abstract_state(self) -> dict:
        """ShapeDtypeStructs of the whole state with their target shardings (used to restore)."""
        shapes = jax.eval_shape(lambda lm: self._init(lm, 0), self.abstract_params["lm"])
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.state_shardings)

    def _init(self, lm_params: Any, seed: int) -> dict:
        d_model = self.cfg.model.d_model
        key = jax.random.key(seed)
        kernel = 0.02 * jax.random.normal(jax.random.fold_in(key, 0), (d_model, self.head_outputs), jnp.float32)
        params = {"lm": lm_params, "head": {"kernel": kernel, "bias": jnp.zeros((self.head_outputs,), jnp.float32)}}
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params),
                "rng": jax.random.key_data(jax.random.fold_in(key, 1))}


def make_setup(cfg, mesh, lm_graphdef, lm_abstract_params, lm_specs, *, kind: str, head_outputs: int,
               lm_weight: float, classifier_dropout: float, optim, total_steps: int) -> FinetuneSetup:
    """Shardings of the whole fine-tuning state from the run's rules; optim: an OptimSection (lr, warmup, ...)."""
    head_specs = {"kernel": P("embed", None), "bias": P(None)}
    logical_specs = {"lm": lm_specs, "head": head_specs}
    d = cfg.model.d_model
    abstract_params = {"lm": lm_abstract_params,
                       "head": {"kernel": jax.ShapeDtypeStruct((d, head_outputs), jnp.float32),
                                "bias": jax.ShapeDtypeStruct((head_outputs,), jnp.float32)}}
    rules = dict(cfg.mesh.rules)
    param_shardings = tree_shardings(abstract_params, logical_specs, mesh, rules)
    tx = make_optimizer(optim, total_steps, logical_specs)  # one LR for every weight; decay as pretraining's table
    replicated = NamedSharding(mesh, P())
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = opt_state_shardings(tx, abstract_opt, abstract_params, param_shardings, replicated)
    shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings, "rng": replicated}
    return FinetuneSetup(cfg, mesh, kind, head_outputs, lm_weight, classifier_dropout, cfg.model.dropout,
                         lm_graphdef, logical_specs, tx, learning_rate_schedule(optim, total_steps), shardings,
                         abstract_params)


def init_state(setup: FinetuneSetup, lm_params: Any, seed: int) -> dict:
    """The fine-tuning state around the pretrained weights, every array created in its sharded place."""
    return jax.jit(lambda lm: setup._init(lm, seed), out_shardings=setup.state_shardings)(lm_params)


def forward(setup: FinetuneSetup, params: Any, batch: dict, key: jax.Array | None = None):
    """(task logits (B, C) or (B, K), LM logits (B*K, T, V)) for a batch (B, K, T); key: dropout's or None."""
    tokens = batch["tokens"]
    B, K, T = tokens.shape
    model_key, head_key = (None, None) if key is None else tuple(jax.random.split(key, 2))
    lm = nnx.merge(setup.lm_graphdef, params["lm"])
    flat_segments = batch["segment_ids"].reshape(B * K, T)
    h = lm.hidden_states(tokens.reshape(B * K, T), segment_ids=jnp.maximum(flat_segments, 1),  # padding: causal
                         dropout_key=model_key if setup.model_dropout else None)  # (B*K, T, D)
    lm_logits = lm.readout(h)  # (B*K, T, V)
    D = h.shape[-1]
    picked = jnp.take_along_axis(h.reshape(B, K, T, D), batch["extract"][:, :, None, None], axis=2)[:, :, 0]  # (B,K,D)
    picked = dropout(picked.astype(jnp.float32), setup.classifier_dropout, head_key)
    head = params["head"]
    if setup.kind == "similarity":
        logits = (picked[:, 0] + picked[:, 1]) @ head["kernel"] + head["bias"]  # (B, C)
    elif setup.kind == "multiple_choice":
        logits = (picked @ head["kernel"] + head["bias"])[..., 0]  # (B, K)
    else:
        logits = picked[:, 0] @ head["kernel"] + head["bias"]  # (B, C)
    return logits, lm_logits


def loss_terms(setup: FinetuneSetup, params: Any, batch: dict, key: jax.Array | None = None) -> dict:
    """Summed task CE, LM CE and counts, so that batches (and shards) add up: loss = task + λ·lm per mean."""
    logits, lm_logits = forward(setup, params, batch, key)
    weight = batch["weight"]
    task_ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # (B,)
    B, K, T = batch["tokens"].shape
    tokens = batch["tokens"].reshape(B * K, T)
    mask = batch["segment_ids"].reshape(B * K, T)[:, 1:].astype(jnp.float32)  # a real token follows
    mask = mask * jnp.repeat(weight, K)[:, None]
    lm_ce = optax.softmax_cross_entropy_with_integer_labels(lm_logits[:, :-1], tokens[:, 1:])  # (B*K, T-1)
    return {"task_sum": jnp.sum(task_ce * weight), "examples": jnp.sum(weight),
            "lm_sum": jnp.sum(lm_ce * mask), "lm_tokens": jnp.sum(mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weight)}


def combined_loss(setup: FinetuneSetup, terms: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(L3, L2, L1): mean task CE per example, mean LM CE per target token, L3 = L2 + λ·L1."""
    task = terms["task_sum"] / jnp.maximum(terms["examples"], 1.0)
    lm = terms["lm_sum"] / jnp.maximum(terms["lm_tokens"], 1.0)
    return task + setup.lm_weight * lm, task, lm


def dropout_key(setup: FinetuneSetup, state: dict) -> jax.Array | None:
    if setup.model_dropout == 0 and setup.classifier_dropout == 0:
        return None
    return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def make_train_step(setup: FinetuneSetup) -> Callable[[dict, dict], tuple[dict, dict]]:
    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        def objective(params):
            terms = loss_terms(setup, params, batch, dropout_key(setup, state))
            loss, task, lm = combined_loss(setup, terms)
            return loss, (task, lm, terms)

        (loss, (task, lm, terms)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = setup.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "task_loss": task, "lm_loss": lm, "grad_norm": optax.tree.norm(grads),
                   "accuracy": terms["correct"] / jnp.maximum(terms["examples"], 1.0), "lr": setup.schedule(state["step"])}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": state["rng"]}, metrics

    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(_sharded(setup, step), in_shardings=(setup.state_shardings, batch_shardings(setup)),
                   out_shardings=(setup.state_shardings, replicated), donate_argnums=(0,))


def make_eval_step(setup: FinetuneSetup) -> Callable[[Any, dict], dict]:
    """Summed terms of one held-out batch (no dropout)."""
    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(_sharded(setup, lambda params, batch: loss_terms(setup, params, batch)),
                   in_shardings=(setup.state_shardings["params"], batch_shardings(setup)), out_shardings=replicated)


def _sharded(setup: FinetuneSetup, fn: Callable) -> Callable:
    def traced(*args):
        with sharding_context(setup.mesh, setup.cfg.mesh.rules):
            return fn(*args)
    return traced


def batch_shardings(setup: FinetuneSetup) -> dict:
    rules = dict(setup.cfg.mesh.rules)
    return {k: batch_sharding(setup.mesh, rules, ndim) for k, ndim in BATCH.items()}


def to_global(setup: FinetuneSetup, host_batch: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(s, host_batch[k]) for k, s in batch_shardings(setup).items()}
