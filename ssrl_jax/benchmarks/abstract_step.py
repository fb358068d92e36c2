"""The train step's inputs as abstract arrays on a config's mesh: shapes and shardings only.

What the memory plan and the roofline both compile from: the mesh (fake CPU devices, or a
TPU topology's devices from libtpu with no chip), the sharding rules, and a `TrainState`
and batch of `jax.ShapeDtypeStruct`s laid out exactly as the trainer lays out the real
ones. Nothing is allocated and no weights are read.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class AbstractStep:
    """A config's train step inputs. P prompts of L tokens (the prompt bucket)."""

    mesh: Any
    rules: Any
    model_config: Any
    graphdef: Any
    abstract_state: Any    # nnx.State of the model (variables with logical-axes metadata)
    params: Any            # master weights (param_dtype), training layout
    opt_state: Any
    compute_params: Any    # the reference: params in the compute dtype, training layout
    state: Any             # TrainState
    batch: dict
    key: Any
    optimizer: Any
    step_config: Any       # rl.step.StepConfig
    token_bytes: list
    prompt_len: int

    def sharded(self, shape, dtype, axes) -> Any:
        """An abstract array laid out by the logical `axes`, as the step constrains it."""
        import jax

        return jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=self.rules.sharding(axes, shape, self.mesh))


def build_mesh(config, devices: int | None = None, topology: str | None = None):
    """The config's mesh on a TPU topology's devices (libtpu, no chip) or, without a
    topology, on as many fake CPU devices as the mesh has (set before JAX starts)."""
    import jax

    from ssrl_jax.benchmarks import memory
    from ssrl_jax.sharding import make_mesh

    if topology:
        device_list = memory.topology_devices(topology, config.mesh_layout.num_slices)
    else:
        count = memory.mesh_devices(config, devices)
        jax.config.update("jax_num_cpu_devices", count)
        if len(jax.devices()) != count:
            raise RuntimeError(f"the plan needs {count} CPU devices but JAX already has "
                               f"{len(jax.devices())}; run it in a fresh process")
        device_list = None
    return make_mesh(dict(config.mesh), device_list, num_slices=config.mesh_layout.num_slices,
                     allow_split_physical_axes=config.mesh_layout.allow_split_physical_axes)


def abstract_step(config, mesh, model_config) -> AbstractStep:
    """The abstract train state and batch of `config` for `model_config` on `mesh`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ssrl_jax import train_config as tc
    from ssrl_jax.models.init import abstract_model, state_shardings
    from ssrl_jax.rl.optimizer import make_optimizer, optimizer_state_shardings
    from ssrl_jax.rl.step import StepConfig
    from ssrl_jax.rl.train_state import TrainState, compute_copy
    from ssrl_jax.sampler.buckets import bucket_length
    from ssrl_jax.sharding import ShardingRules

    tc.validate(config)
    rules = ShardingRules()
    graphdef, abstract_state = nnx.split(abstract_model(model_config, rules))
    shardings = state_shardings(abstract_state, mesh, rules)
    params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                          abstract_state, shardings)
    optimizer = make_optimizer(config.optim.learning_rate, 1)
    opt_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             jax.eval_shape(optimizer.init, params),
                             optimizer_state_shardings(optimizer, params))
    # The reference (and the rollout's copy inside the step) in the compute dtype.
    compute_params = jax.eval_shape(lambda p: compute_copy(p, model_config.dtype), params)
    compute_params = jax.tree.map(lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                    sharding=p.sharding),
                                  compute_params, params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                       params=params, opt_state=opt_state, ref_params=compute_params)

    prompts = config.batch_size
    length = min(bucket_length(config.data.max_prompt_tokens), config.data.max_prompt_tokens)

    def batch_leaf(shape, dtype):
        axes = ("batch",) + (None,) * (len(shape) - 1)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rules.sharding(axes, shape, mesh))

    batch = {"prompt_ids": batch_leaf((prompts, length), jnp.int32),
             "prompt_valid": batch_leaf((prompts, length), jnp.bool_),
             "golds": batch_leaf((prompts, config.data.max_golds, config.data.max_gold_bytes),
                                 jnp.uint8)}
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    return AbstractStep(
        mesh=mesh, rules=rules, model_config=model_config, graphdef=graphdef,
        abstract_state=abstract_state, params=params, opt_state=opt_state,
        compute_params=compute_params, state=state, batch=batch, key=key, optimizer=optimizer,
        step_config=StepConfig.from_config(config, eos_ids=model_config.eos_token_ids or (0,),
                                           pad_id=0),
        token_bytes=[bytes([i % 256]) for i in range(model_config.vocab_size)],
        prompt_len=length)
