"""Test set-up: 8 simulated CPU devices, so sharding code runs on a real mesh.

XLA_FLAGS must be set before jax is first imported, which is why it is here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
