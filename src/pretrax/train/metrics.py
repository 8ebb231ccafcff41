"""Where training numbers go: RUN_DIR/metrics.jsonl, TensorBoard events, and a progress bar or log lines.

Only process 0 writes (on a pod every host computes the same replicated
metrics); the others print nothing but warnings and errors. A resumed run
continues the same metrics.jsonl. A run killed after its last checkpoint
logged steps the resumed run will compute again: those rows (and a line cut
off by the kill) move to metrics.superseded.jsonl, so metrics.jsonl holds
each step once and nothing is lost.

On a disk metrics.jsonl is appended to row by row. Object storage has no
append, so under gs:// the writer keeps the file's rows and rewrites the one
object whole (an atomic replace) at most every REMOTE_FLUSH_S seconds, at
every checkpoint save and at the end: the rows up to the newest checkpoint
are always stored, and rows after it are the ones a resume recomputes.

People watch a terminal through the tqdm bar; a pod's log file (stderr not a
terminal: nohup, `| tee`, tpu_scripts/logs.sh) gets one plain line every
train.log_every steps instead: step/total, loss, tokens/s, MFU, elapsed, ETA.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import jax

from pretrax import storage

REMOTE_FLUSH_S = 30.0  # at most this long between rewrites of a gs:// metrics.jsonl


# Modules tensorboardX imports at module level only to write to their own storage (a torch tensor check,
# s3:// and gs:// event files) where they are installed: torch (2.4 s and the CUDA libraries), google-cloud-storage
# (0.5 s, through the gcs extra). pretrax hands it Python floats and a local directory (a gs:// run's events are
# uploaded through pretrax.storage), so in a training process that has not imported them they are kept out.
_TENSORBOARDX_UNUSED = ("torch", "google.cloud.storage", "boto3")


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported without the modules in _TENSORBOARDX_UNUSED that are not
    already imported (tensorboardX expects the ImportError a None entry in sys.modules raises)."""
    blocked = [name for name in _TENSORBOARDX_UNUSED if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        for name in blocked:
            del sys.modules[name]
    return SummaryWriter


class MetricsWriter:
    def __init__(self, run_dir: str, total_steps: int, start_step: int, *, progress: bool | None = None):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._lines = None
        self._tb_local = None
        if not self.enabled:
            return
        self.path = storage.join(run_dir, "metrics.jsonl")
        set_aside_rows_after(self.path, start_step)
        self._remote = storage.is_remote(run_dir)
        if self._remote:  # no append on object storage: keep the rows, rewrite the object
            self._rows = storage.read_text(self.path).splitlines(keepends=True) if storage.isfile(self.path) else []
            self._dirty, self._flushed_at = False, time.monotonic()
        else:
            self._jsonl = open(self.path, "a", encoding="utf-8")
        SummaryWriter = summary_writer_class()
        self._tb_dir = storage.join(run_dir, "tensorboard")
        # under gs:// the event file is written locally and uploaded whole at each flush, through the same
        # storage layer (bounded waits, no second GCS client): TensorBoard reads the object as it grows
        self._tb_local = tempfile.mkdtemp(prefix="pretrax-tensorboard-") if self._remote else None
        self._tb = SummaryWriter(self._tb_local or self._tb_dir, flush_secs=10)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True)
        else:
            self._lines = ProgressLines(total_steps, start_step)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        line = json.dumps(row) + "\n"
        if self._remote:
            self._rows.append(line)
            self._dirty = True
            if time.monotonic() - self._flushed_at >= REMOTE_FLUSH_S:
                self.flush()
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, global_step=int(step))
        if self._bar is not None:
            formats = {"loss": "{:.4f}", "tokens_per_s": "{:,.0f}", "eval_bits_per_byte": "{:.3f}"}
            shown = {k: f.format(row[k]) for k, f in formats.items() if k in row}
            self._bar.set_postfix(shown, refresh=False)
        elif "loss" in row:
            print(self._lines.line(row), flush=True)

    def flush(self) -> None:
        """Store every row written so far (a gs:// metrics.jsonl is rewritten whole; a local one is already)."""
        if not self.enabled or not self._remote or not self._dirty:
            return
        storage.write_text(self.path, "".join(self._rows))
        self._tb.flush()
        for name in os.listdir(self._tb_local):
            with open(os.path.join(self._tb_local, name), "rb") as f:
                storage.write_bytes(storage.join(self._tb_dir, name), f.read())
        self._dirty, self._flushed_at = False, time.monotonic()

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
        if self._jsonl is not None:
            self._jsonl.close()
        self.flush()
        if self._tb is not None:
            self._tb.close()
        if self._tb_local is not None:
            shutil.rmtree(self._tb_local, ignore_errors=True)


class ProgressLines:
    """The plain log line of a step, for logs that are not a terminal.

    Elapsed and ETA count from this process's first logged step, so the
    compile of the first step and a resume's skipped steps do not skew the ETA.
    """

    def __init__(self, total_steps: int, start_step: int):
        self.total, self.start = total_steps, start_step
        self.started = time.monotonic()
        self.first: tuple[int, float] | None = None  # (step, time) of the first line

    def line(self, row: dict[str, Any]) -> str:
        step, now = row["step"], time.monotonic()
        if self.first is None:
            self.first = (step, now)
        parts = [f"step {step}/{self.total}", f"loss {row['loss']:.4f}"]
        if "tokens_per_s" in row:
            parts.append(f"{row['tokens_per_s']:,.0f} tokens/s")
        if "mfu" in row:  # named with the FLOP convention it counts (train.mfu_attention)
            attention = {"full": "attention full", "causal": "causal attention half"}.get(row.get("mfu_attention"))
            parts.append(f"MFU {100 * row['mfu']:.1f}%" + (f" ({attention})" if attention else ""))
        parts.append(f"elapsed {format_duration(now - self.started)}")
        done, spent = step - self.first[0], now - self.first[1]
        if done > 0 and step < self.total:
            parts.append(f"ETA {format_duration(spent / done * (self.total - step))}")
        return " | ".join(parts)


def format_duration(seconds: float) -> str:
    """3h05m, 4m07s, 12s: short and sortable by eye."""
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def logged_rows(path: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Every line of a metrics.jsonl (local or gs://) with its row, or None for a line a kill cut off (or no step)."""
    lines = storage.read_bytes(path).decode("utf-8", errors="replace").splitlines(keepends=True)
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

    The kept rows replace `path` whole (a temporary file and a rename on disk, one object
    write on GCS), after the moved ones are safely appended to the side file: a crash at
    any point loses no row. Returns how many rows moved.
    """
    if not storage.isfile(path):
        return 0
    keep, moved = [], []
    for line, row in logged_rows(path):
        later = row is None or row["step"] > step  # a line cut off by a kill goes too
        (moved if later else keep).append(line if line.endswith("\n") else line + "\n")
    if not moved:
        return 0
    side = storage.join(storage.parent(path), "metrics.superseded.jsonl")
    storage.append_text(side, "".join(moved))
    storage.write_text(path, "".join(keep))
    return len(moved)


def _plain(value: Any) -> Any:
    try:
        value = value.item()
    except AttributeError:
        pass
    return value
