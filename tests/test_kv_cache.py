"""KV-cache decoding against the recompute path (the whole window through the training forward
pass for every token): at every new position the logits agree (float32) and the chosen tokens are
the same, for RoPE, learned and no positions, post-norm, GQA (the cache keeps K heads), the
prefix-LM prompt, scanned layers and the encoder-decoder (T5 relative positions); past the window
the cache refills, and the per-token step compiles once."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrax import generate
from pretrax.data.tokenizer import ByteTokenizer
from pretrax.models import max_positions
from pretrax.parallel.mesh import make_mesh
from pretrax.train.state import make_setup, model_vocab_size
from test_encoder_decoder_training import ENC_DEC

DECODERS = {
    "rope-gqa": ["model.n_kv_heads=2"],
    "learned-post-norm": ["model.n_kv_heads=2", "model.positions=learned", "model.norm=layernorm",
                          "model.norm_position=post", "model.use_bias=true", "model.final_norm=false"],
    "no-positions-scanned": ["model.positions=none", "model.scan_layers=true"],
    "alibi": ["model.positions=alibi"],
    "window": ["model.attention_window=8"],  # sliding-window attention: the cache's old slots fall out of view
    "window-global-scanned": ["model.attention_window=8", "model.global_every=2", "model.scan_layers=true"],
    "xpos-gqa": ["model.positions=xpos", "model.n_kv_heads=2"],
    # routed experts in every other layer, scanned as (dense, routed) groups; dropless, as decoding routes
    "moe-grouped-scanned": ["model.n_layers=4", "model.moe.num_experts=4", "model.moe.every=2",
                            "model.moe.dropless=true", "model.scan_layers=true"],
}
TOK = ByteTokenizer()


def model_and_params(cfg, std=0.3):
    """A run's setup and normal(0, std) weights drawn by numpy (a jitted random init compiles for
    seconds). std 0.3 makes a random model's logits peaked, so greedy choices are far from ties."""
    setup = make_setup(cfg, make_mesh(cfg.mesh), model_vocab_size(cfg, TOK.vocab_size))
    rng = np.random.default_rng(0)
    return setup, jax.tree.map(lambda a: jnp.asarray(rng.normal(0, std, a.shape), a.dtype), setup.abstract_params)


def assert_same_steps(cached, recomputed, n):
    """The first n (token, logits) of two step iterators agree; returns the tokens."""
    tokens = []
    for (token, logits), (ref_token, ref_logits) in itertools.islice(zip(cached, recomputed), n):
        np.testing.assert_allclose(logits, ref_logits, atol=2e-5, rtol=1e-5)
        assert token == ref_token
        tokens.append(token)
    assert len(tokens) == n and len(set(tokens)) > 1  # a varied continuation: the comparison means something
    return tokens


@pytest.mark.parametrize("name, mode", [("rope-gqa", None), ("rope-gqa", "S"), ("learned-post-norm", None),
                                        pytest.param("no-positions-scanned", "S", marks=pytest.mark.slow),
                                        pytest.param("moe-grouped-scanned", None, marks=pytest.mark.slow),
                                        ("alibi", "S"), ("xpos-gqa", None), ("window", "S"),
                                        pytest.param("window-global-scanned", None, marks=pytest.mark.slow)])
def test_decoder_cache_gives_the_recompute_paths_logits_and_tokens(tiny_cfg, name, mode):
    cfg = tiny_cfg(*DECODERS[name])
    setup, params = model_and_params(cfg)
    ids = ([TOK.mode_token_id("[S2S]")] if mode else [TOK.bos_id]) + TOK.encode("def f(")
    kw = dict(prefix=len(ids) if mode else 0, pad_id=TOK.pad_id)  # mode: the prompt is a bidirectional prefix
    n = max_positions(cfg) - len(ids) + 1  # every position of the window: the prefill, then one step each
    assert_same_steps(generate.decoder_steps(setup, params, ids, cache=True, **kw),
                      generate.decoder_steps(setup, params, ids, cache=False, **kw), n)
    # as `pretrax generate` calls it: the same text either way
    text = [generate.sample(setup, params, TOK, "def f(", max_new_tokens=n, temperature=0.0, mode=mode, cache=c)
            for c in (True, False)]
    assert text[0] == text[1]


def test_the_cache_keeps_kv_heads_and_is_stacked_over_layers(tiny_cfg):
    from flax import nnx

    setup, params = model_and_params(tiny_cfg(*DECODERS["rope-gqa"]))
    cache = nnx.merge(setup.graphdef, params).init_cache(3, 32)
    assert cache["k"].shape == cache["v"].shape == (2, 3, 32, 2, 8)  # (L, B, S, K, H): K = 2, not N = 4


@pytest.mark.parametrize("scan,moe,alibi", [(False, False, False), pytest.param(True, False, False, marks=pytest.mark.slow),
                                            pytest.param(True, True, False, marks=pytest.mark.slow),
                                            (False, False, True)])
def test_encoder_decoder_cache_gives_the_recompute_paths_logits_and_tokens(tiny_cfg, scan, moe, alibi):
    experts = ["model.moe.num_experts=4", "model.moe.every=2", "model.n_encoder_layers=2", "model.n_layers=2",
               "model.moe.dropless=true"] if moe else []
    positions = ["model.positions=alibi"] if alibi else []  # else T5's relative positions
    cfg = tiny_cfg(*ENC_DEC, "model.n_kv_heads=2", f"model.scan_layers={scan}", *experts, *positions)
    setup, params = model_and_params(cfg)
    ids = [TOK.mode_token_id("[S2S]")] + TOK.encode("x = 1") + [TOK.eos_id]  # encoder padded to 48 after these
    kw = dict(bos_id=TOK.bos_id, pad_id=TOK.pad_id)
    tokens = assert_same_steps(generate.encoder_decoder_steps(setup, params, ids, cache=True, **kw),
                               generate.encoder_decoder_steps(setup, params, ids, cache=False, **kw), 24)
    assert generate.encoder_decoder_new_ids(setup, params, ids, max_new_tokens=30, **kw) == tokens  # 24 at most


@pytest.mark.slow
def test_sampling_past_the_window_refills_the_cache_and_compiles_each_step_once(tiny_cfg):
    setup, params = model_and_params(tiny_cfg(*DECODERS["rope-gqa"]))
    ids = [TOK.bos_id] + TOK.encode("import ")  # 8 tokens; the window is 32
    generate.decoder_new_ids(setup, params, ids, max_new_tokens=3)  # compiled
    step = generate._jitted(setup.graphdef, (0.0, 0, 1.0)).step  # greedy's
    assert step._cache_size() == 1
    long = generate.decoder_new_ids(setup, params, ids, max_new_tokens=70)  # fills 8, steps to 32, refills 16 twice
    assert step._cache_size() == 1  # no step compiled again
    assert len(long) == 70
    short = generate.decoder_new_ids(setup, params, ids, max_new_tokens=25, cache=False)
    assert long[:25] == short  # identical while the whole context fits the window
    # sampled, not greedy: the same seed gives the same draws over the same logits
    sampled = [generate.decoder_new_ids(setup, params, ids, max_new_tokens=12, choice=(1.0, 20, 0.9), seed=7,
                                        cache=c) for c in (True, False)]
    assert sampled[0] == sampled[1]
