"""How init scales, forward multipliers and per-parameter learning rates depend on
width and depth: standard parametrization (sp) or maximal update (mup).

muP is the "Table 8" form of Tensor Programs V (Yang et al. 2022, arXiv
2203.03466), the one microsoft/mup implements, for Adam. With the width
multiplier m = d_model / base_d_model:

  role        what                                  init std          forward     Adam LR
  ----------  ------------------------------------  ----------------  ----------  --------------
  embedding   token / position tables, T5 relpos    init_std          x alpha_in  lr
  hidden      q, k, v, o, MLP kernels               sp_std / sqrt(m)  1           lr / m
  readout     untied output kernel                  init_std (or 0)   alpha_out/m lr
  vector      biases, norm gains                    0 / 1             1           lr
  attention   scores q.k * sqrt(base_head_dim) / head_dim (SP: q.k / sqrt(head_dim))

sp_std is what SP gives the matrix (init_std, or init_std / sqrt(2 n_layers) for
the projections into the residual stream), so the hidden init variance is
proportional to 1/fan_in with every hidden fan-in (d_model, d_ff, heads x
head_dim) assumed to grow by the same m. The base model is this model with
d_model = base_d_model: its head dim is base_d_model // n_heads when
model.head_dim is 0 (heads fixed, head dim grows) and model.head_dim otherwise
(head dim fixed; then the attention scale is SP's). With zero_init_query the
query kernels start at zero; with zero_init_readout an untied output kernel
does. Tied embeddings: the shared table keeps the embedding's rules; only the
readout multiplier alpha_out / m applies to the logits.

Weight decay (decoupled, train/optimizer.py) stays lr * weight_decay for every
matrix: the LR factor above scales the Adam direction only, as MuAdamW keeps
lr * wd constant.

Depth transfer (depth_alpha > 0, either kind), as in the CompleteP paper (Dey
et al. 2025, arXiv 2505.01618; alpha = 1) and depth-muP (Yang et al. 2023,
Tensor Programs VI, arXiv 2310.02244; alpha = 1/2): with r = n_layers /
base_n_layers every residual branch (attention, cross-attention, MLP output)
is multiplied by r^-alpha and the hidden matrices' Adam LR by r^(alpha - 1);
the residual projections start at init_std / sqrt(2 base_n_layers) (the base
depth, so depth enters through the multiplier alone). Other CompleteP rules
(Adam epsilon, norm-gain and bias LRs) are not applied.

Adafactor (optim.name: adafactor) steps relative to each tensor's RMS, which for
a hidden matrix is its muP init std, ∝ 1/sqrt(m); so its hidden LR factor is
1/sqrt(m) (times the depth factor) where Adam's is 1/m, and the step's entries
come out ∝ 1/m as muP asks. Every other role keeps factor 1 (docs/mup.md).

At m = 1 and r = 1, with the zero inits off, every number here is exactly SP's.
Which role a parameter has is decided by the parameter-group table (param_groups.py).
"""

from __future__ import annotations

import dataclasses
import math

import jax

from pretrax.config import ModelSection, ParametrizationSection


@dataclasses.dataclass(frozen=True)
class Parametrization:
    """The resolved numbers for one model (hashable: it is static model metadata)."""

    mup: bool = False
    width_mult: float = 1.0  # m = d_model / base_d_model
    head_dim_mult: float = 1.0  # head_dim / base head_dim
    depth_mult: float = 1.0  # r = n_layers / base_n_layers; 1 when depth transfer is off
    depth_alpha: float = 0.0
    alpha_in: float = 1.0
    alpha_out: float = 1.0
    zero_init_query: bool = False
    zero_init_readout: bool = False

    # ---------------------------------------------------------------- init
    def hidden_std(self, std: float) -> float:
        """Init std of a hidden matrix whose SP std is `std`: variance / m under muP."""
        return std / math.sqrt(self.width_mult) if self.mup else std

    def residual_std(self, init_std: float, n_layers: int) -> float:
        """Init std of the projections that write into the residual stream.

        Each block adds two such outputs (attention, MLP) to the stream, so at init its
        variance grows with 2 * n_layers; scaling these weights by 1/sqrt(2 * n_layers),
        as GPT-2 does, keeps the stream's scale independent of depth. Under depth
        transfer the base depth is used instead (the branch multiplier carries depth).
        """
        return self.hidden_std(init_std / math.sqrt(2 * n_layers / self.depth_mult))

    def query_std(self, init_std: float) -> float:
        return 0.0 if self.mup and self.zero_init_query else self.hidden_std(init_std)

    def readout_std(self, init_std: float) -> float:
        return 0.0 if self.mup and self.zero_init_readout else init_std

    # ---------------------------------------------------------------- forward multipliers
    @property
    def input_mult(self) -> float:
        return self.alpha_in if self.mup else 1.0

    @property
    def output_mult(self) -> float:
        return self.alpha_out / self.width_mult if self.mup else 1.0

    @property
    def branch_mult(self) -> float:
        return self.depth_mult ** -self.depth_alpha

    def attention_scale(self, head_dim: int) -> float:
        """sqrt(base_head_dim) / head_dim under muP (1/d attention, equal to SP's at the base width)."""
        return head_dim**-0.5 / math.sqrt(self.head_dim_mult) if self.mup else head_dim**-0.5

    # ---------------------------------------------------------------- learning rates
    def lr_mult(self, role: str, optimizer: str = "adamw") -> float:
        """Factor on the optimizer's direction (not on weight decay) of a parameter of this role.

        Adam: 1/m for hidden matrices. Adafactor's step is already scaled by the tensor's RMS,
        ∝ 1/sqrt(m) for a hidden matrix under muP init, so it needs only the remaining 1/sqrt(m).
        """
        if role != "hidden":
            return 1.0
        width = 1.0
        if self.mup:
            width = 1.0 / math.sqrt(self.width_mult) if optimizer == "adafactor" else 1.0 / self.width_mult
        return width * self.depth_mult ** (self.depth_alpha - 1.0)

    @property
    def scales_lr(self) -> bool:
        """Whether the optimizer takes per-parameter factors (always under mup, even when they are all 1)."""
        return self.mup or self.depth_alpha > 0


STANDARD = Parametrization()


def resolve(model: ModelSection, section: ParametrizationSection | None) -> Parametrization:
    """The numbers for `model` under `section` (None: standard)."""
    if section is None:
        return STANDARD
    depth_on = section.depth_alpha > 0
    depth_mult = model.n_layers / (section.base_n_layers or model.n_layers) if depth_on else 1.0
    if section.kind == "sp":
        return dataclasses.replace(STANDARD, depth_mult=depth_mult, depth_alpha=section.depth_alpha)
    base = section.base_d_model or model.d_model
    base_head_dim = model.head_dim or base // model.n_heads
    return Parametrization(
        mup=True,
        width_mult=model.d_model / base,
        head_dim_mult=model.head_size / base_head_dim,
        depth_mult=depth_mult,
        depth_alpha=section.depth_alpha,
        alpha_in=section.alpha_in,
        alpha_out=section.alpha_out,
        zero_init_query=section.zero_init_query,
        zero_init_readout=section.zero_init_readout,
    )


def scale(x: jax.Array, mult: float) -> jax.Array:
    """x * mult, skipped (nothing traced) when mult is 1, so SP's program is unchanged."""
    return x if mult == 1.0 else x * mult
