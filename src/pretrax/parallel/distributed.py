"""Start JAX's multi-controller runtime (one process per host) from the environment.

* TPU pods (several workers) and SLURM jobs (several tasks): jax.distributed
  finds the coordinator itself.
* Anywhere else, explicit variables: PRETRAX_COORDINATOR (host:port),
  PRETRAX_NUM_PROCESSES, PRETRAX_PROCESS_ID. On CPU the collectives go through
  gloo, which is how the multi-process tests run on one machine.
* None of these: a single process, nothing to do.

Must run before anything asks JAX for its devices.
"""

from __future__ import annotations

import os

import jax

from pretrax.errors import ConfigError

_started = False


def initialize_from_env(environ=os.environ) -> bool:
    """Initialise jax.distributed if the environment describes a multi-process job; True if it did."""
    global _started
    if _started:
        return True
    coordinator = environ.get("PRETRAX_COORDINATOR")
    if coordinator:
        try:
            num_processes = int(environ["PRETRAX_NUM_PROCESSES"])
            process_id = int(environ["PRETRAX_PROCESS_ID"])
        except (KeyError, ValueError):
            raise ConfigError(
                "PRETRAX_COORDINATOR is set, so PRETRAX_NUM_PROCESSES and PRETRAX_PROCESS_ID must be integers too"
            ) from None
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"PRETRAX_PROCESS_ID={process_id} must be in [0, PRETRAX_NUM_PROCESSES={num_processes})")
        # only the CPU backend reads this; GPUs and TPUs keep their own collectives
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=int(environ.get("PRETRAX_INIT_TIMEOUT", "300")))
    elif _is_multi_host_tpu(environ) or _is_multi_task_slurm(environ):
        jax.distributed.initialize()
    else:
        return False
    _started = True
    return True


def _is_multi_host_tpu(environ) -> bool:
    return "," in environ.get("TPU_WORKER_HOSTNAMES", "")


def _is_multi_task_slurm(environ) -> bool:
    return "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1
