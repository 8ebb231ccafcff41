"""Test set-up: 8 simulated CPU devices, so sharding code runs on a real mesh.

XLA_FLAGS must be set before jax is first imported, which is why it is here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from gcs_fixture import gcs  # noqa: E402,F401  (sets the GCS emulator variables before gcsfs/tensorstore load)

# A model small enough that a test step compiles and runs in well under a second.
TINY = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.d_ff=64",
    "data.seq_len=32",
    "train.batch_size=8",
    "train.steps=6",
    "train.log_every=1",
    "train.eval_every=0",
    "train.eval_batches=1",
    "train.sample_tokens=0",
    "optim.warmup_steps=2",
    "checkpoint.every=3",
]


@pytest.fixture
def tiny_cfg(tmp_path):
    """make(*overrides) -> a validated Config for a tiny run in a fresh directory."""
    from pretrax import config as config_lib

    def make(*overrides, run_dir=None):
        run_dir = run_dir or str(tmp_path / "run")
        return config_lib.load(None, TINY + [f"run.dir={run_dir}", *overrides])

    return make
