"""The one compiled GRPO train step (self-search mode), and the tail every mode shares.

    train_step = make_train_step(graphdef, config, token_bytes=..., reward_fn=...)
    state, metrics = train_step(state, batch, key)

Inside one jitted program, `state` donated: rollout (n responses per prompt, the sampler's
`decode.generate`) -> `Trajectories` -> score on the host, per shard -> `make_update`: group
advantages, the GRPO update (`rl/learn.py`), the step's metrics, the next `TrainState`. The
rollout is pluggable (`rollout_fn`: the multi-turn search of `search/step_rollout.py`). Shapes: P prompts, n
group size, N = P·n responses, L prompt bucket, S = L + max_new_tokens slots.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssrl_jax.rl import grpo
from ssrl_jax.rl.learn import make_learn
from ssrl_jax.rl.scoring import SCORE_NAMES, RewardFn, score_on_host
from ssrl_jax.rl.step_config import StepConfig
from ssrl_jax.rl.train_state import TrainState, decode_copy, next_train_state
from ssrl_jax.rl.trajectory import Trajectories
from ssrl_jax.sampler import decode as decode_lib
from ssrl_jax.sampler.kv_windows import kv_windows
from ssrl_jax.sampler.state import DecodeState
from ssrl_jax.sampler.stop import build_stop_table
from ssrl_jax.sharding import ShardingRules, constrain


class StepParts(NamedTuple):
    """The stages of a train step, each traceable on its own (the benchmark times them
    apart; `make_train_step` composes them into one program).

    rollout(params, batch, key) -> (Trajectories of N = P·n responses, rollout metrics)
    score(trajectories, batch) -> (scores [N, len(SCORE_NAMES)], loss mask [N, S])
    learn(state, trajectories, mask, advantages, key, prompt_len) -> (params, opt_state,
                                                                      metrics)
    `prompt_len` (static: the prompt bucket L) is where responses start; the logits of
    the prompt slots, which carry no loss, are not computed.
    """

    rollout: Callable
    score: Callable
    learn: Callable


def split_step_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sampling key, shuffling key) of a step's key: every training mode splits it so."""
    sample_key, shuffle_key = jax.random.split(key)
    return sample_key, shuffle_key


# rollout_fn(model, ids [N, L], valid [N, L], keys [N]) -> (DecodeState of N rows, metrics):
# how a step writes its responses. `model` is the rollout's weight copy; metrics are scalars
# or per-row [N] arrays (logged as means), "decode_steps" the decode iterations of all turns.
RolloutFn = Callable[..., tuple[DecodeState, dict[str, jax.Array]]]


def self_search_rollout(config: StepConfig, token_bytes: Sequence[bytes]) -> RolloutFn:
    """SSRL's rollout: one pass to EOS (or `max_new_tokens`), the model writing its own
    `<information>`; the sampler's program (`decode.generate`)."""
    stop = build_stop_table((), token_bytes)
    stop_next, stop_completed = np.asarray(stop.next_state), np.asarray(stop.completed)
    eos_ids = np.asarray(config.eos_ids, np.int32)

    def rollout(model, ids, valid, keys):
        cache_len = ids.shape[1] + config.max_new_tokens
        state = decode_lib.generate(
            model, ids, valid, keys, cache_len=cache_len, sampling=config.sampling,
            stop_next=jnp.asarray(stop_next), stop_completed=jnp.asarray(stop_completed),
            eos_ids=jnp.asarray(eos_ids), max_new_tokens=jnp.int32(config.max_new_tokens),
            pad_id=config.pad_id, windows=kv_windows(ids.shape[1], cache_len, config.kv_windows))
        return state, {"decode_steps": state.num_steps}

    return rollout


def make_step_parts(graphdef: nnx.GraphDef, config: StepConfig, *, token_bytes: Sequence[bytes],
                    reward_fn: RewardFn, optimizer: optax.GradientTransformation,
                    rules: ShardingRules | None = ShardingRules(),
                    rollout_fn: RolloutFn | None = None, group_reward: bool = False) -> StepParts:
    """The rollout / score / learn stages of `make_train_step` (arguments as there)."""
    rollout_fn = rollout_fn or self_search_rollout(config, token_bytes)
    n = config.group_size

    def rollout(params, batch, key):
        # The sampler decodes with a compute-dtype (bf16) copy of the master weights in the
        # decode layout, made once here: cast once rather than at every decode step, and
        # gathered over fsdp once rather than layer by layer inside the decode loop.
        dtype = nnx.merge(graphdef, params).config.dtype
        layout_rules = rules if config.weight_layout == "decode" else None
        model = nnx.merge(graphdef, decode_copy(params, dtype, layout_rules))
        ids = jnp.repeat(batch["prompt_ids"], n, axis=0)
        valid = jnp.repeat(batch["prompt_valid"], n, axis=0)
        state, metrics = rollout_fn(model, ids, valid, jax.random.split(key, ids.shape[0]))
        metrics = dict(metrics)
        return Trajectories.from_decode_state(state, metrics.pop("decode_steps", None)), metrics

    def score(trajectories, batch):
        golds = jnp.repeat(batch["golds"], n, axis=0)
        scores, mask = score_on_host(trajectories.tokens, trajectories.sources, golds,
                                     token_bytes=token_bytes, reward_fn=reward_fn,
                                     mask_information=config.mask_information, rules=rules,
                                     group_size=n, group_reward=group_reward)
        return constrain(scores, ("batch", None), rules), mask

    return StepParts(rollout=rollout, score=score,
                     learn=make_learn(graphdef, config, optimizer=optimizer))


def step_metrics(trajectories: Trajectories, scores: jax.Array, mask: jax.Array,
                 config: StepConfig, rules: ShardingRules | None) -> dict[str, Any]:
    """What every training mode reports of its rollout: mean scores, response length, the
    share of policy tokens the mask drops, and (`config.sample_rows` = k > 0) `samples`,
    one response from each of the first k prompts ({"tokens", "sources"}: [k, S],
    "reward": [k]), replicated so that every host can read them."""
    policy = trajectories.policy
    metrics = {name: scores[:, i].mean() for i, name in enumerate(SCORE_NAMES)}
    metrics["response_length"] = trajectories.response_lengths.mean()
    metrics["masked_share"] = 1.0 - mask.sum() / jnp.maximum(policy.sum(), 1)
    metrics["trained_tokens"] = mask.sum()
    metrics["decode_steps"] = trajectories.decode_steps
    if config.sample_rows:
        # One response from each of the first prompts, so the samples show different questions.
        k, n = config.sample_rows, config.group_size
        rewards = scores[:, SCORE_NAMES.index("reward")]
        metrics["samples"] = jax.tree.map(
            lambda x: constrain(x[::n][:k], (None,) * x.ndim, rules),
            {"tokens": trajectories.tokens, "sources": trajectories.sources, "reward": rewards})
    return metrics


def summarize_rollout(metrics: dict[str, jax.Array], scores: jax.Array) -> dict[str, jax.Array]:
    """A rollout's metrics as means. A search rollout's per-row `counted_searches` (the searches
    it decided on) become `self_searches`: the other `</search>` tags each response wrote."""
    metrics = dict(metrics)
    counted = metrics.pop("counted_searches", None)
    if counted is not None:
        written = scores[:, SCORE_NAMES.index("written_searches")]
        metrics["self_searches"] = jnp.maximum(written - counted, 0)
    return {name: jnp.mean(value.astype(jnp.float32)) for name, value in metrics.items()}


def make_update(learn: Callable, config: StepConfig,
                rules: ShardingRules | None = ShardingRules()):
    """The tail every training mode runs on scored trajectories, whatever rolled them out:
    group advantages -> `learn` (`rl.learn.make_learn`) -> metrics -> the next `TrainState`.

    update(state, trajectories, scores [N, len(SCORE_NAMES)], mask [N, S], key, prompt_len)
        -> (state, metrics); `key` is the step's shuffling key, `prompt_len` static.
    """

    def update(state: TrainState, trajectories: Trajectories, scores: jax.Array,
               mask: jax.Array, key: jax.Array, prompt_len: int):
        rewards = scores[:, SCORE_NAMES.index("reward")]
        advantages = grpo.group_advantages(rewards, config.group_size,
                                           config.advantage_estimator)
        params, opt_state, metrics = learn(state, trajectories, mask, advantages, key,
                                           prompt_len)
        metrics.update(step_metrics(trajectories, scores, mask, config, rules))
        return next_train_state(state, params, opt_state), metrics

    return update


def make_train_step(graphdef: nnx.GraphDef, config: StepConfig, *, token_bytes: Sequence[bytes],
                    reward_fn: RewardFn, optimizer: optax.GradientTransformation,
                    rules: ShardingRules | None = ShardingRules(), state_sharding: Any = None,
                    rollout_fn: RolloutFn | None = None, group_reward: bool = False):
    """Builds the jitted `train_step(state, batch, key) -> (state, metrics)`.

    `rollout_fn` (default `self_search_rollout`) writes the responses: e.g. the multi-turn
    search of `search.compiled_rollout`, run inside the same program. `reward_fn` is a
    `RewardFn`, or with `group_reward` a `GroupRewardFn` (TTRL).

    `state_sharding` (the shardings of the `TrainState` the step will be given, e.g.
    `jax.tree.map(lambda x: x.sharding, state)`) pins the returned state to the same
    layout, so that step after step the program is called with what it was compiled
    for; metrics are then returned replicated.

    batch: {"prompt_ids": int32 [P, L] left-padded, "prompt_valid": bool [P, L],
    "golds": uint8 [P, G, B] (see `data.golds.encode_golds`)}. `state` is donated.
    metrics: scalars, plus `samples` (see `step_metrics`).
    """
    parts = make_step_parts(graphdef, config, token_bytes=token_bytes, reward_fn=reward_fn,
                            optimizer=optimizer, rules=rules, rollout_fn=rollout_fn,
                            group_reward=group_reward)
    update = make_update(parts.learn, config, rules)

    def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array):
        sample_key, shuffle_key = split_step_key(key)
        trajectories, rollout_metrics = parts.rollout(state.params, batch, sample_key)
        scores, mask = parts.score(trajectories, batch)
        state, metrics = update(state, trajectories, scores, mask, shuffle_key,
                                batch["prompt_ids"].shape[1])
        return state, {**metrics, **summarize_rollout(rollout_metrics, scores)}

    if state_sharding is None:
        return jax.jit(train_step, donate_argnums=0)
    return jax.jit(train_step, donate_argnums=0, out_shardings=(state_sharding, None))
