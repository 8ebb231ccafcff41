"""`pretrax coordcheck`: the muP coordinate check (Tensor Programs V, section 7; as
microsoft/mup's coord_check.py does it).

For sp and mup, the config's model is built at each of several widths and
trained a few Adam steps on real batches from the data pipeline; before the
first step and after each one, the mean |x| of every layer's output is
measured on a fixed probe batch (the first one): the embedding output, each
block's attention (and cross-attention) and MLP outputs as added to the
residual stream, and the logits. Under muP these curves are flat in width; under
SP the hidden layers' outputs grow with width once training moves the weights.

Widths: n_heads stays the config's and the head dim grows with width (the case
muP's 1/head_dim attention is for); d_ff keeps its ratio to d_model. muP's
base width is parametrization.base_d_model, or the smallest width when 0.
The optimizer runs without warmup, decay schedule or clipping (clipping couples
all layers), one device, no scan/remat (the probe reads each layer's output
through nnx.capture; the model records them only inside a capture).
"""

from __future__ import annotations

import csv
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax import storage
from pretrax.config import Config
from pretrax.data.pipeline import make_train_iterator
from pretrax.data.tokenizer import config_tokenizer
from pretrax.errors import ConfigError
from pretrax.plan import make_plan
from pretrax.train.state import state_from_key
from pretrax.train.step import logits_of, make_train_step, to_global

KINDS = ("sp", "mup")


@dataclasses.dataclass
class CoordCheck:
    """coords[kind][step][layer] = mean |x| per width (same order as widths); step 0 is at init."""

    widths: list[int]
    steps: int
    coords: dict[str, list[dict[str, list[float]]]]

    def slope(self, kind: str, step: int, layer: str) -> float:
        """Least-squares slope of log(mean |x|) against log(width): 0 flat, 0.5 grows as sqrt(width)."""
        y = np.log(np.maximum(self.coords[kind][step][layer], 1e-30))
        return float(np.polyfit(np.log(self.widths), y, 1)[0])

    def slopes(self, step: int | None = None) -> dict[str, dict[str, float]]:
        """{kind: {layer: slope}} at `step` (default the last)."""
        step = self.steps if step is None else step
        return {k: {layer: self.slope(k, step, layer) for layer in self.coords[k][step]} for k in self.coords}


def parse_widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"--widths must be comma-separated integers, e.g. 128,256,512, got {text!r}") from None
    if len(widths) < 2 or any(w < 1 for w in widths) or len(set(widths)) != len(widths):
        raise ConfigError(f"--widths needs two or more distinct positive widths, got {text!r}")
    return sorted(widths)


def width_config(cfg: Config, width: int, kind: str, base: int) -> Config:
    """The config at `width` under `kind`: heads fixed, head dim and d_ff (and an expert's d_ff) scaled with width."""
    m = cfg.model
    if width % m.n_heads:
        raise ConfigError(f"coordcheck width {width} is not divisible by model.n_heads ({m.n_heads}); "
                          f"use widths that are multiples of {m.n_heads}")
    return cfg.replace(**{
        "model.d_model": width,
        "model.head_dim": 0,
        "model.d_ff": max(1, round(width * m.d_ff / m.d_model)),
        "model.moe.d_ff": round(width * m.moe.d_ff / m.d_model),  # 0 (experts as wide as d_ff) stays 0
        "model.scan_layers": False,
        "model.remat": "none",
        "parametrization.kind": kind,
        "parametrization.base_d_model": base,
        "optim.warmup_steps": 0,
        "optim.schedule": "constant",
        "optim.clip_norm": 0.0,
        "train.grad_accum": 1,
        "data.num_workers": 0,
        "data.prefetch": 0,
        "mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1,
    })


def layer_coords(model, batch: dict) -> dict[str, jax.Array]:
    """Mean |x| of every output the model records (layers.record), keyed by dotted module path."""
    _, captured = nnx.capture(logits_of, nnx.Intermediate)(model, batch)
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(captured):
        keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
        name = ".".join(str(k) for k in keys if isinstance(k, (str, int)) and k != "value")
        name = name.rsplit(".", 1)[0] if isinstance(keys[-1], int) else name  # drop sow's tuple index
        out[name] = jnp.mean(jnp.abs(x.astype(jnp.float32)))
    return out


def _one_width(cfg: Config, tokenizer, batches: list[dict], steps: int, seeds: list[int]
               ) -> list[dict[str, float]]:
    """[step][layer] -> mean |x| averaged over the seeds; one compile of each function for all seeds."""
    setup = make_plan(cfg, devices=jax.devices()[:1], tokenizer=tokenizer).setup
    train_step = make_train_step(setup)
    probe = jax.jit(lambda params, batch: layer_coords(nnx.merge(setup.graphdef, params), batch))
    # the seed is an argument, so all seeds share one compile; rbg keys compile about twice as fast as threefry
    # on CPU (same distributions, other draws than `pretrax train` makes for the same seed)
    init = jax.jit(lambda key: state_from_key(setup, key), out_shardings=setup.state_shardings)
    probe_batch = to_global(setup, batches[0])
    runs = []
    for seed in seeds:
        state = init(jax.random.key(seed, impl="rbg"))
        coords = [probe(state["params"], probe_batch)]
        for t in range(steps):
            state, _ = train_step(state, to_global(setup, batches[t]))
            coords.append(probe(state["params"], probe_batch))
        runs.append(jax.device_get(coords))
    return [{k: float(np.mean([r[t][k] for r in runs])) for k in runs[0][t]} for t in range(steps + 1)]


def coordcheck(cfg: Config, widths: list[int], steps: int, *, seeds: int = 1, log=None) -> CoordCheck:
    """Train sp and mup at each width for `steps` Adam steps; mean |x| averaged over `seeds` model seeds."""
    if steps < 1 or seeds < 1:
        raise ConfigError(f"--steps and --seeds must be >= 1, got {steps} and {seeds}")
    base = cfg.parametrization.base_d_model or min(widths)
    configs = {(k, w): width_config(cfg, w, k, base) for k in KINDS for w in widths}  # every width checked first
    tokenizer = config_tokenizer(cfg.data)
    data = make_train_iterator(configs["sp", widths[0]])  # the data do not depend on width or kind
    try:
        batches = [next(data) for _ in range(steps)]
    finally:
        data.close()
    coords: dict[str, list[dict[str, list[float]]]] = {}
    for kind in KINDS:
        coords[kind] = [{} for _ in range(steps + 1)]
        for width in widths:
            run = _one_width(configs[kind, width], tokenizer, batches, steps, [cfg.run.seed + s for s in range(seeds)])
            for t in range(steps + 1):
                for layer, value in run[t].items():
                    coords[kind][t].setdefault(layer, []).append(value)
            if log:
                log(f"{kind} width {width}: done")
    return CoordCheck(widths, steps, coords)


# ---------------------------------------------------------------- outputs


def table_csv(result: CoordCheck) -> str:
    """One row per (kind, step, layer, width)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "step", "layer", "width", "mean_abs"])
    for kind, per_step in result.coords.items():
        for t, layers in enumerate(per_step):
            for layer, values in layers.items():
                for width, v in zip(result.widths, values):
                    w.writerow([kind, t, layer, width, f"{v:.6g}"])
    return buf.getvalue()


def slopes_markdown(result: CoordCheck) -> str:
    """Log-log slope of each curve: rows are layers, columns kind @ step."""
    cols = [(k, t) for k in result.coords for t in range(result.steps + 1)]
    layers = list(result.coords[KINDS[0]][0])
    lines = ["| layer | " + " | ".join(f"{k} t={t}" for k, t in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for layer in layers:
        lines.append(f"| {layer} | " + " | ".join(f"{result.slope(k, t, layer):+.2f}" for k, t in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(result: CoordCheck, path: str) -> None:
    """Log-log mean |x| vs width, one panel per step; sp dashed, mup solid, one colour per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result.steps + 1
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), sharey=True, squeeze=False)
    layers = list(result.coords[KINDS[0]][0])
    colours = (plt.get_cmap("tab10").colors if len(layers) <= 10 else
               plt.get_cmap("viridis")(np.linspace(0, 0.95, len(layers))))
    for t, ax in enumerate(axes[0]):
        for layer, colour in zip(layers, colours):
            for kind, style in (("sp", "--"), ("mup", "-")):
                ax.plot(result.widths, result.coords[kind][t][layer], style, color=colour, marker="o", ms=3,
                        label=layer if kind == "mup" else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (d_model)")
        ax.set_title("at init" if t == 0 else f"after {t} Adam step{'s' if t > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean |x| of the layer's output")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.suptitle("coordinate check: sp (dashed) vs mup (solid)")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes(path, png.getvalue())


def write_outputs(result: CoordCheck, out_dir: str) -> dict[str, str]:
    """coordcheck.csv, coordcheck.md (slopes) and coordcheck.png in out_dir (local or gs://), each replaced atomically."""
    storage.check_url(out_dir, "--out")
    storage.makedirs(out_dir)
    paths = {name: storage.join(out_dir, f"coordcheck.{name}") for name in ("csv", "md", "png")}
    for name, text in (("csv", table_csv(result)), ("md", slopes_markdown(result))):
        storage.write_text(paths[name], text)
    plot(result, paths["png"])
    return paths


def describe(result: CoordCheck) -> str:
    """The slopes table and what they mean, for the terminal."""
    return (f"log-log slope of mean |x| vs width {result.widths} (0: flat; 0.5: grows as sqrt(width)); "
            f"t = Adam steps taken\n" + slopes_markdown(result))

