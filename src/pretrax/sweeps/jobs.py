"""`pretrax sweep --emit-jobs FILE`: one tpu_scripts/launch.sh command per point, instead of running them here.

Each line trains one point on a TPU VM (every worker): the base config, the
point's overrides and its run.dir. TPU_NAME and ZONE stay shell variables,
so one file serves any pod: `TPU_NAME=my-v5p ZONE=us-east5-a sh FILE`
launches them one after another (or pick lines). Paths are written as given
(relative to the working directory), so emit from the repository root; give
the sweep a gs:// dir when the runs should outlive the VM.
"""

from __future__ import annotations

import os
import shlex

from pretrax.sweeps.grid import Sweep

LAUNCH = "tpu_scripts/launch.sh"


def launch_lines(sweep: Sweep) -> list[str]:
    lines = []
    for point in sweep.points:
        args = [*point.overrides, f"run.dir={point.cfg.run.dir}"]
        lines.append(f'{LAUNCH} --name "${{TPU_NAME}}" --zone "${{ZONE}}" --config {shlex.quote(sweep.base)} -- '
                     + " ".join(shlex.quote(a) for a in args))
    return lines


def write_jobs(sweep: Sweep, path: str) -> int:
    """Write the launch commands (replaced atomically); returns how many."""
    lines = launch_lines(sweep)
    header = [f"# {len(lines)} point(s) of sweep {sweep.path}; set TPU_NAME and ZONE, then run a line (or sh FILE)",
              ': "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"']
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(header + lines) + "\n")
    os.replace(tmp, path)
    return len(lines)
