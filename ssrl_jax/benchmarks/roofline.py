"""Roofline of a training config's step, from programs libtpu compiles for a TPU topology.

XLA's cost analysis counts the body of a `while` loop once, whatever its trip count, so
the whole step's analysis says nothing about time: the decode loop, the layer scan, the
micro-batch scan and the log-prob chunk loop all run many times. The plan therefore
compiles, with the config's mesh, shardings and rules, programs in which every loop but
the decode loop runs once, and multiplies:

* depth: the update's programs are compiled for a 0-layer and a 1-layer copy of the model
  (same layer shapes and shardings; the cost is affine in the depth: c0 + L (c1 - c0));
  the rollout's for the 1-layer copy, plus L - 1 times the layer scan alone
  (`Transformer.run_layers`) on the same inputs (a KV cache needs at least one layer);
* windowed einsums are compiled off (`COMPILER_OPTIONS`), and every program is checked to
  hold no `while` loop but the decode loop;
* decode step: the body of the rollout's decode loop (`sampler.decode.decode`) on all N
  rows of the step, with the bf16 weights in the rollout's layout, at two cache sizes (the
  prompt bucket P and S = P + max_new_tokens): cost(w) = a + b w in the slots w a step
  reads. A program holding one decode loop also pays, once, what XLA puts around the loop
  (the cache and some weights copied into the loop's layouts and back), which the real
  rollout pays once per loop, not at every step: the body is priced as a program of two
  loops back to back minus the one-loop program, and what is left of the one-loop
  program at S slots ("around the loop", scaled by depth: the copies are of per-layer
  arrays) is charged once per KV window's loop;
* prefill: the rollout's weight copy and `decode.prefill` of the N prompt rows;
* update (`learn`, single-update configs): the step's `learn` on one micro-batch of
  N / K rows (K = num_micro_batches, log-prob chunk = the response length so that chunk
  loop runs once): the reference forward, the forward and backward, and one optimizer
  update. The optimizer update is compiled alone too; update = K (learn - optimizer) +
  optimizer.

FLOPs are the compiled programs' `cost_analysis()` (per chip), plus the splash attention
kernels' FLOPs, which the analysis cannot see (`hlo.splash_flops`). HBM bytes are read from
the compiled HLO (`hbm_traffic.hbm_bytes`: HBM buffers only; XLA's "bytes accessed" also
counts the on-chip copies of weights and activations, and is kept as `xla_bytes`). ICI
bytes are summed over the collectives of the compiled HLO (`hlo.transfers`). Every row
is assumed to run all max_new_tokens decode steps (the worst case). The score stage
(host callback) is not counted.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, Callable

from ssrl_jax.benchmarks import hbm_traffic, hlo
from ssrl_jax.benchmarks.roofline_model import (CHIPS, Chip, Cost, Seconds, extrapolate,
                                                rollout_seconds, seconds)
from ssrl_jax.cli_errors import UserError
from ssrl_jax.sampler.kv_windows import kv_windows
from ssrl_jax.sampler.kv_windows import slots_read as window_read

# XLA turns a large matmul whose operand is sharded over fsdp into a windowed einsum (a
# collective matmul): a `while` loop over the shards, which the cost analysis would count
# once. Compiled without it, each matmul is counted whole and its collective is a plain
# all-gather or reduce-scatter moving the same bytes.
COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
FORMULA = ("seconds = max(flops / peak_flops, hbm_bytes / hbm_bandwidth) + "
           "ici_bytes / ici_bandwidth, per compiled program, per chip")


def chip_of(topology: str) -> Chip:
    name = topology.split(":")[0]
    if name not in CHIPS:
        raise UserError(f"no published peaks for the chip {name!r}", f"--topology {topology}",
                        f"use one of {sorted(CHIPS)}")
    return CHIPS[name]


def with_layers(model_config, layers: int):
    """`model_config` with `layers` decoder layers. ModelConfig refuses 0 layers (no user
    wants that model); the plan uses one to price what runs outside the layer scan."""
    if layers:
        return model_config.replace(num_layers=layers)
    zero = model_config.replace(num_layers=1)
    object.__setattr__(zero, "num_layers", 0)
    return zero


def program_cost(compiled, num_devices: int, q_per_kv: int, head_dim: int, name: str,
                 loops: int = 0) -> Cost:
    """The per-chip cost of a compiled program that holds exactly `loops` `while` loops
    (whose bodies the cost analysis counts once: the caller multiplies)."""
    text = compiled.as_text()
    found = len(re.findall(r"\swhile\(", text))
    if found != loops:
        raise RuntimeError(f"roofline: the compiled {name} program holds {found} while "
                           f"loops, not {loops}: XLA's cost analysis would count their "
                           "bodies once")
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    comps = hlo.computations(text)
    splash = hlo.splash_flops(comps, q_per_kv, head_dim)
    return Cost(flops=float(analysis.get("flops", 0.0)) + splash,
                hbm_bytes=hbm_traffic.hbm_bytes(text),
                ici_bytes=sum(t.ici_bytes for t in hlo.transfers(comps, num_devices)),
                xla_bytes=float(analysis.get("bytes accessed", 0.0)))


@dataclasses.dataclass
class Programs:
    """The compiled programs' costs at one model depth; P prompt slots, S cache slots."""

    prompt_len: int
    slots: int
    learn: Cost
    optimizer: Cost
    # Rollout programs (compiled for the 1-layer model only): a decode loop's body at P and
    # S slots, the prefill, and the model's layer scan alone (`Transformer.run_layers`) in
    # each of them, which with one layer is the cost of one more layer.
    decode_at_prompt: Cost | None = None
    decode_at_full: Cost | None = None
    decode_around: Cost | None = None   # at S slots: what runs once around a decode loop
    prefill: Cost | None = None
    layer_at_prompt: Cost | None = None
    layer_at_full: Cost | None = None
    prefill_layer: Cost | None = None
    paged_decode: bool = False   # the decode loop reads the cache through the paged kernel


def compile_programs(config, mesh, model_config, rollout: bool) -> Programs:
    """Compiles the plan's programs for `model_config` on `mesh`: the update's, and with
    `rollout` the rollout's too (their KV cache needs at least one layer)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from jax.experimental.layout import Format, Layout

    from ssrl_jax.benchmarks.abstract_step import abstract_step
    from ssrl_jax.models import KVCache, splash
    from ssrl_jax.models.init import state_shardings
    from ssrl_jax.rl.rewards import ssrl_reward
    from ssrl_jax.rl.step import make_step_parts
    from ssrl_jax.rl.train_state import decode_copy
    from ssrl_jax.sampler import decode as decode_lib
    from ssrl_jax.sampler.state import DecodeState
    from ssrl_jax.sampler.stop import build_stop_table

    inputs = abstract_step(config, mesh, model_config)
    sc, rules, graphdef = inputs.step_config, inputs.rules, inputs.graphdef
    prompt_len, n = inputs.prompt_len, sc.group_size
    rows, slots = config.batch_size * n, inputs.prompt_len + sc.max_new_tokens
    devices, q_per_kv = mesh.devices.size, model_config.num_heads // model_config.num_kv_heads
    layout = rules.decode_layout() if sc.weight_layout == "decode" else rules
    decode_params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        inputs.compute_params, state_shardings(inputs.abstract_state, mesh, layout))
    stop = build_stop_table((), inputs.token_bytes)  # the self-search step stops at EOS only

    paged_kernels = []   # the paged attention kernels each decode program holds

    def cost_of(fn, *args, donate: tuple[int, ...] = (), loops: int = 0) -> Cost:
        # The decode state and KV cache are donated, as the decode loop's carry is updated
        # in place: without it the program would copy the whole cache at every step. They
        # take the layout the compiler picks (inside the step they are made, not passed in):
        # with an entry parameter's default layout (slots minor where a head is 1 wide)
        # the cache would be copied into the layout of its per-row scatter and back.
        formats = tuple(jax.tree.map(
            lambda s: Format(Layout.AUTO, s.sharding) if index in donate else s.sharding, arg)
            for index, arg in enumerate(args))
        with jax.set_mesh(mesh):
            compiled = jax.jit(fn, in_shardings=formats, out_shardings=Format(Layout.AUTO),
                               donate_argnums=donate).lower(*args).compile(
                compiler_options=COMPILER_OPTIONS)
        if loops:
            comps = hlo.computations(compiled.as_text())
            paged_kernels.append(hlo.kernel_calls(comps, comps, "paged_attention"))
        return program_cost(compiled, devices, q_per_kv, model_config.head_dim,
                            fn.__name__, loops)

    def decode_state(num_rows: int, cache_len: int) -> DecodeState:
        """An abstract DecodeState of num_rows rows and cache_len slots (a cache of at
        least one layer), laid out as the step constrains it."""
        dtype, slots_shape = jnp.dtype(model_config.dtype), (num_rows, cache_len)
        a = jax.ShapeDtypeStruct
        shapes = DecodeState(
            cache=jax.eval_shape(lambda: KVCache.create(
                model_config.replace(num_layers=max(model_config.num_layers, 1)), num_rows,
                cache_len)),
            tokens=a(slots_shape, jnp.int32), logprobs=a(slots_shape, jnp.float32),
            entropies=a(slots_shape, jnp.float32), sources=a(slots_shape, jnp.int8),
            last_hidden=a((num_rows, model_config.hidden_size), dtype),
            keys=a((num_rows,), jax.random.key(0).dtype), stop_state=a((num_rows,), jnp.int32),
            done=a((num_rows,), jnp.bool_), finish_reason=a((num_rows,), jnp.int8),
            matched_stop=a((num_rows,), jnp.int8), num_steps=a((), jnp.int32),
            decode_start=a((num_rows,), jnp.int32))
        return jax.tree.map(lambda axes, s: inputs.sharded(s.shape, s.dtype, axes),
                            DecodeState.logical_axes(model_config.kv_quantized), shapes,
                            is_leaf=lambda x: isinstance(x, tuple))

    def one_decode_step(params, state):
        return decode_lib.decode(nnx.merge(graphdef, params), state, sampling=sc.sampling,
                                 stop_next=jnp.asarray(np.asarray(stop.next_state)),
                                 stop_completed=jnp.asarray(np.asarray(stop.completed)),
                                 eos_ids=jnp.asarray(np.asarray(sc.eos_ids, np.int32)),
                                 max_new_tokens=jnp.int32(sc.max_new_tokens),
                                 pad_id=sc.pad_id)

    def two_decode_loops(params, state):
        return one_decode_step(params, one_decode_step(params, state))

    def decode_loop(cache_len: int) -> tuple[Cost, Cost]:
        """(one iteration of the decode loop, what runs once around the loop)."""
        state = decode_state(rows, cache_len)
        one_loop = cost_of(one_decode_step, decode_params, state, donate=(1,), loops=1)
        body = cost_of(two_decode_loops, decode_params, state, donate=(1,), loops=2) - one_loop
        return body, one_loop - body

    def prefill(params, batch, key):
        # The first half of the step's rollout (rl/step.py make_step_parts.rollout).
        layout_rules = rules if sc.weight_layout == "decode" else None
        model = nnx.merge(graphdef, decode_copy(params, model_config.dtype, layout_rules))
        ids = jnp.repeat(batch["prompt_ids"], n, axis=0)
        valid = jnp.repeat(batch["prompt_valid"], n, axis=0)
        return decode_lib.prefill(model, ids, valid, jax.random.split(key, ids.shape[0]),
                                  slots)

    micro_rows = rows // sc.num_micro_batches
    unit = dataclasses.replace(sc, num_micro_batches=1, logprob_chunk=sc.max_new_tokens)
    parts = make_step_parts(graphdef, unit, token_bytes=inputs.token_bytes,
                            reward_fn=ssrl_reward, optimizer=inputs.optimizer, rules=rules)

    def learn(state, rollout_state, mask, advantages, key):
        return parts.learn(state, rollout_state, mask, advantages, key, prompt_len)

    def optimizer_update(grads, opt_state, params):
        # The end of the step's `update` (rl/learn.py).
        updates, new_opt_state = inputs.optimizer.update(grads, opt_state, params)
        new_opt_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_opt_state,
                                     opt_state)
        return optax.apply_updates(params, updates), new_opt_state

    grads = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32,
                                                        sharding=p.sharding), inputs.params)

    def layers(params, x, positions, mask, cache):
        # Every token real: each is written at the slot of its position.
        return nnx.merge(graphdef, params).run_layers(x, positions, mask, cache, slots=positions)

    def splash_prefill_layers(params, x, positions, segment_ids, cache):
        # As `Transformer.prefill` with splash attention: the prompt attends over itself.
        return layers(params, x, positions, splash.Segments(segment_ids, new_tokens_only=True),
                      cache)

    def layer_cost(tokens: int, cache_len: int, prefill: bool) -> Cost:
        """The layer scan alone in a decode step (one token per row) or the prefill."""
        hidden = inputs.sharded((rows, tokens, model_config.hidden_size),
                                jnp.dtype(model_config.dtype), ("batch", None, None))
        positions = inputs.sharded((rows, tokens), jnp.int32, ("batch", None))
        cache = decode_state(rows, cache_len).cache
        if prefill and model_config.attention == "splash":
            segment_ids = inputs.sharded((rows, tokens), jnp.int32, ("batch", None))
            return cost_of(splash_prefill_layers, decode_params, hidden, positions,
                           segment_ids, cache, donate=(4,))
        mask = inputs.sharded((rows, tokens, cache_len), jnp.bool_, ("batch", None, None))
        return cost_of(layers, decode_params, hidden, positions, mask, cache, donate=(4,))

    programs = Programs(
        prompt_len=prompt_len, slots=slots,
        learn=cost_of(learn, inputs.state, decode_state(micro_rows, slots),
                      inputs.sharded((micro_rows, slots), jnp.float32, ("batch", None)),
                      inputs.sharded((micro_rows,), jnp.float32, ("batch",)), inputs.key),
        optimizer=cost_of(optimizer_update, grads, inputs.opt_state, inputs.params))
    if not rollout:
        return programs
    full_body, around = decode_loop(slots)
    return dataclasses.replace(
        programs,
        decode_at_prompt=decode_loop(prompt_len)[0],
        decode_at_full=full_body,
        decode_around=around,
        prefill=cost_of(prefill, inputs.params, inputs.batch, inputs.key),
        layer_at_prompt=layer_cost(1, prompt_len, prefill=False),
        layer_at_full=layer_cost(1, slots, prefill=False),
        prefill_layer=layer_cost(prompt_len, slots, prefill=True),
        paged_decode=all(paged_kernels))


@dataclasses.dataclass
class StepCosts:
    """What the compiled programs say about a config's step, per chip (L layers, N rows,
    P prompt slots, S = P + max_new_tokens slots, K micro-batches)."""

    config_path: str
    model: str
    num_params: int
    num_layers: int
    topology: str
    chip: Chip
    mesh: dict[str, int]
    rows: int
    prompt_len: int
    slots: int
    decode_steps: int
    num_micro_batches: int
    decode_fixed: Cost      # a of a decode step's cost(w) = a + b w, w the slots it reads
    decode_per_slot: Cost   # b
    decode_around: Cost     # once per decode loop (layout copies in and out)
    # The decode step reads each row's filled slots through the paged attention kernel
    # (`models/paged.py`): the compiled call takes all S, the kernel copies in only the
    # pages below each row's length.
    paged_decode: bool
    prefill: Cost
    micro_batch: Cost       # one micro-batch of the update, optimizer excluded
    optimizer: Cost
    compile_s: float
    # The rollout's KV windows (`rollout.kv_windows`): decode steps read up to the window edge.
    windows: tuple[int, ...] = ()

    def decode_step(self, slots_read: int) -> Cost:
        return self.decode_fixed + self.decode_per_slot * slots_read


@dataclasses.dataclass
class Part:
    cost: Cost
    seconds: Seconds

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.cost), "seconds": self.seconds.total,
                "compute_seconds": self.seconds.compute, "hbm_seconds": self.seconds.hbm,
                "ici_seconds": self.seconds.ici, "bound": self.seconds.bound}


@dataclasses.dataclass
class RooflinePlan:
    costs: StepCosts
    prefill: Part
    decode: Part
    micro_batch: Part
    optimizer: Part
    update: Part
    slots_read: str         # the read schedule, in words

    @property
    def rollout(self) -> Part:
        return Part(self.prefill.cost + self.decode.cost,
                    self.prefill.seconds + self.decode.seconds)

    @property
    def total_seconds(self) -> float:
        return self.rollout.seconds.total + self.update.seconds.total

    def to_json(self) -> str:
        c = self.costs
        parts = {name: getattr(self, name).to_dict()
                 for name in ("prefill", "decode", "rollout", "micro_batch", "optimizer",
                              "update")}
        fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)
                  if f.name not in ("chip", "decode_fixed", "decode_per_slot", "decode_around",
                                    "prefill", "micro_batch", "optimizer")}
        return json.dumps({
            **fields, "chip": dataclasses.asdict(c.chip), "formula": FORMULA,
            "slots_read": self.slots_read,
            "decode_step_fit": {"a": dataclasses.asdict(c.decode_fixed),
                                "b_per_slot": dataclasses.asdict(c.decode_per_slot)},
            "decode_around_loop": dataclasses.asdict(c.decode_around),
            **parts, "total_seconds": self.total_seconds,
            "rollout_share": self.rollout.seconds.total / self.total_seconds})

    def report(self) -> str:
        def row(name: str, part: Part) -> str:
            c, s = part.cost, part.seconds
            return (f"  {name:24s} {c.flops / 1e12:10.1f} {c.hbm_bytes / 1e9:10.1f} "
                    f"{c.ici_bytes / 1e9:9.2f} {s.total:9.2f}  {s.bound}")

        c, chip = self.costs, self.costs.chip
        a, b = c.decode_fixed, c.decode_per_slot
        return "\n".join([
            f"roofline: {c.config_path}: {c.model}, {c.num_params / 1e9:.2f}B params, "
            f"{c.topology} mesh {c.mesh}, {c.rows} responses x {c.slots} slots",
            f"  {chip.name} peaks per chip: {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, "
            f"{chip.hbm_bandwidth / 1e9:.0f} GB/s HBM, {chip.ici_bandwidth / 1e9:.0f} GB/s ICI",
            f"  {FORMULA}",
            f"  worst case: every row decodes all {c.decode_steps} steps, each reading "
            f"{self.slots_read}; update = {c.num_micro_batches} x micro-batch + optimizer; "
            f"{c.compile_s:.0f} s of compiling",
            f"  decode step per chip: {a.flops / 1e9:.2f} GFLOP + {b.flops / 1e6:.3f} MFLOP "
            f"per slot read, {a.hbm_bytes / 1e9:.3f} GB + {b.hbm_bytes / 1e6:.3f} MB per slot "
            f"HBM (XLA's bytes accessed: {a.xla_bytes / 1e9:.3f} GB + "
            f"{b.xla_bytes / 1e6:.3f} MB), {a.ici_bytes / 1e6:.2f} MB ICI; once around each of its "
            f"{max(len(c.windows), 1)} decode loops: {c.decode_around.hbm_bytes / 1e9:.3f} GB "
            "HBM",
            f"  {'part (per chip)':24s} {'TFLOP':>10s} {'HBM GB':>10s} {'ICI GB':>9s} "
            f"{'seconds':>9s}  bound",
            row("rollout: prefill", self.prefill),
            row(f"rollout: decode x{c.decode_steps}", self.decode),
            row("rollout", self.rollout),
            row("update: one micro-batch", self.micro_batch),
            row("update: optimizer", self.optimizer),
            row(f"update: x{c.num_micro_batches} + optimizer", self.update),
            f"  step: {self.total_seconds:.2f} s (rollout {self.rollout.seconds.total:.2f} s, "
            f"update {self.update.seconds.total:.2f} s)",
        ])


def measure(config_path: str, overrides: list[str] = (), topology: str = "v5p:4x4x4"
            ) -> StepCosts:
    """Compiles the plan's programs for a config on a TPU topology (see the module)."""
    from ssrl_jax.benchmarks import memory
    from ssrl_jax.benchmarks.abstract_step import build_mesh

    config = memory.load_config(config_path, overrides)
    chip = chip_of(topology)
    g = config.grpo
    if g.num_mini_batches != 1 or g.ppo_epochs != 1:
        raise UserError("the roofline prices single-update steps only (an old-policy "
                        "forward and several optimizer updates are not modelled)",
                        "grpo.num_mini_batches / grpo.ppo_epochs", "set both to 1")
    # Worst case, as for the rollout: every row fills all S slots, so the update runs its
    # full-width branch; one bucket compiles just that branch (the cost analysis would
    # otherwise add up the kernels of every branch of the length-bucket switch).
    config.grpo.length_buckets = 1
    mesh = build_mesh(config, topology=topology)
    model_config = memory.model_config_of(config)
    start = time.perf_counter()
    zero = compile_programs(config, mesh, with_layers(model_config, 0), rollout=False)
    one = compile_programs(config, mesh, with_layers(model_config, 1), rollout=True)
    compile_s = time.perf_counter() - start
    depth = model_config.num_layers

    def deeper(name: str, layer: str) -> Cost:
        """A 1-layer rollout program's cost with depth - 1 more layers."""
        return getattr(one, name) + getattr(one, layer) * (depth - 1)

    prompt_len, slots = one.prompt_len, one.slots
    at_prompt = deeper("decode_at_prompt", "layer_at_prompt")
    at_full = deeper("decode_at_full", "layer_at_full")
    per_slot = (at_full - at_prompt) * (1.0 / (slots - prompt_len))
    optimizer = extrapolate(zero.optimizer, one.optimizer, depth)
    return StepCosts(
        config_path=config_path, model=model_config.architecture,
        num_params=model_config.num_params(), num_layers=depth, topology=topology, chip=chip,
        mesh=dict(mesh.shape), rows=config.batch_size * config.rollout.group_size,
        prompt_len=prompt_len, slots=slots, decode_steps=config.rollout.max_new_tokens,
        num_micro_batches=g.num_micro_batches, decode_fixed=at_prompt - per_slot * prompt_len,
        decode_per_slot=per_slot, decode_around=one.decode_around * depth,
        paged_decode=one.paged_decode,
        prefill=deeper("prefill", "prefill_layer"),
        micro_batch=extrapolate(zero.learn, one.learn, depth) - optimizer,
        optimizer=optimizer, compile_s=compile_s,
        windows=kv_windows(prompt_len, slots, config.rollout.kv_windows))


def estimate(costs: StepCosts, slots_read: Callable[[int], int] | None = None,
             schedule: str | None = None) -> RooflinePlan:
    """The roofline seconds of a step. `slots_read(step) -> int`: the cache slots decode
    step `step` (0-based) reads; default the prompt's and the step's slots when the decode
    loop runs the paged attention kernel, else the config's KV windows
    (`sampler/kv_windows.py`), or all S slots at every step with one window (`schedule`
    names it)."""
    chip = costs.chip
    if slots_read is None and costs.paged_decode:
        slots_read = lambda step: costs.prompt_len + step + 1  # noqa: E731
        schedule = "the filled slots of each row (the paged attention kernel)"
    elif slots_read is None and len(costs.windows) > 1:
        slots_read = lambda step: window_read(costs.windows, costs.prompt_len + step)  # noqa: E731
        schedule = f"up to the edge of its KV window ({', '.join(map(str, costs.windows))})"
    elif slots_read is None:
        slots_read, schedule = (lambda step: costs.slots), f"all {costs.slots} slots"
    prefill_s, decode_s, decode_cost = rollout_seconds(
        costs.prefill, costs.decode_step, slots_read, costs.decode_steps, chip)
    loops = max(len(costs.windows), 1)  # one decode loop per KV window
    decode_s = decode_s + seconds(costs.decode_around, chip) * loops
    decode_cost = decode_cost + costs.decode_around * loops
    k = costs.num_micro_batches
    micro, optimizer = seconds(costs.micro_batch, chip), seconds(costs.optimizer, chip)
    return RooflinePlan(
        costs=costs, prefill=Part(costs.prefill, prefill_s), decode=Part(decode_cost, decode_s),
        micro_batch=Part(costs.micro_batch, micro), optimizer=Part(costs.optimizer, optimizer),
        update=Part(costs.micro_batch * k + costs.optimizer, micro * k + optimizer),
        slots_read=schedule or "a given schedule of slots")


def run(config_path: str, overrides: list[str] = (), topology: str = "v5p:4x4x4",
        slots_read: Callable[[int], int] | None = None) -> RooflinePlan:
    return estimate(measure(config_path, overrides, topology), slots_read)
