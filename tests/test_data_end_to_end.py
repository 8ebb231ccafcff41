"""Real data end to end: prepare a tfds ArrayRecord dataset, train from it, resume exactly, mix sources."""

import json
import os

import numpy as np
import pytest

from conftest import TINY, cli_in_process
from pretrax import config as config_lib
from pretrax.data.pipeline import make_train_iterator
from pretrax.train.loop import train

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "Résumé of the plan: ship the loader, then the tokenizer. ✓\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "The quick brown fox jumps over the lazy dog. " * 20,
]


cli = cli_in_process  # `pretrax ARGS` in this process (tests/conftest.py)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    files = []
    for i in range(40):
        path = root / "docs" / f"doc{i:02d}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"# document {i}\n" + TEXT[i % len(TEXT)] * (1 + i % 3))
        files.append(path)
    data_dir = root / "tfds"
    proc = cli("data", "prepare", str(root / "docs" / "*.txt"), "--name", "my_corpus", "--data-dir", str(data_dir),
               "--eval-percent", "10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data.tfds_name=my_corpus" in proc.stdout
    return root, data_dir


def tfds_overrides(data_dir):
    return ["data.source=tfds", "data.tfds_name=my_corpus", f"data.data_dir={data_dir}",
            "data.tfds_eval_split=validation"]


@pytest.mark.slow
def test_train_from_a_prepared_tfds_dataset(prepared, tmp_path):
    _, data_dir = prepared
    cfg = config_lib.load(None, TINY + tfds_overrides(data_dir) + ["train.steps=3", "train.eval_every=3",
                                                                   f"run.dir={tmp_path / 'run'}"])
    result = train(cfg, progress=False)
    assert np.isfinite(result.losses[3]) and 0 < result.eval_bits_per_byte < 12


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_same_token_ids_for_batches_21_to_40(prepared, workers):
    _, data_dir = prepared
    cfg = config_lib.load(None, tfds_overrides(data_dir) + ["data.seq_len=64", "train.batch_size=4",
                                                            f"data.num_workers={workers}"])
    first = make_train_iterator(cfg)
    for _ in range(20):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    batches = [next(first) for _ in range(20)]  # what the uninterrupted iterator gives next
    first.close()
    resumed = make_train_iterator(cfg)
    resumed.set_state(state)
    for want in batches:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    resumed.close()


@pytest.mark.slow  # 7 s: it prepares two tfds datasets first
def test_mixture_draws_documents_by_weight(prepared):
    root, _ = prepared
    cfg = config_lib.load(None, [
        f"data.mixture=[{{source: text, paths: ['{root}/docs/doc0*.txt'], weight: 3}}, {{source: stdlib, weight: 1}}]",
        "data.seq_len=64", "train.batch_size=4", "data.heldout_percent=0",
    ])
    from pretrax.data.pipeline import train_documents
    from pretrax.data.tokenizer import load_tokenizer

    docs, _ = train_documents(cfg)
    tok = load_tokenizer("bytes")
    ours = sum(tok.decode(docs[g]["inputs"]).startswith("# document") for g in range(400))
    assert ours == 300  # grain's mix is exactly proportional over every window of 4


@pytest.mark.slow
def test_inspect_prints_decoded_examples(prepared):
    _, data_dir = prepared
    proc = cli("data", "inspect", "configs/tiny.yaml", *tfds_overrides(data_dir), "--examples", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("--- example") == 3
    assert "inputs:" in proc.stdout and "targets:" in proc.stdout and "# document" in proc.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.source=text", "data.paths=/nonexistent/*.txt"], "/nonexistent/*.txt"),
        (["data.source=tfds", "data.tfds_name=no_such_dataset_xyz"], "no_such_dataset_xyz"),
    ],
)
@pytest.mark.slow
def test_bad_sources_exit_2_with_one_line(tmp_path, overrides, message):
    proc = cli("train", "configs/tiny.yaml", *TINY, f"run.dir={tmp_path / 'r'}", *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "r" / "checkpoints")


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("spm") / "code.model"
    proc = cli("tokenizer", "train", "stdlib", "--vocab-size", "600", "--model-type", "bpe", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_train_with_a_trained_sentencepiece_model(spm_model, tmp_path):
    cfg = config_lib.load(None, TINY + [f"data.tokenizer={spm_model}", "train.steps=2", "train.eval_every=2",
                                        f"run.dir={tmp_path / 'run'}"])
    result = train(cfg, progress=False)
    assert result.setup.vocab_size == 640  # 600 ids rounded up to a multiple of 128
    assert 0 < result.eval_bits_per_byte < 12


@pytest.mark.slow
def test_tokenizer_larger_than_the_model_vocabulary_is_refused(spm_model, tmp_path):
    proc = cli("train", "configs/tiny.yaml", *TINY, f"data.tokenizer={spm_model}", "model.vocab_size=512",
               f"run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2 and "smaller than the tokenizer's 600 ids" in proc.stderr
    assert not os.path.exists(tmp_path / "r")
