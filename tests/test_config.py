"""Config: typed schema, dotted overrides, one-line errors naming the key."""

import pytest
import yaml

from pretrax import config as config_lib
from pretrax.errors import ConfigError


def test_defaults_and_overrides():
    cfg = config_lib.load(None, ["model.d_model=128", "optim.lr=3e-4", "mesh.fsdp=2", "run.dir=/tmp/x"])
    assert cfg.model.d_model == 128
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.mesh.fsdp == 2 and cfg.run.dir == "/tmp/x"
    assert cfg.train.steps == config_lib.TrainSection().steps  # untouched keys keep the schema default


@pytest.mark.parametrize("path", ["configs/tiny.yaml", "configs/gpt1.yaml"])
def test_shipped_configs_load(path):
    cfg = config_lib.load(path)
    assert cfg.to_dict() == config_lib.from_dict(yaml.safe_load(cfg.to_yaml())).to_dict()  # YAML round trip


def test_rules_override_merges_with_defaults():
    cfg = config_lib.load(None, ["mesh.rules.vocab=null"])
    assert cfg.mesh.rules["vocab"] is None
    assert cfg.mesh.rules["embed"] == config_lib.DEFAULT_RULES["embed"]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.d_modle=3", "did you mean 'model.d_model'"),
        ("trian.steps=3", "did you mean 'train'"),
        ("train.steps=abc", "'train.steps' expects int"),
        ("train.steps=-5", "'train.steps' must be a positive integer"),
        ("train.steps=1.5", "'train.steps' expects int"),
        ("model.tie_embeddings=maybe", "'model.tie_embeddings' expects bool"),
        ("model.positions=rop", "did you mean 'rope'"),
        ("mesh.data=0", "'mesh.data' must be a positive integer or -1"),
        ("mesh.rules.embed=model", "unknown mesh axis 'model'"),
        ("model.n_heads=3", "divisible by model.n_heads"),
        ("train.grad_accum=3", "divisible by train.grad_accum"),
        ("steps", "must look like key=value"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as e:
        config_lib.load(None, [override])
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layer: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.n_layer'; did you mean 'model.n_layers'"):
        config_lib.load(path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load(bad)


def test_diff_names_dotted_keys():
    a = config_lib.load(None).to_dict()
    b = config_lib.load(None, ["model.d_model=64", "train.steps=3"]).to_dict()
    assert config_lib.diff(a, b) == ["model.d_model", "train.steps"]
