"""UL2 as released (issue 16, items 1-3): sentinels as a setting, concatenate-then-split, roll per denoiser.

docs/objectives.md describes what these tests hold the objectives to.
"""

import numpy as np
import pytest

from conftest import TINY
from test_objectives import merge
from pretrax import config
from pretrax.cli import main
from pretrax.config import DataSection, DenoiserSection as D
from pretrax.data import objectives as O
from pretrax.data.batch_examples import packed_examples
from pretrax.data.packing import RowPacker
from pretrax.data.pair_packing import PairPacker
from pretrax.data.pipeline import make_train_iterator, merge_states
from pretrax.data.stats import collect_stats
from pretrax.data.tokenizer import ByteTokenizer
from pretrax.errors import ConfigError, DataError

TOK = ByteTokenizer()
SENT = {TOK.sentinel_id(k) for k in range(100)}
MIX = (D(kind="prefix", weight=0.4, mode_token="[S2S]"), D(mean_span=3, noise_density=0.15, weight=0.3),
       D(mean_span=3, noise_density=0.5, weight=0.3, mode_token="[NLG]"))
ENC_DEC = ["model.kind=encoder_decoder", "model.positions=relative", "data.objective=ul2", "data.inputs_len=48",
           "data.targets_len=24", "train.batch_size=4",
           "data.denoisers=[{kind: prefix, weight: 0.4, mode_token: '[S2S]'}, {mean_span: 3, weight: 0.3}, "
           "{mean_span: 3, noise_density: 0.5, weight: 0.3, mode_token: '[NLG]'}]"]


def raw_segment(inputs, targets, d: D, mode) -> list[int]:
    """The raw tokens an example was built from: sentinels' spans put back (span), or inputs + targets (S)."""
    inputs = list(inputs[len(mode):])
    if d.kind == "prefix":
        return inputs + list(targets[:-1])
    return merge(inputs, targets)


def packed(packer, rows: int) -> list:
    """Every example of the next ``rows`` rows, in order."""
    out = []
    for _ in range(rows):
        row = packer.next_row()
        out += list(packed_examples({k: v[None] for k, v in row.items()}))
    return out


# ---------------------------------------------------------------- concatenate-then-split


@pytest.mark.parametrize("encoder_decoder", [False, True])
def test_examples_are_cut_from_the_documents_concatenated_and_resume_exactly(encoder_decoder):
    rng = np.random.default_rng(0)
    docs = [{"tokens": np.append(rng.integers(3, 259, rng.integers(0, 40)), TOK.eos_id).astype(np.int32)}
            for _ in range(120)]  # short documents, ids + eos as the pipeline's document stage gives them
    data = DataSection(objective="ul2", seq_len=64, inputs_len=48, targets_len=24, denoisers=MIX)
    obj = O.make_objective(data, TOK, encoder_decoder=encoder_decoder)
    assert obj.concat  # the default

    def packer():
        stream = O.ConcatExamples(docs, obj, seed=7, row=0, finite=True)
        feats = O.objective_features("ul2", encoder_decoder)
        return PairPacker(stream, 48, 24, feats, finite=True) if encoder_decoder else \
            RowPacker(stream, 64, feats, finite=True, whole_examples=True)

    a = packer()
    examples = packed(a, 10)
    state = a.get_state()
    examples += packed(a, 200)
    raws = [raw_segment(ex.inputs, ex.targets, obj.denoisers[ex.denoiser], obj._modes[ex.denoiser])
            for ex in examples]
    stream = np.concatenate([d["tokens"] for d in docs])
    cut = sum(map(len, raws))
    assert np.array_equal(np.concatenate(raws), stream[:cut]) and len(stream) - cut <= 1  # nothing lost or reordered
    # every example but the stream's last is cut at its denoiser's designed raw length, across documents
    assert all(len(r) == obj.raw_lengths[ex.denoiser] for r, ex in zip(raws[:-1], examples[:-1]))
    assert {ex.denoiser for ex in examples} == {0, 1, 2}
    b = packer()  # the state is two integers: a fresh packer continues exactly
    b.set_state(*state)
    assert all(isinstance(x, int) for x in state)
    again = packed(b, 200)
    for x, y in zip(examples[len(examples) - len(again):], again):
        assert np.array_equal(x.inputs, y.inputs) and np.array_equal(x.targets, y.targets)


def short_documents(tmp_path, n=300, length=300):
    """A text corpus of n documents of ``length`` bytes each (blank-line blocks)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), 5)) for _ in range(n * 60)]
    docs = [" ".join(words[i * 60:(i + 1) * 60])[:length] for i in range(n)]
    path = tmp_path / "short.txt"
    path.write_text("\n\n".join(docs))
    return str(path)


def test_long_spans_keep_their_designed_length_on_short_documents(tmp_path):
    # X(64, 0.15) on 300-token documents: per document, one ~45-token span each; concatenated, every example
    # is cut at the designed raw length, as T5/UL2 do, so the span statistics are the configured denoiser's
    x64 = "data.denoisers=[{mean_span: 64, noise_density: 0.15, mode_token: '[NLG]'}]"
    base = [f"data.paths=[{short_documents(tmp_path)}]", "data.source=text", "data.text_split=blank_lines",
            "data.objective=ul2", x64, "data.seq_len=1024", "train.batch_size=4"]
    concat = collect_stats(config.load(None, base), 24)["denoisers"]["0"]
    c, m = concat["configured"], concat["measured"]
    raw = c["raw_length"]
    n, s = O.span_counts(raw, 0.15, 64)
    assert raw == O.decoder_raw_length(D(mean_span=64, noise_density=0.15, mode_token="[NLG]"), 1024) > 900
    assert m["full_length_share"] == 1 and m["mean_raw_length"] == raw
    assert m["mean_spans"] == s and m["mean_span"] == n / s  # 153 noise tokens in 2 spans: 76.5
    per_doc = collect_stats(config.load(None, base + ["data.concat_documents=false"]), 24)["denoisers"]["0"]
    p = per_doc["measured"]
    assert p["mean_raw_length"] <= 300 and p["mean_spans"] == 1 and p["mean_span"] <= 45  # what the issue saw


def test_concat_state_is_per_row_integers_and_resumes_across_hosts(tiny_cfg):
    cfg = tiny_cfg(*ENC_DEC)
    straight = make_train_iterator(cfg)
    for _ in range(3):
        next(straight)
    hosts = [make_train_iterator(cfg, process_index=i, process_count=2) for i in range(2)]
    for it in hosts:
        for _ in range(3):
            next(it)
    state = merge_states([it.get_state() for it in hosts])
    assert state == straight.get_state() and all(isinstance(x, int) for x in state["doc"] + state["offset"])
    resumed = make_train_iterator(cfg)
    resumed.set_state(state)
    for _ in range(2):
        x, y = next(straight), next(resumed)
        assert all(np.array_equal(x[k], y[k]) for k in x)
    per_doc = make_train_iterator(tiny_cfg(*ENC_DEC, "data.concat_documents=false"))
    with pytest.raises(DataError, match="objective_spec"):  # a state means a position in ONE way of cutting
        per_doc.set_state(state)


# ---------------------------------------------------------------- sentinels


def test_ul2_20b_builds_its_objective_and_stats_report_every_denoiser():
    cfg = config.load("configs/ul2_20b.yaml")
    assert cfg.data.num_sentinels == 128
    stats = collect_stats(cfg, 200)
    per = stats["denoisers"]
    assert [e["name"] for e in per.values()] == ["R", "R", "S", "X", "X", "X", "X"]
    for d, e in zip(O.UL2_DEFAULT, per.values()):
        m, raw = e["measured"], e["configured"]["raw_length"]
        assert m["count"] > 0 and m["full_length_share"] == 1 and m["mean_raw_length"] == raw
        if d.kind == "span":
            assert raw == O.encoder_decoder_raw_length(d, 512, 512, mode=1)  # T5's lengths, less the mode token
            assert m["mean_spans"] == O.span_counts(raw, d.noise_density, d.mean_span)[1]
    assert per["3"]["measured"]["mean_spans"] == 127  # X(3, 0.5): 127 sentinels per example, 128 configured
    with pytest.raises(ConfigError, match=r"data.num_sentinels=100; set data.num_sentinels >= 127"):
        collect_stats(cfg.replace(**{"data.num_sentinels": 100}), 1)


def test_num_sentinels_sets_the_ids_from_the_top():
    data = DataSection(objective="span_corruption", seq_len=128, num_sentinels=20)
    obj = O.make_objective(data, TOK)
    assert obj._sentinels[0] == 262 + 20 - 1 and obj._sentinels[-1] > 261  # above the 262 ordinary byte ids
    assert O.make_objective(DataSection(objective="span_corruption", seq_len=128), TOK)._sentinels[0] == \
        TOK.sentinel_id(0)  # 100, the default: the tokenizer's own ids (T5's <extra_id_0> at the top)


@pytest.mark.parametrize("argv, message", [
    (["data", "stats", "configs/ul2_20b.yaml", "data.num_sentinels=100"],
     "makes up to 127 noise spans per example at data.inputs_len=512, data.targets_len=512 but "
     "data.num_sentinels=100; set data.num_sentinels >= 127"),
    (["train", "configs/tiny.yaml", *TINY, "data.objective=span_corruption", "model.vocab_size=384",
      "data.num_sentinels=200"],  # 262 byte ids + 200 sentinels: 78 of them would be ordinary ids
     "model.vocab_size (384) is smaller than the tokenizer's 462 ids (262 ordinary + data.num_sentinels=200 "
     "sentinels)"),
    (["info", "configs/tiny.yaml", "data.num_sentinels=-1"], "config key 'data.num_sentinels' must be >= 0, got -1"),
])
def test_bad_num_sentinels_exit_2_with_one_line_and_write_nothing(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = argv + [f"run.dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pretrax: error: ") and message in err, err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- roll


def test_roll_is_per_denoiser_and_off_by_default_as_released_ul2():
    assert D().roll is False
    seg = np.arange(3, 3 + 200, dtype=np.int32)
    rng = np.random.default_rng(0)

    def span_starts(roll):
        data = DataSection(objective="ul2", seq_len=512, denoisers=(D(mean_span=64, noise_density=0.15, roll=roll),))
        obj = O.make_objective(data, TOK)
        out = []
        for _ in range(300):
            inputs, targets = obj.example(0, seg, rng)
            assert list(inputs).count(TOK.sentinel_id(0)) == 1 and len(targets) == 30 + 2  # counts never change
            out.append(list(inputs).index(TOK.sentinel_id(0)))
        return out

    assert set(span_starts(False)) == {170}  # one span of round(0.15 * 200) = 30 at the tail, as T5 lays it out
    rolled = span_starts(True)
    assert min(rolled) == 0 and max(rolled) == 170 and len(set(rolled)) > 100  # anywhere, never wrapped
    with pytest.raises(ConfigError, match="roll applies to span denoisers"):
        O.make_objective(DataSection(objective="ul2", denoisers=(D(kind="prefix", roll=True),)), TOK)
