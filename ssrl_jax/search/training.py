"""GRPO steps whose rollouts use a real retriever, or whose rewards need the whole group (TTRL).

The host-driven step (docs/search.md gives the measurements behind the choice):

    rollout  search_rollout: jitted sampler segments (prefill+decode, inject+decode) with the
             retriever called between them on the host, no re-prefill
    score    on the host, where the tokens already are: SSRL reward per response, or TTRL
             reward per group (agreement with the group's majority answer), and the
             token-exact loss mask (injected tokens and <information> spans excluded)
    learn    one jitted program: group advantages + `make_step_parts(...).learn`, `state`
             donated, returned with the shardings it came with

`HostStep(state, prompts, golds, key) -> (state, metrics)` mirrors the compiled
`train_step`: the same PRNG use (`sample_key, shuffle_key = split(key)`, one key per response
from `sample_key`), the same metrics, plus the search counts and the client's counters.
`HostStep.prepare(state, num_rows)` compiles the learn program before the first step and
refuses a config whose step cannot fit in memory (`search/memory.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssrl_jax.rl import grpo, rewards
from ssrl_jax.rl.masks import loss_mask
from ssrl_jax.rl.scoring import SCORE_NAMES, response_text
from ssrl_jax.rl.step import StepConfig, TrainState, compute_copy, make_step_parts
from ssrl_jax.sampler import decode as decode_lib
from ssrl_jax.sampler.sampler import Sampler
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.search.client import COUNTERS
from ssrl_jax.search.memory import MemoryPlan, available_memory, check_plan
from ssrl_jax.search.rollout import SearchPolicy, rollout_cache_len, search_rollout
from ssrl_jax.sharding import ShardingRules


class _Trajectories(NamedTuple):
    tokens: jax.Array
    sources: jax.Array


def score_group_rows(tokens: np.ndarray, sources: np.ndarray, golds: Sequence[Sequence[str]], *,
                     token_bytes: Sequence[bytes], reward: str, group_size: int,
                     format_weight: float, mask_information: bool, format_rule: str = "ssrl"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host scoring of N = P·n responses, groups consecutive.

    Returns (scores fp32 [N, len(SCORE_NAMES)], loss mask fp32 [N, S], gold EM [N]). With
    ``reward="ttrl"`` the reward, exact_match and f1 are against the group's majority answer
    (no golds used); gold EM is always against the golds (for monitoring).
    """
    texts = [response_text(tokens[i], sources[i], token_bytes) for i in range(len(tokens))]
    if reward == "ttrl":
        parts = rewards.ttrl_rewards(texts, format_weight, group_size=group_size,
                                     format_rule=format_rule)
    else:
        parts = [rewards.ssrl_reward(t, g, format_weight, format_rule)
                 for t, g in zip(texts, golds)]
    scores = np.array([[getattr(p, name) for name in SCORE_NAMES] for p in parts], np.float32)
    gold_em = np.array([rewards.exact_match(rewards.extract_answer(t), g) if g else 0.0
                        for t, g in zip(texts, golds)], np.float32)
    return scores, loss_mask(tokens, sources, token_bytes, mask_information), gold_em


@dataclasses.dataclass
class HostStep:
    """The host-driven train step (module docstring). Single-controller: one process.

    graphdef / config / optimizer / rules: as for `make_train_step`; state_sharding: the
    shardings of the `TrainState`; params: the initial policy parameters (to build the
    sampler); tokenizer: encodes injected text; prompt_len: the run's fixed prompt length.
    """

    graphdef: nnx.GraphDef
    config: StepConfig
    token_bytes: Sequence[bytes]
    optimizer: optax.GradientTransformation
    policy: SearchPolicy
    client: Any
    tokenizer: Any
    params: nnx.State
    prompt_len: int
    mesh: jax.sharding.Mesh
    reward: str = "ssrl"
    format_weight: float = 0.1
    format_rule: str = "ssrl"
    rules: ShardingRules = dataclasses.field(default_factory=ShardingRules)
    state_sharding: Any = None

    def __post_init__(self):
        if self.reward not in rewards.REWARDS:
            raise ValueError(f"reward={self.reward!r}: must be one of {rewards.REWARDS}")
        parts = make_step_parts(self.graphdef, self.config, token_bytes=self.token_bytes,
                                reward_fn=rewards.ssrl_reward, optimizer=self.optimizer,
                                rules=self.rules)
        n, estimator = self.config.group_size, self.config.advantage_estimator

        def learn(state: TrainState, tokens, sources, mask, reward_values, key):
            advantages = grpo.group_advantages(reward_values, n, estimator)
            params, opt_state, metrics = parts.learn(state, _Trajectories(tokens, sources),
                                                     mask, advantages, key, self.prompt_len)
            new = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                             ref_params=state.ref_params)
            return new, metrics

        out = None if self.state_sharding is None else (self.state_sharding, None)
        self._learn = jax.jit(learn, donate_argnums=0, out_shardings=out)
        self._compiled: dict[tuple[int, int], Any] = {}  # (rows, slots) -> compiled learn
        # The sampler decodes with a compute-dtype (bf16) copy of the master weights, made
        # anew for each step's rollout and dropped before the update.
        dtype = nnx.merge(self.graphdef, self.params).config.dtype
        self._rollout_copy = jax.jit(functools.partial(compute_copy, dtype=dtype))
        self.sampler = Sampler(nnx.merge(self.graphdef, self.params),
                               token_bytes=self.token_bytes, eos_ids=self.config.eos_ids,
                               pad_id=self.config.pad_id, prompt_buckets=[self.prompt_len],
                               mesh=self.mesh, kv_windows=self.config.kv_windows)
        self.params = None  # the step's state carries the parameters from here on
        self._encode = functools.partial(self.tokenizer.encode, add_special_tokens=False)

    def cache_len(self, num_rows: int) -> int:
        return rollout_cache_len(self.sampler, [[0] * self.prompt_len] * num_rows,
                                 policy=self.policy, max_new_tokens=self.config.max_new_tokens,
                                 encode=self._encode)

    def _row_sharding(self, shape: tuple[int, ...]) -> jax.sharding.Sharding:
        return self.rules.sharding(("batch",) + (None,) * (len(shape) - 1), shape, self.mesh)

    def _rows(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(x, self._row_sharding(x.shape))

    def prepare(self, state: TrainState, num_rows: int) -> MemoryPlan | None:
        """Compiles the learn program for `num_rows` responses (the steps then run it) and
        checks the step's memory plan against the free memory: MemoryPlanError naming
        `grpo.num_micro_batches` when it cannot fit. None when XLA gives no buffer sizes."""
        slots = self.cache_len(num_rows)

        def rows(shape, dtype):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=self._row_sharding(shape))

        key = jax.random.split(jax.random.key(0))[1]
        with jax.set_mesh(self.mesh):
            compiled = self._learn.lower(
                state, rows((num_rows, slots), jnp.int32), rows((num_rows, slots), jnp.int8),
                rows((num_rows, slots), jnp.float32), rows((num_rows,), jnp.float32), key).compile()
            decode_state = jax.eval_shape(
                lambda params: decode_lib.prefill(
                    nnx.merge(self.graphdef, params), jnp.zeros((num_rows, self.prompt_len), jnp.int32),
                    jnp.ones((num_rows, self.prompt_len), bool),
                    jax.random.split(jax.random.key(0), num_rows), slots),
                state.params)
        self._compiled[(num_rows, slots)] = compiled
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
        return plan

    def __call__(self, state: TrainState, prompts: Sequence[Sequence[int]],
                 golds: Sequence[Sequence[str]], key: jax.Array
                 ) -> tuple[TrainState, dict[str, Any]]:
        """One step on P prompts (token-id lists) with their gold lists (unused by TTRL)."""
        n, cfg = self.config.group_size, self.config
        sample_key, shuffle_key = jax.random.split(key)
        rows = [list(p) for p in prompts for _ in range(n)]
        row_golds = [list(g) for g in golds for _ in range(n)]
        self.sampler.params = self._rollout_copy(state.params)
        out = search_rollout(self.sampler, rows, policy=self.policy, client=self.client,
                             encode=self._encode, max_new_tokens=cfg.max_new_tokens,
                             sampling=cfg.sampling, keys=jax.random.split(sample_key, len(rows)),
                             cache_len=self.cache_len(len(rows)))
        self.sampler.params = None
        tokens, sources = jax.device_get((out.state.tokens, out.state.sources))
        search_metrics = out.metrics()
        del out  # frees the KV cache before learning
        scores, mask, gold_em = score_group_rows(
            tokens, sources, row_golds, token_bytes=self.token_bytes, reward=self.reward,
            group_size=n, format_weight=self.format_weight,
            mask_information=cfg.mask_information, format_rule=self.format_rule)
        reward_values = scores[:, SCORE_NAMES.index("reward")]
        learn = self._compiled.get(tokens.shape, self._learn)
        state, metrics = learn(state, self._rows(tokens), self._rows(sources), self._rows(mask),
                               self._rows(reward_values), shuffle_key)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        policy_tokens = sources == TokenSource.POLICY
        for i, name in enumerate(SCORE_NAMES):
            metrics[name] = float(scores[:, i].mean())
        metrics["gold_exact_match"] = float(gold_em.mean())
        metrics["response_length"] = float(policy_tokens.sum(axis=1).mean())
        metrics["masked_share"] = float(1.0 - mask.sum() / max(policy_tokens.sum(), 1))
        metrics["trained_tokens"] = float(mask.sum())
        metrics["injected_tokens"] = float((sources == TokenSource.INJECTED).sum(axis=1).mean())
        metrics.update(search_metrics)
        if self.client is not None:
            counts = self.client.reset_counters()
            metrics.update({f"search_{k}": float(counts[k]) for k in COUNTERS})
        if cfg.sample_rows:
            k = cfg.sample_rows
            metrics["samples"] = {"tokens": tokens[::n][:k], "sources": sources[::n][:k],
                                  "reward": reward_values[::n][:k]}
        return state, metrics
