"""Does a checkpoint read back whole? Asked by `pretrax checkpoints` and by the resume fallback.

A checkpoint step *verifies* when
  - it is complete: on a disk Orbax writes a step into `STEP.orbax-checkpoint-tmp`
    and renames it to `STEP` only once every item is written, so a directory with
    the final name is complete and a temporary one is a save that never finished;
    on GCS (no rename) it writes `STEP` directly and marks it complete with a
    `commit_success.txt` object last, so a `STEP` without the marker never finished;
  - every item Orbax recorded in `_CHECKPOINT_METADATA` is there: the JSON
    items (data-iterator state, config) parse, and the state's `_METADATA`
    parses and every array it names reads back in full from its TensorStore
    files, with no chunk missing.
That reads every stored byte once, on the host, one block of an array at a
time, with no model, config or devices, so it works on any machine, for a
local run dir or a gs:// one (through pretrax.storage and tensorstore's gcs driver). It finds
deleted, truncated or emptied files; it cannot find flipped bits, because
Orbax stores no checksums.
"""

from __future__ import annotations

import dataclasses
import json

from pretrax import storage
from pretrax.errors import StorageError

TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix for a step still being written (on a disk)
COMMIT_MARK = "commit_success.txt"  # Orbax's last object of a finished step on object storage
_BLOCK_BYTES = 64 << 20  # arrays are read in blocks of about this many bytes


def checkpoint_dir(run_dir: str) -> str:
    """RUN_DIR/checkpoints: one Orbax step directory per checkpoint (a local path made absolute, or a URL)."""
    return storage.join(storage.absolute(storage.check_url(run_dir)), "checkpoints")


@dataclasses.dataclass(frozen=True)
class StepReport:
    step: int
    path: str
    bytes: int
    complete: bool  # False: a save that was interrupted (or failed) before Orbax renamed it
    problem: str | None  # why it does not verify; None when it does

    @property
    def verifies(self) -> bool:
        return self.complete and self.problem is None


def list_steps(directory: str, *, verify: bool = True) -> list[StepReport]:
    """Every step directory in a checkpoint directory, oldest first, complete or not."""
    reports = []
    for name in storage.listdir(directory):
        path = storage.join(directory, name)
        base = name.split(TMP_MARK)[0]
        if not (base.isdigit() and storage.isdir(path)):
            continue
        complete = name == base and (not storage.is_remote(path) or storage.exists(storage.join(path, COMMIT_MARK)))
        if complete:
            problem = find_problem(path) if verify else None
        else:
            problem = "incomplete: its save never finished (killed, or a write failed)"
        reports.append(StepReport(int(base), path, _size(path), complete, problem))
    return sorted(reports, key=lambda r: (r.step, r.complete))


def find_problem(step_dir: str, *, read_arrays: bool = True) -> str | None:
    """The first thing that keeps a complete step from reading back whole, or None.

    read_arrays=False checks only the metadata and JSON files (cheap): the
    resume does that first, and its restore then reads the arrays itself.
    """
    try:
        handlers = _read_json(storage.join(step_dir, "_CHECKPOINT_METADATA"), step_dir)["item_handlers"]
    except (KeyError, TypeError):
        return "_CHECKPOINT_METADATA names no items"
    except _Damage as e:
        return str(e)
    for item, handler in sorted(handlers.items()):
        item_dir = storage.join(step_dir, item)
        try:
            if not storage.isdir(item_dir):
                raise _Damage(f"{item}/ is missing")
            if handler.endswith("JsonCheckpointHandler"):
                _read_json(storage.join(item_dir, "metadata"), step_dir)
            elif read_arrays:
                _read_arrays(item_dir, step_dir)
            else:
                _read_json(storage.join(item_dir, "_METADATA"), step_dir)
        except _Damage as e:
            return str(e)
    return None


class _Damage(Exception):
    pass


def _read_json(path: str, root: str):
    rel = path[len(root):].lstrip("/\\") if path.startswith(root) else path
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise _Damage(f"{rel} is missing") from None
    except StorageError:
        raise
    except (OSError, ValueError) as e:
        raise _Damage(f"{rel} does not parse: {_first_line(e)}") from None


def _read_arrays(item_dir: str, root: str) -> None:
    """Read every array the item's _METADATA names, failing on any missing chunk."""
    import tensorstore as ts  # here, so listing checkpoints without verifying stays light

    meta = _read_json(storage.join(item_dir, "_METADATA"), root)
    item = storage.basename(item_dir)
    try:
        entries = meta["tree_metadata"].values()
        names = [
            ".".join(str(k["key"]) for k in e["key_metadata"])
            for e in entries
            if e["value_metadata"]["value_type"] in ("jax.Array", "np.ndarray")
            and not e["value_metadata"].get("skip_deserialize")
        ]
    except (KeyError, TypeError, AttributeError):
        raise _Damage(f"{item}/_METADATA does not list the arrays") from None
    context = ts.Context()
    driver = "zarr3" if meta.get("use_zarr3") else "zarr"
    base = item_dir.rstrip("/") + "/" if storage.is_remote(item_dir) else f"file://{item_dir}/"
    for name in names:
        if meta.get("use_ocdbt", True):
            kvstore = {"driver": "ocdbt", "base": base, "path": f"{name}/"}
        else:
            kvstore = f"{base}{name}/"
        spec = {"driver": driver, "kvstore": kvstore, "fill_missing_data_reads": False}
        try:
            array = ts.open(spec, open=True, read=True, context=context).result()
            for block in _blocks(array):
                block.read().result()
        except (ValueError, OSError) as e:  # TensorStore's errors are ValueErrors carrying its status text
            raise _Damage(f"{item} array {name!r} does not read back: {_first_line(e)}") from None


def _blocks(array):
    """Slices along the first axis of about _BLOCK_BYTES each (the whole array when it is a scalar)."""
    if array.rank == 0 or array.shape[0] == 0:
        return [array]
    row_bytes = array.dtype.numpy_dtype.itemsize * max(1, int(_prod(array.shape[1:])))
    rows, n = max(1, _BLOCK_BYTES // row_bytes), array.shape[0]
    return [array[i : min(i + rows, n)] for i in range(0, n, rows)]


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _size(path: str) -> int:
    return sum(size for _, size in storage.walk_files(path))


def _first_line(e: BaseException) -> str:
    """The error's first line without TensorStore's long spec dump."""
    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    return text.split(" [tensorstore_spec")[0].split(" [source locations")[0][:300]


def format_reports(reports: list[StepReport]) -> str:
    """A table for people: step, size, complete, verifies (and why not)."""
    lines = [f"{'step':>8}  {'size':>9}  {'complete':<8}  verifies"]
    for r in reports:
        verdict = "yes" if r.verifies else ("-" if not r.complete else f"NO: {r.problem}")
        lines.append(f"{r.step:>8}  {_human(r.bytes):>9}  {'yes' if r.complete else 'no':<8}  {verdict}")
    good = [r.step for r in reports if r.verifies]
    lines.append(f"newest that verifies: step {good[-1]}" if good else "no checkpoint verifies: nothing to resume from")
    return "\n".join(lines)


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1024
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
