"""Mixture of experts (models/moe.py): routing checked against a per-token numpy reference, the
two dispatch paths against each other, the statistics, and the MoE layers inside both model kinds."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax import config as config_lib
from pretrax.errors import ConfigError
from pretrax.models import build_model
from pretrax.models.moe import MoE, capacity

E, D, F, B, T = 4, 16, 24, 3, 10


def _layer(k, capacity_factor=1.25, dropless=False, activation="swiglu", shared=0, seed=0):
    cfg = config_lib.load(None, [f"model.d_model={D}", f"model.d_ff={F}", f"model.activation={activation}",
                                 f"model.moe.num_experts={E}", f"model.moe.experts_per_token={k}",
                                 f"model.moe.capacity_factor={capacity_factor}", f"model.moe.dropless={dropless}",
                                 f"model.moe.shared_experts={shared}", "model.init_std=0.3"]).model
    return MoE(cfg, rngs=nnx.Rngs(params=seed)), cfg


def _reference(layer, x, mask, k, cap):
    """Per token, in numpy: softmax router, top-k, renormalised weights (k > 1), each chosen expert's
    gated MLP; slots per (row, expert) handed out to first choices before second ones, by position."""
    w = {n: np.asarray(getattr(layer, n)[...], np.float64) for n in ("router", "up", "down")}
    gate = None if layer.gate is None else np.asarray(layer.gate[...], np.float64)
    x = np.asarray(x, np.float64)
    y = np.zeros_like(x)
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    dropped = chosen_total = 0
    for b in range(x.shape[0]):
        logits = x[b] @ w["router"]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        used = np.zeros(E, int)
        keep = np.zeros((x.shape[1], k), bool)
        for j in range(k):  # choice-major: every first choice of the row before any second one
            for t in range(x.shape[1]):
                if not mask[b, t]:
                    continue
                e = top[t, j]
                chosen_total += 1
                if used[e] < cap:
                    used[e] += 1
                    keep[t, j] = True
                else:
                    dropped += 1
        for t in range(x.shape[1]):
            if not mask[b, t]:
                continue
            p = probs[t, top[t]]
            p = p / p.sum() if k > 1 else p
            for j in range(k):
                if keep[t, j]:
                    e = top[t, j]
                    up = x[b, t] @ w["up"][e]
                    h = silu(x[b, t] @ gate[e]) * up if gate is not None else np.maximum(up, 0)
                    y[b, t] += p[j] * (h @ w["down"][e])
    return y, dropped / max(chosen_total, 1)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [0.5, 4.0])  # 0.5 drops tokens; 4.0 (= E) never does
def test_dispatch_matches_a_per_token_reference(k, capacity_factor):
    layer, cfg = _layer(k, capacity_factor)
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    mask = np.ones((B, T), bool)
    mask[2, 7:] = False  # padding: routed nowhere
    y, stats = layer(x, jnp.asarray(mask))
    want, dropped = _reference(layer, x, mask, k, capacity(cfg.moe, T))
    np.testing.assert_allclose(np.asarray(y), want, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(float(stats["dropped"]), dropped, rtol=1e-6)
    if capacity_factor < 1:
        assert dropped > 0.2  # the check saw dropping
    else:
        assert dropped == 0
    assert np.all(np.asarray(y)[2, 7:] == 0)


@pytest.mark.parametrize("k", [1, 2])
def test_dropless_equals_dispatch_with_room_for_every_token(k):
    roomy, _ = _layer(k, capacity_factor=float(E))  # capacity T: nothing dropped
    dropless, _ = _layer(k, dropless=True)
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    mask = jnp.ones((B, T), bool).at[0, :3].set(False)
    y1, s1 = roomy(x, mask)
    y2, s2 = dropless(x, mask)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(y1), rtol=1e-5, atol=1e-6)
    for key in ("load", "balance", "z"):
        np.testing.assert_allclose(np.asarray(s2[key]), np.asarray(s1[key]), rtol=1e-6)
    assert float(s2["dropped"]) == 0


def test_statistics_are_the_switch_and_st_moe_formulas():
    layer, _ = _layer(2)
    x = jax.random.normal(jax.random.key(3), (B, T, D))
    mask = np.ones((B, T), bool)
    mask[1, 5:] = False
    _, stats = layer(x, jnp.asarray(mask))
    logits = np.einsum("btd,de->bte", np.asarray(x, np.float64), np.asarray(layer.router[...], np.float64))[mask]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1)[:, :2]
    load = np.bincount(top.ravel(), minlength=E) / top.size
    np.testing.assert_allclose(np.asarray(stats["load"]), load, rtol=1e-6)
    np.testing.assert_allclose(float(stats["balance"]), E * np.sum(load * probs.mean(0)), rtol=1e-5)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(float(stats["z"]), np.mean(lse**2), rtol=1e-5)


def test_shared_experts_add_an_always_on_mlp():
    layer, _ = _layer(1, shared=2)
    assert layer.shared.up.kernel.shape == (D, 2 * F)
    x = jax.random.normal(jax.random.key(4), (1, T, D))
    y, _ = layer(x, jnp.zeros((1, T), bool))  # nothing routed: only the shared experts answer
    np.testing.assert_allclose(np.asarray(y), np.asarray(layer.shared(x)), rtol=1e-6)


def _model_cfg(*overrides):
    return config_lib.load(None, ["model.d_model=32", "model.n_layers=4", "model.n_heads=4", "model.d_ff=48",
                                  "data.seq_len=16", "model.moe.num_experts=4", *overrides])


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_every_other_layer_is_routed_in_every_stack(kind):
    extra = ["model.kind=encoder_decoder", "model.positions=relative", "model.n_encoder_layers=2"] \
        if kind == "encoder_decoder" else []
    cfg = _model_cfg("model.moe.every=2", *extra)
    model = build_model(cfg, 128, 0)
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    routers = sorted(p for p in paths if p.endswith("router"))
    if kind == "decoder":
        # groups of two layers (dense, routed): the unit that a scanned model stacks
        assert routers == ["blocks.0.layers.1.mlp.router", "blocks.1.layers.1.mlp.router"]
    else:
        assert routers == ["decoder.blocks.0.layers.1.mlp.router", "decoder.blocks.1.layers.1.mlp.router",
                           "encoder.blocks.0.layers.1.mlp.router"]
    assert not any("layers.0.mlp.router" in p for p in paths)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_scanned_groups_compute_what_the_layer_list_computes(kind):
    """every=2 with scan_layers: one scanned (dense, routed) pair of layers; with the list's weights
    copied in, the same logits and the same per-layer statistics."""
    extra = ["model.kind=encoder_decoder", "model.positions=relative"] if kind == "encoder_decoder" else []
    listed = build_model(_model_cfg("model.moe.every=2", *extra), 128, 0)
    scanned = build_model(_model_cfg("model.moe.every=2", "model.scan_layers=true", *extra), 128, 1)
    flat = dict(nnx.to_flat_state(nnx.state(listed, nnx.Param)))
    stacked = nnx.state(scanned, nnx.Param)

    def fill(path, var):  # scanned <stack.>blocks.layers.j.<rest>  <-  listed <stack.>blocks.g.layers.j.<rest>
        if "blocks" not in path:  # embeddings, final norms, relative position tables
            return var.replace(flat[path][...])
        i = path.index("blocks")
        rows = [flat[path[:i + 1] + (g,) + path[i + 1:]] for g in range(2)]
        return var.replace(jnp.stack([r[...] for r in rows]))

    nnx.update(scanned, nnx.from_flat_state([(p, fill(p, v)) for p, v in nnx.to_flat_state(stacked)]))
    tokens = jax.random.randint(jax.random.key(5), (2, 16), 0, 128)
    if kind == "decoder":
        (a, sa), (b, sb) = listed(tokens, with_aux=True), scanned(tokens, with_aux=True)
    else:
        (a, sa), (b, sb) = listed(tokens, tokens, with_aux=True), scanned(tokens, tokens, with_aux=True)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2e-5), sa, sb)


@pytest.mark.parametrize("override,words", [
    ("model.moe.experts_per_token=5", "experts_per_token (5) must be between 1 and model.moe.num_experts (4)"),
    ("model.moe.experts_per_token=0", "experts_per_token (0) must be between 1"),
    ("model.moe.capacity_factor=0", "capacity_factor must be > 0"),
    ("model.moe.every=3", "model.n_layers (4) must be a multiple of model.moe.every (3)"),
    ("mesh.expert=8", "model.moe.num_experts (4) must be divisible by mesh.expert (8)"),
])
def test_bad_moe_settings_are_one_line(override, words):
    with pytest.raises(ConfigError) as e:
        _model_cfg(override)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_expert_axis_needs_experts():
    with pytest.raises(ConfigError, match="mesh.expert=2 splits experts, but model.moe.num_experts is 0"):
        config_lib.load(None, ["mesh.expert=2"])


def test_dense_models_are_unchanged_by_the_moe_section():
    cfg = config_lib.load(None, ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.d_ff=48"])
    assert cfg.model.moe.num_experts == 0
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(build_model(cfg, 128, 0), nnx.Param))}
    assert not any("router" in p or "layers" in p for p in paths) and "blocks.1.mlp.up.kernel" in paths
    assert dataclasses.asdict(cfg.model.moe)["num_experts"] == 0


# ---------------------------------------------------------------- training on a mesh

def _losses_on(cfg, devices, steps=3):
    """Losses of `steps` train steps of cfg on these devices (one device: a 1x1x1x1 mesh)."""
    from pretrax.data.pipeline import make_train_iterator
    from pretrax.plan import make_plan
    from pretrax.train.state import init_state
    from pretrax.train.step import make_train_step, to_global

    setup = make_plan(cfg, devices=devices).setup
    step = make_train_step(setup)
    state = init_state(setup, cfg.run.seed)
    data = make_train_iterator(cfg)
    losses, metrics = [], None
    try:
        batch = to_global(setup, next(data))
        hlo = step.lower(state, batch).compile().as_text()  # the program as XLA partitioned it
        for _ in range(steps):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
            batch = to_global(setup, next(data))
    finally:
        data.close()
    return np.array(losses), jax.device_get(metrics), setup, hlo


@pytest.mark.slow
@pytest.mark.devices(8)
@pytest.mark.parametrize("k,routing", [(1, "model.moe.capacity_factor=0.5"), (2, "model.moe.capacity_factor=0.5"),
                                       (1, "model.moe.dropless=true"), (2, "model.moe.dropless=true")])
def test_expert_parallel_mesh_gives_the_one_device_losses(tiny_cfg, k, routing):
    moe = ["model.moe.num_experts=4", f"model.moe.experts_per_token={k}", routing]
    one = tiny_cfg(*moe, "mesh.data=1")
    sharded = tiny_cfg(*moe, "mesh.data=2", "mesh.expert=4")
    base, base_metrics, _, _ = _losses_on(one, jax.devices()[:1])
    got, metrics, setup, hlo = _losses_on(sharded, jax.devices())
    np.testing.assert_allclose(got, base, rtol=2e-5)
    assert base[-1] < base[0]
    if "capacity" in routing:
        assert float(base_metrics["moe_dropped"].mean()) > 0.05  # the run saw tokens dropped
        # the expert weights are split 4 ways over the expert axis, and tokens reach them by all-to-all
        up = [x for p, x in jax.tree_util.tree_leaves_with_path(setup.state_shardings["params"])
              if "mlp" in str(p) and "up" in str(p)][0]
        assert up.spec[0] == "expert"
        assert "all-to-all" in hlo
    np.testing.assert_allclose(metrics["moe_load"], base_metrics["moe_load"], rtol=2e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.devices(8)
def test_checkpoint_written_on_one_mesh_resumes_exactly_on_another(tiny_cfg, tmp_path):
    from pretrax.train.loop import train

    moe = ["model.moe.num_experts=4", "model.moe.every=2", "model.scan_layers=true", "train.steps=4",
           "checkpoint.every=2"]
    straight = train(tiny_cfg(*moe, "mesh.data=2", "mesh.expert=4", run_dir=str(tmp_path / "a")), progress=False)
    train(tiny_cfg(*moe, "mesh.data=2", "mesh.expert=4", run_dir=str(tmp_path / "b")), stop_at=2, progress=False)
    resumed = train(tiny_cfg(*moe, "mesh.data=4", "mesh.fsdp=2", run_dir=str(tmp_path / "b")), progress=False)
    assert resumed.start_step == 2
    np.testing.assert_allclose([resumed.losses[s] for s in (3, 4)], [straight.losses[s] for s in (3, 4)],
                               rtol=2e-5)
    from pretrax.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"model\.moe\.num_experts \(checkpoint 4, now 8\)"):
        train(tiny_cfg(*moe, "model.moe.num_experts=8", "train.steps=6", run_dir=str(tmp_path / "b")), progress=False)


# ---------------------------------------------------------------- accounting

def test_mixtral_8x7b_has_its_published_total_and_active_counts():
    """Mixtral 8x7B (arXiv 2401.04088): 46,702,792,704 parameters, 12,879,925,248 used per token."""
    from pretrax.flops import step_flops
    from pretrax.info import describe

    cfg = config_lib.load("configs/mixtral_8x7b.yaml")
    V, D, L, Hq, Hkv, F, E = 32000, 4096, 32, 32 * 128, 8 * 128, 14336, 8
    attn, expert, router, norms = D * (2 * Hq + 2 * Hkv), 3 * D * F, D * E, 2 * D
    total = L * (attn + E * expert + router + norms) + 2 * V * D + D  # untied embedding and output, final norm
    active = L * (attn + 2 * expert + router + norms) + 2 * V * D + D
    assert (total, active) == (46_702_792_704, 12_879_925_248)
    text = describe(cfg)
    assert f"parameters: {total}\n" in text and f"active parameters: {active} " in text
    # 6 x the active matmul parameters (the input embedding is a lookup) per token
    flops = step_flops(cfg, V)
    assert flops.matmul == 6 * (active - V * D) * flops.tokens


def test_flops_count_the_routed_share_of_the_experts_and_the_router():
    from pretrax.flops import step_flops

    V = 128
    for k, every in ((1, 1), (2, 2)):
        cfg = _model_cfg(f"model.moe.experts_per_token={k}", f"model.moe.every={every}", "model.moe.shared_experts=1")
        L, Dm, Fe, E = 4, 32, 48, 4
        n_moe = L // every
        dense_layer = 4 * Dm * Dm + 3 * Dm * Fe + 2 * Dm
        moe_layer = 4 * Dm * Dm + 2 * Dm + Dm * E + 3 * Dm * Fe * k + 3 * Dm * Fe  # routed share + shared expert
        active = (L - n_moe) * dense_layer + n_moe * moe_layer + Dm + V * Dm  # final norm, tied table
        assert step_flops(cfg, V).matmul == 6 * active * cfg.train.batch_size * cfg.data.seq_len


# ---------------------------------------------------------------- training runs

@pytest.mark.slow
def test_router_losses_and_expert_load_reach_metrics_and_tensorboard(tiny_cfg):
    import json
    import os

    from test_gcs_runs import tensorboard_scalars

    from pretrax.train.loop import train

    cfg = tiny_cfg("model.moe.num_experts=4", "model.moe.every=2", "model.moe.capacity_factor=1.0",
                   "model.moe.load_balance_loss=0.02", "train.steps=3")
    train(cfg, progress=False)
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.dir, "metrics.jsonl")) if '"loss"' in line]
    last = rows[-1]
    loads = np.array([last[f"moe_load/layer1/e{j}"] for j in range(4)])
    np.testing.assert_allclose(loads.sum(), 1.0, rtol=1e-5)  # shares of the routed (token, choice) pairs
    assert "moe_load/layer0/e0" not in last  # layer 0 is dense
    assert last["moe_max_load/layer1"] == pytest.approx(loads.max() * 4)
    assert 0 <= last["moe_dropped/layer1"] < 1 and last["moe_dropped"] == last["moe_dropped/layer1"]
    assert last["moe_balance"] >= 1.0 - 1e-6  # E * sum(load * prob) >= 1 when load follows prob; 1 when balanced
    assert last["router_loss"] == pytest.approx(0.02 * last["moe_balance"] + 0.001 * last["moe_z"], rel=1e-4)
    for tag in ("router_loss", "moe_load/layer1/e3", "moe_dropped/layer1"):
        assert tensorboard_scalars(cfg.run.dir, tag)[3] == pytest.approx(last[tag], rel=1e-6), tag


@pytest.mark.slow
def test_encoder_decoder_with_routed_experts_trains_on_ul2_and_samples(tiny_cfg):
    """Routed layers in both stacks, experts split 4 ways, UL2's three denoisers; then greedy decoding (the
    decoding path routes every token) from the saved run."""
    import json
    import os

    from pretrax.generate import load_run, sample
    from pretrax.train.loop import train

    from test_encoder_decoder_training import MIX  # UL2's three denoisers, small enough for 48 / 24 token rows

    cfg = tiny_cfg("model.kind=encoder_decoder", "model.positions=relative", "data.objective=ul2", *MIX,
                   "data.inputs_len=48", "data.targets_len=24", "model.moe.num_experts=4", "model.moe.every=2",
                   "model.scan_layers=true", "mesh.data=2", "mesh.expert=4", "optim.lr=3e-3")
    result = train(cfg, progress=False)
    assert result.losses[6] < result.losses[1]
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.dir, "metrics.jsonl")) if '"loss"' in line]
    seen = set().union(*rows)
    assert {"moe_load/encoder.layer1/e0", "moe_load/decoder.layer1/e0", "loss_R", "loss_S", "loss_X"} <= seen
    assert not any(k.startswith("moe_load/encoder.layer0") for k in seen)
    _, setup, tok, params, step = load_run(cfg.run.dir)
    assert step == 6
    text = sample(setup, params, tok, "def f(x):", max_new_tokens=8, temperature=0.0, mode="S")
    assert isinstance(text, str) and len(tok.encode(text)) <= 8


@pytest.mark.slow
def test_mup_treats_experts_as_hidden_matrices_and_the_router_as_a_readout():
    from pretrax.plan import make_plan
    from pretrax.data.tokenizer import load_tokenizer

    cfg = _model_cfg("model.d_model=128", "parametrization.kind=mup", "parametrization.base_d_model=32",
                     "model.moe.every=2", "mesh.data=1")
    setup = make_plan(cfg, devices=jax.devices()[:1], tokenizer=load_tokenizer("bytes")).setup
    rows = {r.path: r for r in setup.param_groups.rows}
    expert = rows["blocks.0.layers.1.mlp.up"]
    router = rows["blocks.0.layers.1.mlp.router"]
    dense = rows["blocks.0.layers.0.mlp.up.kernel"]
    assert (expert.role, expert.lr_mult, expert.active) == ("hidden", 1 / 4, 2 / 4)
    assert dense.lr_mult == expert.lr_mult and dense.active == 1.0
    assert (router.role, router.lr_mult, router.decayed) == ("router", 1.0, True)
    model = build_model(cfg, 256, 0)
    layer = model.blocks[1].layers[1].mlp
    assert layer.router_mult == 1 / 4  # readout: logits x 1 / width_mult
    np.testing.assert_allclose(float(jnp.std(layer.up[...])), 0.02 / 2, rtol=0.05)  # hidden init std / sqrt(m)
    assert "router" in setup.param_groups.summary()


def test_compile_search_tries_expert_ways_that_divide_the_experts():
    from pretrax.compile_search import Plan, Space, candidate_meshes
    from pretrax.parallel.topologies import parse_topology

    topo = parse_topology("v5p-16")  # 8 chips
    meshes = candidate_meshes(_model_cfg("model.moe.num_experts=4"), topo, Space(tensor=(1,)))
    assert {e for _, _, _, e, _ in meshes} == {1, 2, 4}  # 8 chips, but only 4 experts to split
    assert all(d * f * t * e * c == 8 and c == 1 for d, f, t, e, c in meshes)  # the sequence whole: no --context
    dense = candidate_meshes(config_lib.load(None, ["model.d_model=32", "model.n_heads=4", "model.d_ff=48"]),
                             topo, Space(tensor=(1,)))
    assert {e for _, _, _, e, _ in dense} == {1}
    plan = Plan(2, 1, 1, "full", 1, "xla", 4)
    assert plan.overrides()["mesh.expert"] == 4 and plan.mesh == "2x1x1 expert 4"
    cfg = _model_cfg("model.moe.num_experts=4").replace(**plan.overrides())
    assert (cfg.mesh.data, cfg.mesh.expert) == (2, 4)
