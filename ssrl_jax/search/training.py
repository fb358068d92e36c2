"""The train step whose rollouts use a real retriever, or whose rewards need the whole group
(TTRL): the same pipeline as the compiled step, with the rollout and scoring on the host.

    rollout  search_rollout: jitted sampler segments (prefill+decode, inject+decode) with the
             retriever called between them on the host, no re-prefill -> `Trajectories`
    score    on the host, where the tokens already are (`rl.scoring.score_group_rows`): SSRL
             reward per response, or TTRL reward per group, and the token-exact loss mask
    update   `rl.step.make_update` (group advantages -> learn -> metrics -> next state), the
             compiled step's own tail, jitted with `state` donated

`HostStep(state, qa, key) -> (state, metrics)` splits the key as the compiled step does
(`split_step_key`, one key per response from the sampling key) and reports its metrics, plus
the search counts and the client's counters. `HostStep.prepare(state, qa, key)` compiles the
update before the first step and refuses a config whose step cannot fit in memory
(`search/memory.py`). docs/search.md gives the measurements behind the host loop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssrl_jax.data.train_batches import PromptTable
from ssrl_jax.rl import rewards
from ssrl_jax.rl.scoring import SCORE_NAMES, score_group_rows
from ssrl_jax.rl.learn import make_learn
from ssrl_jax.rl.step import StepConfig, make_update, split_step_key
from ssrl_jax.rl.train_state import TrainState, compute_copy
from ssrl_jax.rl.trajectory import Trajectories
from ssrl_jax.sampler import decode as decode_lib
from ssrl_jax.sampler.sampler import Sampler
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.search.client import COUNTERS
from ssrl_jax.search.memory import MemoryPlan, available_memory, check_plan
from ssrl_jax.search.rollout import SearchPolicy, rollout_cache_len, search_rollout
from ssrl_jax.sharding import ShardingRules


@dataclasses.dataclass
class HostStep:
    """The host-driven train step (module docstring). Single-controller: one process.

    graphdef / config / optimizer / rules: as for `make_train_step`; state_sharding: the
    shardings of the `TrainState`; params: the initial policy parameters (to build the
    sampler); tokenizer: encodes injected text; prompts: the run's tokenised prompts.
    """

    graphdef: nnx.GraphDef
    config: StepConfig
    token_bytes: Sequence[bytes]
    optimizer: optax.GradientTransformation
    policy: SearchPolicy
    client: Any
    tokenizer: Any
    params: nnx.State
    prompts: PromptTable
    mesh: jax.sharding.Mesh
    reward: str = "ssrl"
    format_weight: float = 0.1
    format_rule: str = "ssrl"
    rules: ShardingRules = dataclasses.field(default_factory=ShardingRules)
    state_sharding: Any = None

    def __post_init__(self):
        if self.reward not in rewards.REWARDS:
            raise ValueError(f"reward={self.reward!r}: must be one of {rewards.REWARDS}")
        learn = make_learn(self.graphdef, self.config, optimizer=self.optimizer)
        out = None if self.state_sharding is None else (self.state_sharding, None)
        update = functools.partial(make_update(learn, self.config, self.rules),
                                   prompt_len=self.prompts.length)
        self._update = jax.jit(update, donate_argnums=0, out_shardings=out)
        self._compiled: dict[tuple[int, int], Any] = {}  # (rows, slots) -> compiled update
        self._plans: dict[tuple[int, int], MemoryPlan | None] = {}
        # The sampler decodes with a compute-dtype (bf16) copy of the master weights, made
        # anew for each step's rollout and dropped before the update.
        dtype = nnx.merge(self.graphdef, self.params).config.dtype
        self._rollout_copy = jax.jit(functools.partial(compute_copy, dtype=dtype))
        self.sampler = Sampler(nnx.merge(self.graphdef, self.params),
                               token_bytes=self.token_bytes, eos_ids=self.config.eos_ids,
                               pad_id=self.config.pad_id, prompt_buckets=[self.prompts.length],
                               mesh=self.mesh, kv_windows=self.config.kv_windows)
        self.params = None  # the step's state carries the parameters from here on
        self._encode = functools.partial(self.tokenizer.encode, add_special_tokens=False)

    @property
    def prompt_len(self) -> int:
        return self.prompts.length

    def cache_len(self, num_rows: int) -> int:
        return rollout_cache_len(self.sampler, [[0] * self.prompt_len] * num_rows,
                                 policy=self.policy, max_new_tokens=self.config.max_new_tokens,
                                 encode=self._encode)

    def _row_sharding(self, shape: tuple[int, ...]) -> jax.sharding.Sharding:
        return self.rules.sharding(("batch",) + (None,) * (len(shape) - 1), shape, self.mesh)

    def _rows(self, x: Any) -> jax.Array:
        return jax.device_put(x, self._row_sharding(x.shape))

    def prepare(self, state: TrainState, qa: Mapping[str, Sequence[Any]], key: jax.Array
                ) -> str:
        """Compiles the update for a batch like `qa` (the steps then run it) and checks the
        step's memory plan against the free memory: MemoryPlanError naming
        `grpo.num_micro_batches` when it cannot fit. Returns what it found, for the log."""
        num_rows = len(qa["question"]) * self.config.group_size
        shape = (num_rows, self.cache_len(num_rows))
        plan = (self._plans[shape] if shape in self._compiled
                else self.memory_plan(state, num_rows))
        if plan is None:
            return "compiled the update (no buffer sizes from XLA: memory plan not checked)"
        return (f"compiled the update; the step needs {plan.needed / 1e9:.2f} GB "
                f"({plan.rows} rows x {plan.slots} slots)")

    def memory_plan(self, state: TrainState, num_rows: int) -> MemoryPlan | None:
        """`prepare`'s compile and memory check for `num_rows` responses (None when XLA
        gives no buffer sizes)."""
        slots = self.cache_len(num_rows)

        def rows(dtype, *shape):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=self._row_sharding(shape))

        trajectories = Trajectories(
            tokens=rows(jnp.int32, num_rows, slots), sources=rows(jnp.int8, num_rows, slots),
            logprobs=rows(jnp.float32, num_rows, slots),
            entropies=rows(jnp.float32, num_rows, slots),
            decode_steps=jax.ShapeDtypeStruct((), jnp.int32))
        key = split_step_key(jax.random.key(0))[1]
        with jax.set_mesh(self.mesh):
            compiled = self._update.lower(
                state, trajectories, rows(jnp.float32, num_rows, len(SCORE_NAMES)),
                rows(jnp.float32, num_rows, slots), key).compile()
            decode_state = jax.eval_shape(
                lambda params: decode_lib.prefill(
                    nnx.merge(self.graphdef, params), jnp.zeros((num_rows, self.prompt_len), jnp.int32),
                    jnp.ones((num_rows, self.prompt_len), bool),
                    jax.random.split(jax.random.key(0), num_rows), slots),
                state.params)
        self._compiled[(num_rows, slots)] = compiled
        self._plans[(num_rows, slots)] = None
        stats = compiled.memory_analysis()
        if stats is None:
            return None
        micro = self.config.num_micro_batches
        rows_per_mini = num_rows // self.config.num_mini_batches
        plan = MemoryPlan(
            rows=num_rows, slots=slots, micro_batches=micro,
            rows_per_micro_batch=rows_per_mini // micro, learn_temp=stats.temp_size_in_bytes,
            learn_new_outputs=max(stats.output_size_in_bytes - stats.alias_size_in_bytes, 0),
            rollout_state=sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(decode_state))
            // self.mesh.size,
            devices_per_memory=sum(d.platform == "cpu" for d in self.mesh.devices.flat) or 1)
        available, where = available_memory(list(self.mesh.devices.flat))
        check_plan(plan, available=available, where=where, rows_per_mini_batch=rows_per_mini)
        self._plans[(num_rows, slots)] = plan
        return plan

    def __call__(self, state: TrainState, qa: Mapping[str, Sequence[Any]], key: jax.Array
                 ) -> tuple[TrainState, dict[str, Any]]:
        """One step on a batch of QA rows (`question`, `golden_answers`; golds unused by
        TTRL's reward)."""
        n, cfg = self.config.group_size, self.config
        sample_key, shuffle_key = split_step_key(key)
        rows = [list(p) for p in self.prompts.row_ids(qa) for _ in range(n)]
        row_golds = [list(g) for g in qa["golden_answers"] for _ in range(n)]
        self.sampler.params = self._rollout_copy(state.params)
        out = search_rollout(self.sampler, rows, policy=self.policy, client=self.client,
                             encode=self._encode, max_new_tokens=cfg.max_new_tokens,
                             sampling=cfg.sampling, keys=jax.random.split(sample_key, len(rows)),
                             cache_len=self.cache_len(len(rows)))
        self.sampler.params = None
        trajectories = Trajectories(
            tokens=self._rows(out.state.tokens), sources=self._rows(out.state.sources),
            logprobs=self._rows(out.state.logprobs), entropies=self._rows(out.state.entropies),
            decode_steps=np.int32(out.decode_steps))
        search_metrics = out.metrics()
        del out  # frees the KV cache before learning
        tokens, sources = jax.device_get((trajectories.tokens, trajectories.sources))
        scores, mask, gold_em = score_group_rows(
            tokens, sources, row_golds, token_bytes=self.token_bytes, reward=self.reward,
            group_size=n, format_weight=self.format_weight,
            mask_information=cfg.mask_information, format_rule=self.format_rule)
        update = self._compiled.get(tokens.shape, self._update)
        state, metrics = update(state, trajectories, self._rows(scores), self._rows(mask),
                                shuffle_key)
        metrics = jax.device_get(metrics)
        metrics["gold_exact_match"] = float(gold_em.mean())
        metrics["injected_tokens"] = float((sources == TokenSource.INJECTED).sum(axis=1).mean())
        metrics.update(search_metrics)
        if self.client is not None:
            counts = self.client.reset_counters()
            metrics.update({f"search_{k}": float(counts[k]) for k in COUNTERS})
        return state, metrics

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
