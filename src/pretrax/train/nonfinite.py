"""What a non-finite loss or gradient does: train.nan_policy = stop | skip | rollback.

The train step never applies a non-finite update (step.py keeps the old
weights and moments and reports ``nonfinite``); the loop looks at those flags
before every log line and every checkpoint, so no checkpoint is written after
an unhandled bad step. Then:

* stop      raise TrainingError naming the first bad step; nothing new is saved.
* skip      that update was dropped; count it (``skipped_steps`` in the metrics) and go on.
* rollback  reload the newest checkpoint and go on from it with the batches
            that follow the bad one, so the batches since the checkpoint are
            skipped (PaLM's remedy for loss spikes). At most MAX_ROLLBACKS per
            run invocation, then it stops as ``stop`` would.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from pretrax.errors import TrainingError

MAX_ROLLBACKS = 5


def bad_steps(pending: Sequence[tuple[int, Any]]) -> list[int]:
    """Steps among the pending (step, device metrics) whose loss or gradients were not finite."""
    flags = jax.device_get([m["nonfinite"] for _, m in pending])
    return [s for (s, _), f in zip(pending, flags) if float(f) > 0]


def stop_error(policy: str, bad: Sequence[int], last_saved: int | None, why: str = "") -> TrainingError:
    saved = f"the newest checkpoint is step {last_saved}" if last_saved is not None else "no checkpoint was written"
    return TrainingError(
        f"non-finite loss or gradients at step {bad[0]} (train.nan_policy={policy}{why}); nothing was saved after "
        f"it and {saved}; set train.nan_policy=skip or rollback, or lower optim.lr")
