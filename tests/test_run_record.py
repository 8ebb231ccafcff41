"""The run's record (config_history.jsonl), refused data-order changes on resume, crash-safe retention."""

import json
import os

import pytest

from pretrax import cli
from pretrax.data.pipeline import make_train_iterator
from pretrax.errors import CheckpointError, DataError
from pretrax.train import checkpoint as ckpt
from pretrax.train import run_record
from pretrax.train.checkpoint_verify import list_steps
from pretrax.train.loop import resume_data, train
from conftest import TINY
from test_cli import snapshot
from test_first_run import write_corpus

TINY_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")


def _data_state(run_dir, step):
    """The data iterator state saved with checkpoint `step`."""
    import orbax.checkpoint as ocp

    with ckpt.open_manager(run_dir, ckpt.Config().checkpoint, read_only=True) as m:
        return m.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]


def _data_rows(run_dir, step):
    """Each row's place in the document stream, (document, offset), saved with checkpoint `step`."""
    data = _data_state(run_dir, step)
    return list(zip(data["doc"], data["offset"]))


def _fresh_rows_after_one_batch(cfg):
    it = make_train_iterator(cfg)
    next(it)
    state = it.get_state()
    it.close()
    return list(zip(state["doc"], state["offset"]))


@pytest.mark.slow
def test_history_records_each_start_and_data_changes_are_refused_unless_allowed(tiny_cfg, capsys):
    cfg = tiny_cfg("train.steps=8", "checkpoint.every=1")
    run_dir = cfg.run.dir
    train(cfg, stop_at=3, progress=False)
    [first] = run_record.read(run_dir)
    assert first["first_step"] == 1 and first["resumed_from"] is None and first["changed"] == {}
    assert first["config"] == cfg.to_dict()

    # what changes the batches is refused, naming the key, and nothing in the run dir changes
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match=r"would change what the batches hold or their order: "
                       r"data\.seq_len \(checkpoint 32, now 64\); .*--allow-data-change"):
        train(tiny_cfg("train.steps=8", "checkpoint.every=1", "data.seq_len=64"), progress=False)
    # the CLI says it in one line, exit 2 (tests/test_cli.py: the same for train.batch_size as a subprocess)
    code = cli.main(["train", TINY_CONFIG, *_tiny_overrides(cfg), "run.seed=7", "data.shuffle=false"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "data.shuffle (checkpoint True, now False), run.seed (checkpoint 0, now 7)" in err
    assert snapshot(run_dir) == before

    # what does not change the batches is allowed, and recorded
    train(tiny_cfg("train.steps=8", "checkpoint.every=1", "optim.lr=0.001", "data.prefetch=0"), stop_at=4,
          progress=False)
    second = run_record.read(run_dir)[1]
    assert second["first_step"] == 4 and second["resumed_from"] == 3 and second["allowed_data_change"] == []
    assert second["changed"] == {"optim.lr": [0.003, 0.001], "data.prefetch": [2, 0]}
    assert "lr: 0.001" in open(os.path.join(run_dir, "config.yaml")).read()

    # allowed: a longer sequence keeps each row's place in the stream; a bigger batch restarts it
    docs_at_4 = _data_rows(run_dir, 4)
    longer = tiny_cfg("train.steps=8", "checkpoint.every=1", "data.seq_len=64")
    train(longer, stop_at=5, progress=False, allow_data_change=True)
    third = run_record.read(run_dir)[2]
    assert third["allowed_data_change"] == ["data.seq_len"] and third["data_position"] == "kept"
    assert third["changed"]["data.seq_len"] == [32, 64]
    assert all(after > before for after, before in zip(_data_rows(run_dir, 5), docs_at_4))
    assert _data_rows(run_dir, 5) != _fresh_rows_after_one_batch(longer)
    assert [e["first_step"] for e in run_record.read(run_dir)] == [1, 4, 5]

    # other rows (a bigger batch) cannot keep their places: the stream starts afresh (the trainer's own call)
    bigger = tiny_cfg("train.steps=8", "data.seq_len=64", "train.batch_size=16")
    data = make_train_iterator(bigger)
    saved_state = _data_state(run_dir, 5)
    assert resume_data(data, saved_state, {"train.batch_size": (8, 16)}) == "restarted"
    next(data)
    assert list(zip(data.get_state()["doc"], data.get_state()["offset"])) == _fresh_rows_after_one_batch(bigger)
    data.close()
    with pytest.raises(DataError, match="global_batch"):  # without the allowance the saved state is refused
        make_train_iterator(bigger).set_state(saved_state)


@pytest.mark.slow
def test_a_resume_may_read_the_same_files_from_another_path_but_not_other_files(tiny_cfg, tmp_path, monkeypatch):
    """A pod resumes with its data mounted elsewhere: data.paths changed, the documents (and their names) did not."""
    first = write_corpus(tmp_path / "mnt" / "data")  # 17 stdlib modules; 10% holds out 2 of them
    args = ("train.steps=6", "checkpoint.every=1", "data.source=text", "data.heldout_percent=10")
    cfg = tiny_cfg(*args, f"data.paths=[{first}]")
    train(cfg, stop_at=3, progress=False)
    os.rename(tmp_path / "mnt", tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = tiny_cfg(*args, "data.paths=[data/*.txt]")  # relative to another working directory
    train(moved, stop_at=4, progress=False)
    second = run_record.read(cfg.run.dir)[1]
    assert second["resumed_from"] == 3 and second["allowed_data_change"] == [] and second["data_position"] is None
    assert second["changed"] == {"data.paths": [[first], ["data/*.txt"]]}
    uninterrupted = make_train_iterator(moved)
    for _ in range(4):
        next(uninterrupted)
    assert _data_rows(cfg.run.dir, 4) == list(zip(uninterrupted.get_state()["doc"], uninterrupted.get_state()["offset"]))
    uninterrupted.close()

    os.makedirs("fewer")
    for name in sorted(os.listdir("data"))[1:]:  # the same files but one
        os.link(os.path.join("data", name), os.path.join("fewer", name))
    before = snapshot(cfg.run.dir)
    with pytest.raises(CheckpointError, match=r"data\.paths \(checkpoint \['data/\*\.txt'\], now \['fewer/\*\.txt'\]\)"):
        train(tiny_cfg(*args, "data.paths=[fewer/*.txt]"), progress=False)
    assert snapshot(cfg.run.dir) == before


def _tiny_overrides(cfg):
    return [*TINY, "train.steps=8", "checkpoint.every=1", f"run.dir={cfg.run.dir}"]


def test_a_checkpoint_from_before_a_key_existed_compares_with_its_default(tiny_cfg):
    """Configs saved by an older pretrax lack newer keys: they had the default, which is no change."""
    cfg = tiny_cfg()
    saved = cfg.to_dict()
    del saved["model"]["n_kv_heads"], saved["data"]["shuffle"], saved["train"]["batch_size"]
    ckpt.check_compatible(saved, cfg, 3)  # no error
    # dropout and the init rule change how the weights are trained or were drawn, not what they are
    ckpt.check_compatible(saved, tiny_cfg("model.dropout=0.1", "model.residual_init_scaling=false"), 3)
    with pytest.raises(CheckpointError, match=r"model\.d_ff \(checkpoint 64, now 128\)"):
        ckpt.check_compatible(saved, tiny_cfg("model.d_ff=128"), 3)
    with pytest.raises(CheckpointError, match=r"different optimizer: optim\.name \(checkpoint 'adamw', now "
                                              r"'adafactor'\)"):  # Adam's moments cannot become factors
        ckpt.check_compatible(saved, tiny_cfg("optim.name=adafactor"), 3)
    assert run_record.data_order_changes(saved, cfg) == {"train.batch_size": (16, 8)}  # 16: the default
    saved["data"]["mixture"] = [{"source": "stdlib"}]
    assert "data.mixture" in run_record.data_order_changes(saved, cfg)
    assert run_record.data_order_changes(cfg.to_dict(), tiny_cfg("data.num_workers=2", "data.prefetch=0")) == {}


@pytest.mark.slow
def test_an_interrupted_retention_never_leaves_a_damaged_checkpoint(tiny_cfg, monkeypatch, capsys):
    """Ctrl-C while an old step is being deleted: the step was renamed away first, so none is half deleted."""
    from pretrax import storage

    cfg = tiny_cfg("train.steps=4", "checkpoint.every=1", "checkpoint.keep=1", "checkpoint.async_save=false")
    real_rmtree = storage.rmtree
    calls = []

    def interrupted_rmtree(url):  # delete one file of the step, then the user presses Ctrl-C
        calls.append(url)
        for root, _, files in os.walk(url):
            if files:
                os.remove(os.path.join(root, files[0]))
                break
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert calls and ".retired" in calls[0]
    reports = list_steps(ckpt.checkpoint_dir(cfg.run.dir))
    assert [r.step for r in reports] == [2] and all(r.verifies for r in reports)  # step 1: renamed away first
    assert cli.main(["checkpoints", cfg.run.dir]) == 0
    capsys.readouterr()
    # the next run finishes the deletion and goes on from step 2
    monkeypatch.setattr(storage, "rmtree", real_rmtree)
    result = train(cfg, progress=False)
    assert result.start_step == 2 and result.final_step == 4
    assert sorted(os.listdir(ckpt.checkpoint_dir(cfg.run.dir))) == ["4"]
