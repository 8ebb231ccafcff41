"""Where training numbers go: RUN_DIR/metrics.jsonl, TensorBoard events and a progress bar.

Only process 0 writes (on a pod every host computes the same replicated
metrics). metrics.jsonl is opened for append, so a resumed run continues the
same file. A run killed after its last checkpoint logged steps the resumed run
will compute again: those rows (and a line cut off by the kill) move to
metrics.superseded.jsonl, so metrics.jsonl holds each step once and nothing is lost.
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
        path = os.path.join(run_dir, "metrics.jsonl")
        set_aside_rows_after(path, start_step)
        self._jsonl = open(path, "a", encoding="utf-8")
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


def logged_rows(path: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Every line of a metrics.jsonl with its row, or None for a line a kill cut off (or no step)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines(keepends=True)
    out = []
    for line in lines:
        try:
            row = json.loads(line)
            row["step"] = int(row["step"])
        except (ValueError, KeyError, TypeError):
            row = None
        out.append((line, row))
    return out


def set_aside_rows_after(path: str, step: int) -> int:
    """Move rows logged after `step` (and unreadable lines) from `path` to metrics.superseded.jsonl.

    The kept rows are written to a temporary file and renamed over `path`, after the
    moved ones are safely appended to the side file: a crash at any point loses no row.
    Returns how many rows moved.
    """
    if not os.path.exists(path):
        return 0
    keep, moved = [], []
    for line, row in logged_rows(path):
        later = row is None or row["step"] > step  # a line cut off by a kill goes too
        (moved if later else keep).append(line if line.endswith("\n") else line + "\n")
    if not moved:
        return 0
    side = os.path.join(os.path.dirname(path), "metrics.superseded.jsonl")
    with open(side, "a", encoding="utf-8") as f:
        f.writelines(moved)
        f.flush()
        os.fsync(f.fileno())
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(moved)


def _plain(value: Any) -> Any:
    try:
        value = value.item()
    except AttributeError:
        pass
    return value
