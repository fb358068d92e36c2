"""Bringing up one JAX cluster over all the processes of a run.

Two ways in, decided by `config.distributed` (`auto` / `on` / `off`):

- **Explicit contract** (any cluster, and the loopback tests): when
  `JAX_COORDINATOR_ADDRESS` is set, every process calls
  `jax.distributed.initialize(JAX_COORDINATOR_ADDRESS, num_processes=JAX_NUM_PROCESSES,
  process_id=JAX_PROCESS_ID)`. CPU processes then talk through JAX's gloo collectives.
- **TPU VMs**: when this machine has TPU chips, `jax.distributed.initialize()` is called
  with no arguments and JAX finds the other hosts itself (GCE metadata server on TPU VMs,
  the GKE / JobSet variables on Kubernetes). It is called on one host too: Orbax's
  barriers and the preemption sync point need the distributed client on any slice.

Must run before anything touches a JAX device.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping

import jax

from ssrl_jax.cli_errors import UserError

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
DISTRIBUTED_MODES = ("auto", "on", "off")  # config.distributed, see `initialize`


class DistributedSetupError(UserError, ValueError):
    """The cluster environment variables are missing or malformed."""


def tpu_chips_visible() -> bool:
    """Whether this machine exposes TPU chips (the device files libtpu opens)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def explicit_cluster(env: Mapping[str, str] = os.environ) -> dict | None:
    """The `jax.distributed.initialize` arguments of the explicit contract, or None.

    Raises DistributedSetupError naming the variable when the contract is half set.
    """
    address = env.get(COORDINATOR_ENV)
    if not address:
        return None
    values = {}
    for name in (NUM_PROCESSES_ENV, PROCESS_ID_ENV):
        raw = env.get(name)
        try:
            values[name] = int(raw)
        except (TypeError, ValueError):
            raise DistributedSetupError(
                f"{COORDINATOR_ENV}={address!r} is set, so {name} must be an integer; got "
                f"{raw!r}. Set {NUM_PROCESSES_ENV} (the number of processes) and "
                f"{PROCESS_ID_ENV} (0 .. {NUM_PROCESSES_ENV}-1) in every process") from None
    count, index = values[NUM_PROCESSES_ENV], values[PROCESS_ID_ENV]
    if count < 1 or not 0 <= index < count:
        raise DistributedSetupError(f"{PROCESS_ID_ENV}={index} must lie in [0, "
                                    f"{NUM_PROCESSES_ENV}={count})")
    return {"coordinator_address": address, "num_processes": count, "process_id": index}


def initialize(mode: str, env: Mapping[str, str] = os.environ) -> bool:
    """Joins the cluster as `mode` asks; returns whether `jax.distributed` was initialised.

    auto: the explicit contract when `JAX_COORDINATOR_ADDRESS` is set, else on a TPU VM
    JAX's own detection; otherwise one process. on: always (explicit contract, else JAX's
    detection). off: never.
    """
    if mode == "off":
        return False
    explicit = explicit_cluster(env)
    if explicit is None and not (mode == "on" or tpu_chips_visible()):
        return False
    if explicit is not None:  # CPU processes need a collectives backend; TPUs ignore it
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**(explicit or {}))
    return True
