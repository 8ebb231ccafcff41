"""Start JAX's multi-controller runtime (one process per host) from the environment.

* TPU VMs (TPU chips on the PCI bus; GKE's TPU_WORKER_HOSTNAMES) and SLURM
  jobs (several tasks): jax.distributed finds the coordinator itself.
* Anywhere else, explicit variables: PRETRAX_COORDINATOR (host:port),
  PRETRAX_NUM_PROCESSES, PRETRAX_PROCESS_ID. On CPU the collectives go through
  gloo, which is how the multi-process tests run on one machine.
* None of these: a single process, nothing to do.

Timeouts, in seconds, so that no process waits for ever: PRETRAX_INIT_TIMEOUT
(300) for every process to join, PRETRAX_HEARTBEAT_TIMEOUT (100) before a
process that stopped answering (killed, host lost) makes the others exit with
an error, PRETRAX_SHUTDOWN_TIMEOUT (300) for the final barrier at exit.

Must run before anything asks JAX for its devices.
"""

from __future__ import annotations

import os
import socket
import time

import jax

from pretrax.errors import ConfigError, PretraxError

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
        timeouts = _timeouts(environ)
        if process_id != 0:  # process 0 starts the coordinator; the others must reach it
            wait_for_coordinator(coordinator, timeouts["initialization_timeout"])
        # only the CPU backend reads this; GPUs and TPUs keep their own collectives
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id, **timeouts)
    elif _is_multi_host_tpu(environ) or _on_tpu_vm() or _is_multi_task_slurm(environ):
        jax.distributed.initialize(**_timeouts(environ))
    else:
        return False
    _started = True
    return True


def _timeouts(environ) -> dict[str, int]:
    """jax.distributed's timeouts from PRETRAX_*_TIMEOUT (seconds)."""
    out = {}
    for arg, var, default in (("initialization_timeout", "PRETRAX_INIT_TIMEOUT", 300),
                              ("heartbeat_timeout_seconds", "PRETRAX_HEARTBEAT_TIMEOUT", 100),
                              ("shutdown_timeout_seconds", "PRETRAX_SHUTDOWN_TIMEOUT", 300)):
        try:
            out[arg] = int(environ.get(var, default))
        except ValueError:
            out[arg] = 0
        if out[arg] < 1:
            raise ConfigError(f"{var}={environ.get(var)!r} must be a positive number of seconds")
    return out


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Return once host:port accepts connections; raise a one-line error after `timeout` seconds.

    jax.distributed would abort the process with a stack trace instead; the
    coordinator may also start a little after this process, hence the retries.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"PRETRAX_COORDINATOR={address!r} must be host:port")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout)):
                return
        except socket.gaierror:
            raise ConfigError(f"PRETRAX_COORDINATOR={address!r}: cannot resolve host {host!r}") from None
        except OSError:
            if time.monotonic() >= deadline:
                raise PretraxError(
                    f"could not reach the coordinator {address} within {timeout:g} s (PRETRAX_INIT_TIMEOUT): "
                    "is process 0 running, and is PRETRAX_COORDINATOR its address?"
                ) from None
            time.sleep(0.5)


def _is_multi_host_tpu(environ) -> bool:
    return "," in environ.get("TPU_WORKER_HOSTNAMES", "")


def _on_tpu_vm() -> bool:
    """TPU chips on this host's PCI bus (jax's own check): a TPU VM, where jax.distributed finds its
    workers through the metadata server (TPU_WORKER_HOSTNAMES is set on GKE only); one host is fine too."""
    try:
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # a jax without this helper: rely on the variables
        return False


def _is_multi_task_slurm(environ) -> bool:
    return "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1
