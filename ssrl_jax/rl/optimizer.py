"""The optimizer: AdamW after global-norm clipping, its learning-rate schedule, and the
shardings of its state (Adam's moments laid out like the parameters they follow)."""

from __future__ import annotations

from typing import Any

import jax
import optax

LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(learning_rate: float, warmup_steps: int, *,
                           schedule: str = "constant", total_steps: int | None = None,
                           final_lr_ratio: float = 0.1) -> optax.Schedule:
    """step -> rate: a linear warm-up from 0 to `learning_rate` over `warmup_steps`, then

    - "constant": the rate held (the papers' setting);
    - "cosine": a cosine decay to `final_lr_ratio` × `learning_rate` at `total_steps`.
    """
    warmup_steps = max(warmup_steps, 1)
    if schedule == "constant":
        return optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps)
    if schedule == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(f"a cosine schedule needs total_steps > warmup_steps "
                             f"({warmup_steps}), got {total_steps}")
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps,
                                                  end_value=final_lr_ratio * learning_rate)
    raise ValueError(f"schedule={schedule!r}: must be one of {LR_SCHEDULES}")


def make_optimizer(learning_rate: float, warmup_steps: int, *, max_grad_norm: float = 1.0,
                   weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
                   schedule: str = "constant", total_steps: int | None = None,
                   final_lr_ratio: float = 0.1) -> optax.GradientTransformation:
    """AdamW after global-norm clipping, its rate from `learning_rate_schedule`."""
    rate = learning_rate_schedule(learning_rate, warmup_steps, schedule=schedule,
                                  total_steps=total_steps, final_lr_ratio=final_lr_ratio)
    return optax.chain(optax.clip_by_global_norm(max_grad_norm),
                       optax.adamw(rate, b1=b1, b2=b2, weight_decay=weight_decay))


def optimizer_from_config(optim: Any, total_steps: int) -> optax.GradientTransformation:
    """`make_optimizer` of a run config's `optim` section, for a run of `total_steps`."""
    return make_optimizer(optim.learning_rate, round(optim.warmup_ratio * total_steps),
                          max_grad_norm=optim.max_grad_norm, weight_decay=optim.weight_decay,
                          b1=optim.b1, b2=optim.b2, schedule=optim.schedule,
                          total_steps=total_steps, final_lr_ratio=optim.final_lr_ratio)


def optimizer_state_shardings(optimizer: optax.GradientTransformation, params: Any) -> Any:
    """Shardings of `optimizer.init(params)`: parameter-shaped leaves (Adam's moments)
    follow their parameter's sharding, everything else (counts) is replicated.

    `params` may be arrays or `ShapeDtypeStruct`s with shardings. Without this,
    `jit(optimizer.init)` leaves the moments' layout to XLA, which replicates them.
    """
    shardings = jax.tree.map(lambda x: x.sharding, params)
    mesh = jax.tree.leaves(shardings)[0].mesh
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding,
                                 jax.eval_shape(optimizer.init, params), shardings,
                                 transform_non_params=lambda _: replicated)
