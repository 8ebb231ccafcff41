"""The parameter-group table: one row per parameter tensor, read from its path and logical axes once.

The muP learning-rate factors, the weight-decay mask and the FLOPs parameter counts
all read this table, so a parameter's role is decided in one place (it was parsed
separately by each of them before) and training prints it at start-up.

  role       which tensors                                           decayed FLOPs side
  ---------  ------------------------------------------------------  ------- --------------------------
  vector     biases, norm gains (named bias / scale), < 2 axes       no      its block's
  embedding  tables indexed by token, position or relative-position  yes     none (a lookup); the tied
             bucket (first axis vocab, length or relpos_buckets)             token table: decoder
  readout    an untied kernel into the vocabulary                    yes     decoder
  router     an MoE layer's router (D -> experts; axis 'router')     yes     its block's
  hidden     every other kernel (experts' kernels included)          yes     its block's

The scan-over-layers axis ('layers') is never counted, so a row reads the same with
and without model.scan_layers. A q/k/v bias has two axes (heads x head_dim) and is
still a bias: its name says so. The LR factor of each role is parametrization.py's
(1/m for Adam's hidden matrices under muP, 1/sqrt(m) for Adafactor's). FLOPs side:
the tokens a parameter multiplies; an encoder-decoder's encoder weights and its
cross-attention key and value projections (they project the encoder's output) see
the encoder's tokens, everything else the decoder's (flops.py).

Routed experts (a first axis 'expert') multiply only the tokens routed to them: each row
records the share of its elements a token uses, experts_per_token / num_experts for an
expert's kernels and 1 otherwise, so `size(active=True)` counts the active parameters that
FLOPs and MFU use (Mixtral 8x7B: 12.9B of 46.7B). The router is a readout-shaped matrix
(growing width in, a fixed number of experts out) and takes muP's readout rules (moe.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import jax
from jax.sharding import PartitionSpec as P

from pretrax.models.parametrization import STANDARD, Parametrization

ROLES = ("vector", "embedding", "hidden", "router", "readout")  # the order the summary prints


@dataclasses.dataclass(frozen=True)
class ParamRow:
    path: str  # dotted, e.g. 'blocks.attn.query.kernel'
    shape: tuple[int, ...] | None  # None when the table was built from logical specs alone
    role: str  # vector | embedding | readout | hidden
    decayed: bool
    lr_mult: float  # factor on the optimizer's direction (not on the decay)
    flops_side: str | None  # 'encoder', 'decoder', or None for a lookup table
    active: float = 1.0  # the share of the elements one token multiplies (routed experts: k / E)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class ParamTable:
    """The rows in the parameters' flattening order; treedef rebuilds trees shaped like the parameters."""

    rows: tuple[ParamRow, ...]
    treedef: Any
    scales_lr: bool  # whether the optimizer takes per-parameter factors (parametrization.scales_lr)

    def tree(self, values: Iterable) -> Any:
        return jax.tree_util.tree_unflatten(self.treedef, list(values))

    def decay_mask(self) -> Any:
        """True for the tensors that get weight decay (optax's mask)."""
        return self.tree(r.decayed for r in self.rows)

    def lr_multipliers(self) -> Any | None:
        """Per-parameter factors on the optimizer's direction; None when every factor is 1 under SP
        (the optimizer is then plain optax.adamw, or Adafactor)."""
        return self.tree(r.lr_mult for r in self.rows) if self.scales_lr else None

    def size(self, *, side: str | None = "any", decayed: bool | None = None, active: bool = False) -> int:
        """Number of elements, of the rows on FLOPs `side` (None: lookups; 'any': all) and/or `decayed`;
        active: only those one token multiplies (routed experts count experts_per_token / num_experts)."""
        return round(sum(r.size * (r.active if active else 1.0) for r in self.rows
                         if (side == "any" or r.flops_side == side) and (decayed is None or r.decayed == decayed)))

    def summary(self) -> str:
        """One line per role: tensors, elements, weight decay, LR factor(s), FLOPs side(s) (lookup: none)."""
        lines = [f"  {'role':<10}{'tensors':>8}{'elements':>14}  decay  {'LR factor':<10} FLOPs side"]
        for role in ROLES:
            rows = [r for r in self.rows if r.role == role]
            if not rows:
                continue
            decay = "/".join(sorted({"yes" if r.decayed else "no" for r in rows}, reverse=True))
            lr = "/".join(f"{f:.4g}" for f in sorted({r.lr_mult for r in rows}))
            seen = {r.flops_side or "lookup" for r in rows}
            sides = "+".join(s for s in ("encoder", "decoder", "lookup") if s in seen)
            lines.append(f"  {role:<10}{len(rows):>8}{sum(r.size for r in rows):>14,}  {decay:<5}  {lr:<10} {sides}")
        return "parameter groups:\n" + "\n".join(lines)


def param_table(logical_specs: Any, abstract_params: Any = None, *, tie_embeddings: bool = False,
                parametrization: Parametrization = STANDARD, optimizer: str = "adamw",
                expert_share: float = 1.0) -> ParamTable:
    """The table of a model from its logical specs (nnx.get_partition_spec of the nnx.Param state) and,
    for the shapes, the abstract parameters; optimizer: optim.name, for the LR factors; expert_share: the
    share of the experts a token is routed to (model.moe: experts_per_token / num_experts)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(logical_specs, is_leaf=lambda s: isinstance(s, P))
    shapes = [x.shape for x in jax.tree.leaves(abstract_params)] if abstract_params is not None else [None] * len(flat)
    if len(shapes) != len(flat):
        raise ValueError(f"{len(shapes)} parameters but {len(flat)} logical specs")
    rows = []
    for (path, spec), shape in zip(flat, shapes):
        names = _names(path)
        role = _role(names[-1] if names else "", spec)
        routed = [a for a in spec if a != "layers"][:1] == ["expert"]
        rows.append(ParamRow(".".join(names), None if shape is None else tuple(shape), role, role != "vector",
                             parametrization.lr_mult(role, optimizer), _flops_side(names, role, tie_embeddings),
                             expert_share if routed else 1.0))
    return ParamTable(tuple(rows), treedef, parametrization.scales_lr)


def _names(path) -> tuple[str, ...]:
    """Dict keys and list indices of a tree path; drops the Variable's '.value' attribute."""
    return tuple(str(k.key) if hasattr(k, "key") else str(k.idx)
                 for k in path if hasattr(k, "key") or hasattr(k, "idx"))


def _role(name: str, spec: P) -> str:
    axes = [a for a in spec if a != "layers"]
    if name in ("bias", "scale") or len(axes) < 2:
        return "vector"
    if axes[0] in ("vocab", "length", "relpos_buckets"):
        return "embedding"
    if axes[-1] == "router":
        return "router"
    if "vocab" in axes:
        return "readout"
    return "hidden"


def _flops_side(names: tuple[str, ...], role: str, tie_embeddings: bool) -> str | None:
    if role == "embedding":  # a lookup; the tied token table is also the output layer's matmul
        return "decoder" if tie_embeddings and names[0] == "embed" else None
    if names[0] == "encoder" or (names[0] == "decoder" and "cross" in names and ("key" in names or "value" in names)):
        return "encoder"
    return "decoder"
