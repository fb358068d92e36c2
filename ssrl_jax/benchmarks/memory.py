"""Memory plan of a training config: per-device bytes of the compiled train step.

The train step is compiled ahead of time for the config's mesh on fake CPU devices
(as many as the mesh has), from abstract shapes only: nothing is allocated and no
weights are needed (the model comes from `model.path`'s `config.json` when that is
a local directory, else from the preset named like the directory, e.g.
`.../Llama-3.1-8B-Instruct`). The compiled program's memory analysis gives the
argument, output and temporary bytes per device; parameters (master weights in
`param_dtype`), the reference and the rollout's weight copy (both in the compute
`dtype`), optimizer state and the KV cache are also counted from their shapes and
shardings.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from ssrl_jax.cli_errors import UserError

GIB = 1024 ** 3
HBM_GIB = {"v5p": 95, "v4": 32, "v5e": 16, "v6e": 32}


def load_config(path: str, overrides: list[str] = ()):
    """`get_config()` of a config file, with `field.sub=value` overrides applied."""
    spec = importlib.util.spec_from_file_location("memory_plan_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        field, sep, text = item.partition("=")
        if not sep or not field:
            raise UserError("expected FIELD=VALUE", f"--set {item}", "e.g. --set mesh.fsdp=8")
        section, _, name = field.rpartition(".")
        try:
            target = config
            for part in filter(None, section.split(".")):
                target = target[part]
            current = target[name]
        except (KeyError, AttributeError):
            raise UserError(f"unknown config field {field!r}", f"--set {item}",
                            f"use a field of {path}") from None
        try:
            value = ((text.lower() in ("1", "true")) if isinstance(current, bool)
                     else type(current)(text))
        except (TypeError, ValueError):
            raise UserError(f"{text!r} is not a {type(current).__name__}", f"--set {item}",
                            f"give a value like {current!r}") from None
        target[name] = value
    return config


def mesh_devices(config, devices: int | None) -> int:
    sizes = [config.mesh[a] for a in ("data", "fsdp", "tensor")]
    if -1 in sizes:
        if devices is None:
            raise UserError(f"config.mesh={dict(config.mesh)} has a -1 axis", "--devices",
                            "pass --devices N")
        return devices
    total = 1
    for size in sizes:
        total *= size
    return total


def model_config_of(config):
    from ssrl_jax.models import ModelConfig, preset
    from ssrl_jax.models.hf import read_hf_config

    m = config.model
    fields = dict(param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat)
    if m.path and os.path.isfile(os.path.join(m.path, "config.json")):
        return ModelConfig.from_hf_config(read_hf_config(m.path), **fields)
    if m.path:
        return preset(os.path.basename(m.path.rstrip("/"))).replace(**fields)
    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(quickstart_tokenizer_path()))
    return ModelConfig(**m.random.to_dict(), vocab_size=vocab, eos_token_id=0, **fields)


def _per_device_bytes(tree: Any) -> int:
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * leaf.dtype.itemsize
    return total


@dataclasses.dataclass
class MemoryPlan:
    config_path: str
    model: str
    num_params: int
    mesh: dict[str, int]
    rows: int
    slots: int
    param_dtype: str
    dtype: str
    params: int
    reference: int
    rollout_weights: int
    optimizer: int
    kv_cache: int
    arguments: int
    outputs: int
    temporaries: int
    compile_s: float

    @property
    def peak(self) -> int:
        # The state is donated: outputs reuse argument buffers.
        return self.arguments + self.temporaries

    def report(self) -> str:
        g = lambda b: f"{b / GIB:8.2f} GiB" if b >= GIB else f"{b / 2**20:8.1f} MiB"  # noqa: E731
        lines = [
            f"memory plan: {self.config_path}: {self.model}, {self.num_params / 1e9:.2f}B params, "
            f"mesh {self.mesh}, {self.rows} responses x {self.slots} slots per step",
            f"  (compiled ahead of time for {prod(self.mesh.values())} devices in "
            f"{self.compile_s:.0f} s; bytes per device)",
            f"  precision           : {self.param_dtype} master weights and optimizer state, "
            f"{self.dtype} compute",
            f"  policy parameters   : {g(self.params)}  ({self.param_dtype})",
            f"  reference parameters: {g(self.reference)}  ({self.dtype})",
            f"  rollout weight copy : {g(self.rollout_weights)}  ({self.dtype}, inside "
            "temporaries)",
            f"  optimizer state     : {g(self.optimizer)}",
            f"  KV cache (rollout)  : {g(self.kv_cache)}  (inside temporaries)",
            f"  compiled arguments  : {g(self.arguments)}",
            f"  compiled temporaries: {g(self.temporaries)}",
            f"  peak (args + temps) : {g(self.peak)}",
        ]
        for chip, hbm in HBM_GIB.items():
            headroom = hbm - self.peak / GIB
            verdict = "fits" if headroom > 0 else "does NOT fit"
            lines.append(f"  {chip:4s} ({hbm:3d} GiB HBM/chip): {verdict}, headroom "
                         f"{headroom:7.2f} GiB")
        return "\n".join(lines)


def prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def run(config_path: str, overrides: list[str] = (), devices: int | None = None) -> MemoryPlan:
    import time

    config = load_config(config_path, overrides)
    count = mesh_devices(config, devices)
    import jax

    jax.config.update("jax_num_cpu_devices", count)
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from ssrl_jax import train_config as tc
    from ssrl_jax.models.init import abstract_model, state_shardings
    from ssrl_jax.rl.rewards import ssrl_reward
    from ssrl_jax.rl.step import (TrainState, compute_copy, make_optimizer, make_train_step,
                                  optimizer_state_shardings)
    from ssrl_jax.sampler.buckets import bucket_length
    from ssrl_jax.sharding import ShardingRules, make_mesh
    from ssrl_jax.trainer import step_config

    tc.validate(config)
    if len(jax.devices()) != count:
        raise RuntimeError(f"the memory plan needs {count} CPU devices but JAX already has "
                           f"{len(jax.devices())}; run it in a fresh process")
    rules = ShardingRules()
    mesh = make_mesh(dict(config.mesh))
    model_config = model_config_of(config)
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

    prompts, length = config.batch_size, bucket_length(config.data.max_prompt_tokens)
    length = min(length, config.data.max_prompt_tokens)

    def batch_leaf(shape, dtype):
        axes = ("batch",) + (None,) * (len(shape) - 1)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rules.sharding(axes, shape, mesh))

    batch = {"prompt_ids": batch_leaf((prompts, length), jnp.int32),
             "prompt_valid": batch_leaf((prompts, length), jnp.bool_),
             "golds": batch_leaf((prompts, config.data.max_golds, config.data.max_gold_bytes),
                                 jnp.uint8)}
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    token_bytes = [bytes([i % 256]) for i in range(model_config.vocab_size)]
    step = make_train_step(
        graphdef, step_config(config, model_config.eos_token_ids or (0,), 0),
        token_bytes=token_bytes, reward_fn=ssrl_reward, optimizer=optimizer, rules=rules,
        state_sharding=jax.tree.map(lambda x: x.sharding, state))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()

    rows = prompts * config.rollout.group_size
    slots = length + config.rollout.max_new_tokens
    kv_shape = (model_config.num_layers, rows, slots, model_config.num_kv_heads,
                model_config.head_dim)
    kv_spec = rules.sharding(("layers", "batch", None, "act_kv_heads", None), kv_shape, mesh)
    kv = 2 * int(np.prod(kv_spec.shard_shape(kv_shape))) * jnp.dtype(model_config.dtype).itemsize
    return MemoryPlan(
        config_path=config_path, model=f"{model_config.architecture}", num_params=
        model_config.num_params(), mesh=dict(mesh.shape), rows=rows, slots=slots,
        param_dtype=model_config.param_dtype, dtype=model_config.dtype,
        params=_per_device_bytes(params), reference=_per_device_bytes(compute_params),
        rollout_weights=_per_device_bytes(compute_params),
        optimizer=_per_device_bytes(opt_state), kv_cache=kv,
        arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
        temporaries=analysis.temp_size_in_bytes, compile_s=compile_s)
