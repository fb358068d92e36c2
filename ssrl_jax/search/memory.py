"""The memory plan of the train step, checked before the first step (docs/search.md).

A real-search rollout holds `prompt bucket + max_new_tokens + max_turns × injection bucket`
slots per row, and the update runs the model over all of them. Attention memory grows with
the square of that width, so a config that trains comfortably in `self` mode can need ten
times the memory in `real` mode (configs/tiny.py: 392 → 1,416 slots, 25 GB in one
micro-batch). The plan takes the compiled step's own buffer sizes from XLA (the program the
run then runs) and the rollout's decode state from `jax.eval_shape`, compares them with the
memory free on the host or device, and refuses with the numbers and the field to change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

__all__ = ["MemoryPlan", "MemoryPlanError", "available_memory", "check_plan", "plan_of_step"]

GB = 1e9


class MemoryPlanError(ValueError):
    """The train step cannot fit: what it needs, what is free, the field to change."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes the step needs beyond what is already held (parameters, optimizer state).

    learn_temp / learn_new_outputs: per device, XLA's temporaries of the compiled step beyond
    the rollout's decode state, and its outputs not aliased to donated inputs; rollout_state:
    the decode state (KV cache, tokens, log-probs) per device; devices_per_memory:
    how many devices share the memory compared against (CPU devices all share the host's RAM).
    """

    rows: int
    slots: int
    micro_batches: int
    rows_per_micro_batch: int
    learn_temp: int
    learn_new_outputs: int
    rollout_state: int
    devices_per_memory: int = 1

    @property
    def needed(self) -> int:
        return self.with_micro_batches(self.micro_batches)

    def with_micro_batches(self, micro_batches: int) -> int:
        """`needed` with `micro_batches` instead: the temporaries scale with the micro-batch
        (measured on configs/tiny.py: 25.2 GB at 1, 2.9 GB at 8, 1.45 GB at 16)."""
        per_device = (round(self.learn_temp * self.micro_batches / micro_batches)
                      + self.learn_new_outputs + self.rollout_state)
        return per_device * self.devices_per_memory


def _cgroup_free() -> int | None:
    """Bytes left under a cgroup v2 memory limit, None without one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - current, 0)


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
            else:
                return None
    except OSError:
        return None
    cgroup = _cgroup_free()
    return free if cgroup is None else min(free, cgroup)


def available_memory(devices: Sequence[Any]) -> tuple[int | None, str]:
    """(bytes free on the tightest of `devices`, what was measured). Accelerators report
    `bytes_limit - bytes_in_use`; CPU devices share the host's MemAvailable (and a cgroup
    limit, when one is set). None when neither can be read."""
    free = []
    for device in devices:
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "bytes_limit" in stats:
            free.append((stats["bytes_limit"] - stats.get("bytes_in_use", 0), str(device)))
    if free:
        amount, name = min(free)
        return amount, f"free memory of {name}"
    return _host_available(), "available host RAM (MemAvailable)"


def plan_of_step(stats: Any, decode_state: Any, *, micro_batches: int, mini_batches: int,
                 mesh: Any) -> MemoryPlan:
    """The plan of a compiled step from XLA's `memory_analysis()` (`stats`) and the abstract
    decode state of its rollout ([rows, slots] tokens)."""
    rows, slots = decode_state.tokens.shape
    rollout = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(decode_state))
    rollout //= mesh.size
    return MemoryPlan(
        rows=rows, slots=slots, micro_batches=micro_batches,
        rows_per_micro_batch=rows // mini_batches // micro_batches,
        learn_temp=max(stats.temp_size_in_bytes - rollout, 0),
        learn_new_outputs=max(stats.output_size_in_bytes - stats.alias_size_in_bytes, 0),
        rollout_state=rollout,
        devices_per_memory=sum(d.platform == "cpu" for d in mesh.devices.flat) or 1)


def check_plan(plan: MemoryPlan, *, available: int | None, where: str,
               rows_per_mini_batch: int) -> None:
    """Raises MemoryPlanError naming grpo.num_micro_batches (and a value that fits) when `plan`
    needs more than `available` bytes; nothing when it fits or `available` is unknown."""
    if available is None or plan.needed <= available:
        return
    fits = [m for m in range(plan.micro_batches + 1, rows_per_mini_batch + 1)
            if rows_per_mini_batch % m == 0 and plan.with_micro_batches(m) <= available]
    if fits:
        advice = (f"set config.grpo.num_micro_batches={fits[0]} (about "
                  f"{plan.with_micro_batches(fits[0]) / GB:.1f} GB)")
    else:
        advice = (f"even config.grpo.num_micro_batches={rows_per_mini_batch} needs about "
                  f"{plan.with_micro_batches(rows_per_mini_batch) / GB:.1f} GB: shorten the "
                  "sequence (rollout.max_new_tokens, search.max_info_tokens, search.max_turns) "
                  "or use more devices")
    shared = (f" for its {plan.devices_per_memory} devices"
              if plan.devices_per_memory > 1 else "")
    raise MemoryPlanError(
        f"config.grpo.num_micro_batches={plan.micro_batches}: the step needs about "
        f"{plan.needed / GB:.1f} GB{shared} (per device: {plan.learn_temp / GB:.1f} GB of learn "
        f"temporaries for micro-batches of {plan.rows_per_micro_batch} of {plan.rows} responses × "
        f"{plan.slots} slots, {plan.rollout_state / GB:.2f} GB of rollout state), but the "
        f"{where} is {available / GB:.1f} GB; {advice}")
