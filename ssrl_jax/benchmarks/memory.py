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

from ssrl_jax.benchmarks import hlo
from ssrl_jax.cli_errors import UserError
from ssrl_jax.sampler.decode import DECODE_LOOP_SCOPE

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
    from ssrl_jax.model_source import runtime_fields
    from ssrl_jax.models import ModelConfig, preset
    from ssrl_jax.models.hf import read_hf_config

    m = config.model
    fields = runtime_fields(config)
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
    weight_layout: str = "decode"
    backend: str = "cpu"
    topology: str | None = None
    hbm_bytes_per_chip: int | None = None
    compiler_peak: int = 0
    decode_loop_all_gathers: int = 0
    decode_loop_weight_all_gathers: int = 0
    decode_loop_weight_gather_bytes: int = 0
    decode_loop_paged_attention_kernels: int = 0   # per pass of the loop body

    def to_json(self) -> str:
        import json

        fields = dataclasses.asdict(self)
        return json.dumps({**fields, "peak": self.peak, "peak_bytes_per_chip": self.peak,
                           "peak_share_of_hbm": (self.peak / self.hbm_bytes_per_chip
                                                 if self.hbm_bytes_per_chip else None)})

    @property
    def peak(self) -> int:
        # The state is donated: outputs reuse argument buffers. The TPU compiler's own peak
        # (live ranges of every buffer) is used where it is larger.
        return max(self.arguments + self.temporaries, self.compiler_peak)

    def report(self) -> str:
        g = lambda b: f"{b / GIB:8.2f} GiB" if b >= GIB else f"{b / 2**20:8.1f} MiB"  # noqa: E731
        target = (f"TPU topology {self.topology} by libtpu (no chip)" if self.topology
                  else f"{prod(self.mesh.values())} fake CPU devices (a +-2x ballpark of a TPU)")
        lines = [
            f"memory plan: {self.config_path}: {self.model}, {self.num_params / 1e9:.2f}B params, "
            f"mesh {self.mesh}, {self.rows} responses x {self.slots} slots per step",
            f"  (compiled ahead of time for {target} in {self.compile_s:.0f} s; bytes per "
            "device)",
            f"  precision           : {self.param_dtype} master weights and optimizer state, "
            f"{self.dtype} compute",
            f"  policy parameters   : {g(self.params)}  ({self.param_dtype})",
            f"  reference parameters: {g(self.reference)}  ({self.dtype})",
            f"  rollout weight copy : {g(self.rollout_weights)}  ({self.dtype}, "
            f"{self.weight_layout} layout, inside temporaries)",
            f"  optimizer state     : {g(self.optimizer)}",
            f"  KV cache (rollout)  : {g(self.kv_cache)}  (inside temporaries)",
            f"  compiled arguments  : {g(self.arguments)}",
            f"  compiled temporaries: {g(self.temporaries)}",
            f"  peak                : {g(self.peak)}",
            f"  decode loop         : {self.decode_loop_weight_all_gathers} weight all-gathers "
            f"({g(self.decode_loop_weight_gather_bytes)} per pass of the loop body), "
            f"{self.decode_loop_all_gathers} all-gathers in all, "
            f"{self.decode_loop_paged_attention_kernels} paged attention kernels",
        ]
        if self.hbm_bytes_per_chip:
            share = self.peak / self.hbm_bytes_per_chip
            lines.append(f"  {self.topology}: {100 * share:.1f}% of {g(self.hbm_bytes_per_chip)}"
                         f" HBM per chip")
            return "\n".join(lines)
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


def topology_devices(name: str, num_slices: int = 1) -> list:
    """The devices of `num_slices` slices of a TPU topology (e.g. "v5p:4x4x4"), compiled for
    by libtpu without a chip."""
    if importlib.util.find_spec("libtpu") is None:
        raise UserError("compiling for a TPU topology needs libtpu", f"--topology {name}",
                        "install it with pip install -e '.[tpu]' (no TPU is needed)")
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name,
                                                 num_slices=num_slices).devices)
    except Exception as error:  # libtpu's own message says what it could not parse
        if "lockfile" in str(error):
            raise UserError(f"another process holds libtpu ({error})", f"--topology {name}",
                            "wait for it, or set ALLOW_MULTIPLE_LIBTPU_LOAD=1 (compiling "
                            "uses no chip)") from None
        raise UserError(f"libtpu does not know the topology {name!r}: {error}",
                        f"--topology {name}", "e.g. v5p:2x4x4 (v5p-64), v5p:4x4x4 (v5p-128), "
                        "v6e:8x8 (v6e-64)") from None


def run(config_path: str, overrides: list[str] = (), devices: int | None = None,
        topology: str | None = None, hlo_out: str | None = None) -> MemoryPlan:
    import time

    config = load_config(config_path, overrides)
    import jax

    from ssrl_jax.benchmarks.abstract_step import abstract_step, build_mesh
    from ssrl_jax.models import KVCache
    from ssrl_jax.models.init import state_shardings
    from ssrl_jax.rl.rewards import ssrl_reward
    from ssrl_jax.rl.step import make_train_step

    mesh = build_mesh(config, devices, topology)
    model_config = model_config_of(config)
    inputs = abstract_step(config, mesh, model_config)
    rules, params, state = inputs.rules, inputs.params, inputs.state
    step = make_train_step(
        inputs.graphdef, inputs.step_config, token_bytes=inputs.token_bytes,
        reward_fn=ssrl_reward, optimizer=inputs.optimizer, rules=rules,
        state_sharding=jax.tree.map(lambda x: x.sharding, state))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lower(state, inputs.batch, inputs.key).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    text = compiled.as_text()
    if hlo_out:
        with open(hlo_out, "w") as f:
            f.write(text)
    comps = hlo.computations(text)
    decode_loop = hlo.loop_computations(comps, DECODE_LOOP_SCOPE)
    in_loop = hlo.gathers_in(comps, decode_loop)
    shapes = hlo.weight_shapes([leaf.shape for leaf in jax.tree.leaves(params)],
                               [size for size in mesh.shape.values() if size > 1])
    weight_gathers = [c for c in in_loop if hlo.is_weight(c, shapes)]

    # The rollout's weight copy, in the compute dtype and the layout it decodes with.
    layout = rules.decode_layout() if config.rollout.weight_layout == "decode" else rules
    rollout_weights = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), inputs.compute_params,
        state_shardings(inputs.abstract_state, mesh, layout))

    prompts, length = config.batch_size, inputs.prompt_len
    rows = prompts * config.rollout.group_size
    slots = length + config.rollout.max_new_tokens
    cache = jax.tree.map(
        lambda axes, s: inputs.sharded(s.shape, s.dtype, axes),
        KVCache.logical_axes(model_config.kv_quantized),
        jax.eval_shape(lambda: KVCache.create(model_config, rows, slots)),
        is_leaf=lambda x: isinstance(x, tuple))
    kv = _per_device_bytes((cache.k, cache.v))
    return MemoryPlan(
        config_path=config_path, model=f"{model_config.architecture}", num_params=
        model_config.num_params(), mesh=dict(mesh.shape), rows=rows, slots=slots,
        param_dtype=model_config.param_dtype, dtype=model_config.dtype,
        params=_per_device_bytes(params), reference=_per_device_bytes(inputs.compute_params),
        rollout_weights=_per_device_bytes(rollout_weights),
        optimizer=_per_device_bytes(inputs.opt_state), kv_cache=kv,
        arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
        temporaries=analysis.temp_size_in_bytes, compile_s=compile_s,
        weight_layout=config.rollout.weight_layout,
        backend=mesh.devices.flat[0].platform, topology=topology,
        hbm_bytes_per_chip=HBM_GIB[topology.split(":")[0]] * GIB if topology else None,
        compiler_peak=getattr(analysis, "peak_memory_in_bytes", 0) or 0,
        decode_loop_all_gathers=len(in_loop),
        decode_loop_weight_all_gathers=len(weight_gathers),
        decode_loop_weight_gather_bytes=sum(c.bytes for c in weight_gathers),
        decode_loop_paged_attention_kernels=hlo.kernel_calls(comps, decode_loop,
                                                              "paged_attention"))
