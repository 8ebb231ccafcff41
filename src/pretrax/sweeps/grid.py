"""Sweep files: parse, expand the grid into points, and validate every point's config before anything runs.

A sweep is YAML (configs/sweeps/tiny_widths.yaml is an example):

    base: ../tiny.yaml             # the base config: next to this file, else from the working directory
    dir: runs/sweeps/tiny_widths   # point P trains in DIR/P; DIR/results.csv collects them (or gs://bucket/...)
    overrides: [train.steps=200]   # optional: applied to every point
    grid:
      product:                     # every combination of these lists
        model.d_model: [64, 128]
        optim.lr: [1e-3, 3e-3]
      zip:                         # parallel lists: index i of each list is one row
        model.n_layers: [2, 4]
        model.n_heads: [2, 4]

The points are the zip rows times the product's combinations (either part may
be left out). Keys are any dotted config key; each point's config is built by
pretrax.config.load, so a misspelt key or an invalid combination is the
config's own one-line error, raised for the first bad point before any runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import re
from typing import Any

import yaml

from pretrax import config as config_lib
from pretrax import storage
from pretrax.config import Config
from pretrax.errors import ConfigError

SWEEP_KEYS = ("base", "dir", "overrides", "grid")
GRID_KEYS = ("product", "zip")


@dataclasses.dataclass(frozen=True)
class Point:
    name: str  # stable and readable, from the swept values: d_model=64,lr=0.001
    values: dict[str, Any]  # swept key -> the value as the config holds it
    overrides: tuple[str, ...]  # key=value: the sweep's fixed overrides, then the swept ones (run.dir not included)
    cfg: Config  # run.dir = the sweep's dir / name


@dataclasses.dataclass(frozen=True)
class Sweep:
    path: str
    base: str  # the base config's path, as found
    dir: str
    keys: tuple[str, ...]  # swept keys: zip keys, then product keys
    points: tuple[Point, ...]


def load_sweep(path: str, out_dir: str | None = None) -> Sweep:
    """Read, expand and validate a sweep file; out_dir replaces the file's `dir`."""
    spec = _read(path)
    base = _find_base(path, spec["base"])
    fixed = _string_list(path, spec.get("overrides") or [])
    rows, keys = _expand(path, spec.get("grid"))
    for key in keys + tuple(item.split("=", 1)[0].strip() for item in fixed):
        if key == "run.dir":
            raise ConfigError(f"sweep {path!r}: run.dir cannot be set; the sweep gives each point DIR/<point name>")
    sweep_dir = out_dir or spec.get("dir")
    if not isinstance(sweep_dir, str) or not sweep_dir:
        raise ConfigError(f"sweep {path!r} needs `dir:` (where the points' runs and results.csv go)")
    storage.check_url(sweep_dir, "sweep dir")  # s3://... is refused here, never made a local folder
    points = []
    for raw in rows:
        swept = [f"{k}={_dump(v)}" for k, v in raw.items()]
        try:
            cfg = config_lib.load(base, [*fixed, *swept])
        except ConfigError as e:
            raise ConfigError(f"sweep {path!r}, point {' '.join(swept)}: {e}") from None
        values = {k: _lookup(cfg.to_dict(), k) for k in keys}
        name = point_name(values)
        cfg = cfg.replace(**{"run.dir": storage.join(sweep_dir, name)})
        points.append(Point(name, values, (*fixed, *(f"{k}={_dump(v)}" for k, v in values.items())), cfg))
    names = [p.name for p in points]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"sweep {path!r} has the same point more than once: {', '.join(twice)}")
    return Sweep(path, base, sweep_dir, keys, tuple(points))


def point_name(values: dict[str, Any]) -> str:
    """d_model=64,lr=0.001: each key's last part (the full key where two share it), values as written back."""
    last = [k.rsplit(".", 1)[-1] for k in values]
    parts = []
    for key, short in zip(values, last):
        label = short if last.count(short) == 1 else key
        parts.append(f"{label}={_text(values[key])}")
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))


def _read(path: str) -> dict[str, Any]:
    spec = config_lib.read_yaml_mapping(path, "sweep file", examples="configs/sweeps/ has examples",
                                        holds=f"a mapping with keys {', '.join(SWEEP_KEYS)}")
    _known(path, spec, SWEEP_KEYS, "")
    if not spec.get("base"):
        raise ConfigError(f"sweep {path!r} needs `base:` (the config every point starts from, e.g. ../tiny.yaml)")
    return spec


def _known(path: str, mapping: dict, valid: tuple[str, ...], prefix: str) -> None:
    for key in mapping:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid: {', '.join(valid)}"
            raise ConfigError(f"sweep {path!r}: unknown key '{prefix}{key}'; {hint}")


def _find_base(path: str, base: str) -> str:
    """The base config next to the sweep file first, then relative to the working directory."""
    beside = os.path.join(os.path.dirname(path), base)
    for candidate in (beside, base):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    raise ConfigError(f"sweep {path!r}: base config {base!r} is neither next to the sweep file ({beside}) "
                      "nor in the working directory")


def _string_list(path: str, items: Any) -> tuple[str, ...]:
    if not isinstance(items, list) or not all(isinstance(i, str) and "=" in i for i in items):
        raise ConfigError(f"sweep {path!r}: overrides must be a list of key=value strings, got {items!r}")
    return tuple(items)


def _expand(path: str, grid: Any) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """Rows of {key: raw value}: every zip row combined with every product combination."""
    if isinstance(grid, dict):
        _known(path, grid, GRID_KEYS, "grid.")
    if not isinstance(grid, dict) or not any(grid.get(k) for k in GRID_KEYS):
        raise ConfigError(f"sweep {path!r} has an empty grid; give grid.product and/or grid.zip, "
                          "each mapping dotted config keys to lists of values")
    parts = {}
    for part in GRID_KEYS:
        axes = grid.get(part) or {}
        if not isinstance(axes, dict):
            raise ConfigError(f"sweep {path!r}: grid.{part} must map dotted config keys to lists, got {axes!r}")
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep {path!r}: grid.{part}.{key} must be a non-empty list of values, "
                                  f"got {values!r}")
        parts[part] = axes
    both = sorted(set(parts["product"]) & set(parts["zip"]))
    if both:
        raise ConfigError(f"sweep {path!r}: {', '.join(both)} is in both grid.product and grid.zip; keep it in one")
    lengths = {key: len(values) for key, values in parts["zip"].items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ConfigError(f"sweep {path!r}: grid.zip lists must have the same length ({shown})")
    zip_rows = [dict(zip(parts["zip"], row)) for row in zip(*parts["zip"].values())] or [{}]
    product_rows = [dict(zip(parts["product"], row)) for row in itertools.product(*parts["product"].values())]
    rows = [{**z, **p} for z in zip_rows for p in product_rows]
    return rows, tuple(parts["zip"]) + tuple(parts["product"])


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _dump(value: Any) -> str:
    """A value as an override's text, read back by the config as the same value."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float: 0.001, 3e-05
    return _dump(value) if isinstance(value, (list, dict)) else str(value)
