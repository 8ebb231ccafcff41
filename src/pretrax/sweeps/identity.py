"""DIR/sweep.json: which sweep a shared sweep dir belongs to, so workers that read different sweeps never mix.

Workers on different machines each read their own copy of the sweep file
(and of its base config). If one copy differs, points of the same name
would train different configs into the same run dirs and results. The first
worker records the sweep's hash in DIR/sweep.json (created once, exclusively);
every later worker compares its own and is refused, before it claims
anything, when they differ. The hash covers every point's name and resolved
config (run.dir left out, so a relative and an absolute --dir agree), so an
edited base config counts as a different sweep too.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

from pretrax import storage
from pretrax.errors import ConfigError
from pretrax.sweeps.grid import Sweep


def sweep_hash(sweep: Sweep) -> str:
    points = [[p.name, p.cfg.replace(**{"run.dir": p.name}).to_yaml()] for p in sweep.points]
    return hashlib.sha256(json.dumps(points).encode("utf-8")).hexdigest()[:16]


def claim_dir(sweep: Sweep) -> None:
    """Record this sweep as the owner of its dir, or check that it already is; else one ConfigError line."""
    path = storage.join(sweep.dir, "sweep.json")
    mine = {"sweep": sweep.path, "hash": sweep_hash(sweep), "points": len(sweep.points),
            "host": socket.gethostname(), "created_at": time.time()}
    if storage.create_exclusive(path, json.dumps(mine, indent=1) + "\n"):
        return
    recorded = _read(path)
    if recorded.get("hash") == mine["hash"]:
        return
    theirs = f"{recorded.get('sweep')!r} (hash {recorded.get('hash')}, from host {recorded.get('host')})"
    ours = f"{sweep.path!r} (hash {mine['hash']})"
    if os.path.basename(str(recorded.get("sweep"))) == os.path.basename(sweep.path):
        what = f"workers read different versions of the sweep: {path} records {theirs}, this worker read {ours}"
        fix = "give every worker the same sweep file and base config"
    else:
        what = f"sweep dir {sweep.dir} belongs to another sweep, {theirs} per {path}; this worker read {ours}"
        fix = "give this sweep another --dir"
    raise ConfigError(f"{what}; {fix} (or, when no worker of the recorded sweep runs any more and the change "
                      f"is meant, e.g. a grid extended, delete {path})")


def _read(path: str) -> dict:
    """sweep.json, waiting briefly while its creator is still writing it (a disk's create-then-write)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return json.loads(storage.read_text(path))
        except ValueError:
            if time.monotonic() > deadline:
                raise ConfigError(f"{path} is not readable JSON; it was not written by pretrax sweep --worker: "
                                  "move it away or give the sweep another --dir") from None
            time.sleep(0.2)
