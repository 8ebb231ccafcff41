"""Where training numbers go: RUN_DIR/metrics.jsonl, TensorBoard events and a progress bar.

Only process 0 writes (on a pod every host computes the same replicated
metrics). metrics.jsonl is opened for append, so a resumed run continues the
same file and never loses what an earlier run wrote.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax


class MetricsWriter:
    def __init__(self, run_dir: str, total_steps: int, start_step: int, *, progress: bool | None = None):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), flush_secs=10)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, global_step=int(step))
        if self._bar is not None:
            formats = {"loss": "{:.4f}", "tokens_per_s": "{:,.0f}", "eval_bits_per_byte": "{:.3f}"}
            shown = {k: f.format(row[k]) for k, f in formats.items() if k in row}
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def print(self, text: str) -> None:
        """A line for the person watching (through the bar when one is shown)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _plain(value: Any) -> Any:
    try:
        value = value.item()
    except AttributeError:
        pass
    return value
