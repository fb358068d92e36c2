"""What a train step carries (`TrainState`) and the weight copies made from it: the frozen
reference and the rollout's compute-dtype copy in the decode layout."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssrl_jax.models import Transformer
from ssrl_jax.models.init import logical_axes_of
from ssrl_jax.rl.optimizer import optimizer_state_shardings
from ssrl_jax.sharding import ShardingRules


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """What a step carries. `params` are the master weights (`param_dtype`, fp32 in every
    training config) and `opt_state` is shaped and typed like them; `ref_params`, the
    frozen KL reference, is stored in the compute dtype (`dtype`, bf16 on TPU): the model
    casts every weight to that dtype at use, so the reference computes exactly what an
    fp32 copy would, for half the memory."""

    step: jax.Array
    params: nnx.State
    opt_state: Any
    ref_params: nnx.State


def compute_copy(params: Any, dtype: Any) -> Any:
    """A copy of `params` with every floating-point leaf cast to `dtype` (new buffers, same
    shardings). The rollout decodes with this copy of the master weights, made inside the
    step, and the frozen reference is kept as one."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda p: jnp.copy(p).astype(dtype)
                        if jnp.issubdtype(p.dtype, jnp.floating) else jnp.copy(p), params)


def decode_copy(params: nnx.State, dtype: Any, rules: ShardingRules | None) -> nnx.State:
    """`compute_copy` in the decode layout of `rules` (`ShardingRules.decode_layout`: each
    weight replicated over data × fsdp, still split over tensor) when a mesh is set; with
    `rules` None, in the layout of `params`."""
    copy = compute_copy(params, dtype)
    mesh = jax.sharding.get_abstract_mesh()
    if rules is None or mesh.empty:
        return copy
    layout = rules.decode_layout()
    return jax.tree.map(
        lambda v: v.replace(jax.lax.with_sharding_constraint(
            v.get_value(), layout.spec(logical_axes_of(v), v.shape, mesh))),
        copy, is_leaf=lambda x: isinstance(x, nnx.Variable))


def init_train_state(model: Transformer, optimizer: optax.GradientTransformation) -> TrainState:
    """Policy parameters, a frozen copy in the compute dtype as the reference, and optimizer
    state (sharded alike)."""
    params = nnx.state(model, nnx.Param)
    ref_params = compute_copy(params, model.config.dtype)
    opt_state = jax.jit(optimizer.init,
                        out_shardings=optimizer_state_shardings(optimizer, params))(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                       ref_params=ref_params)
    # Scalars (step, Adam's count) go on the parameters' mesh, replicated, so that the
    # state a step returns has the same shardings as the one it was given (no recompile).
    mesh = jax.tree.leaves(params)[0].sharding.mesh
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(
        lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding)
        else jax.device_put(x, replicated), state)


def next_train_state(state: TrainState, params: nnx.State, opt_state: Any) -> TrainState:
    """The state after one step: new parameters and optimizer state, the same reference."""
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      ref_params=state.ref_params)
