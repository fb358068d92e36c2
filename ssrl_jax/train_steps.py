"""The train step a run loops over, one interface whatever the training mode:

    step = make_step(config, ...)            # CompiledStep, or search.training.HostStep
    log(step.prepare(state, qa, key))        # compiles before the first step, says how
    state, metrics = step(state, qa, key)    # host metrics; `samples` when logged
    step.close()

`qa` is the step's global batch of QA rows (`data.pipeline`); `key` the step's PRNG key.
Self-search with SSRL rewards is the one compiled program of `rl.step.make_train_step`; real
search and TTRL rewards run the host-driven rollout and scoring (`search.training`) ahead of
the same compiled update.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import optax
from flax import nnx

from ssrl_jax import train_config as tc
from ssrl_jax.data import train_batches
from ssrl_jax.rl.rewards import ssrl_reward
from ssrl_jax.rl.step import StepConfig, make_train_step
from ssrl_jax.rl.train_state import TrainState
from ssrl_jax.sharding import ShardingRules

QABatch = Mapping[str, Sequence[Any]]


class TrainStep(Protocol):
    def prepare(self, state: TrainState, qa: QABatch, key: jax.Array) -> str: ...

    def __call__(self, state: TrainState, qa: QABatch, key: jax.Array
                 ) -> tuple[TrainState, dict[str, Any]]: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class CompiledStep:
    """Self-search: the step is one compiled program (`rl.step.make_train_step`), fed the
    rows this host's devices hold (`train_batches.step_batch`)."""

    train_step: Any
    prompts: train_batches.PromptTable
    pad_id: int
    max_golds: int
    max_gold_bytes: int
    mesh: jax.sharding.Mesh
    rules: ShardingRules

    def _batch(self, qa: QABatch) -> dict[str, jax.Array]:
        return train_batches.step_batch(qa, self.prompts, pad_id=self.pad_id,
                                        max_golds=self.max_golds,
                                        max_gold_bytes=self.max_gold_bytes, mesh=self.mesh,
                                        rules=self.rules)

    def prepare(self, state: TrainState, qa: QABatch, key: jax.Array) -> str:
        start = time.perf_counter()
        self.train_step = self.train_step.lower(state, self._batch(qa), key).compile()
        return f"compiled the train step in {time.perf_counter() - start:.1f} s"

    def __call__(self, state: TrainState, qa: QABatch, key: jax.Array
                 ) -> tuple[TrainState, dict[str, Any]]:
        state, metrics = self.train_step(state, self._batch(qa), key)
        return state, jax.device_get(metrics)

    def close(self) -> None:
        pass


def uses_host_step(config: ml_collections.ConfigDict) -> bool:
    """Real search or TTRL: the host-driven step (`ssrl_jax.search.training`)."""
    return config.rollout.mode != "self" or config.grpo.reward != "ssrl"


def search_client(config: ml_collections.ConfigDict):
    """The `SearchClient` of config.search (None in self mode)."""
    if config.rollout.mode == "self":
        return None
    from ssrl_jax.search.client import SearchClient

    s = config.search
    try:
        return SearchClient(s.url, topk=s.topk, timeout_s=s.timeout_s, max_retries=s.max_retries,
                            on_failure=s.on_failure, batch_size=s.batch_size,
                            max_concurrency=s.max_concurrency,
                            max_consecutive_failures=s.max_consecutive_failures)
    except Exception as error:  # noqa: BLE001 - a bad URL is reported as a config error
        raise tc.ConfigFieldError(f"config.search.url={s.url!r}: {error}") from error


def make_step(config: ml_collections.ConfigDict, *, graphdef: nnx.GraphDef, state: TrainState,
              optimizer: optax.GradientTransformation, token_bytes: Sequence[bytes],
              tokenizer: Any, eos_ids: tuple[int, ...], pad_id: int,
              prompts: train_batches.PromptTable, mesh: jax.sharding.Mesh,
              rules: ShardingRules) -> TrainStep:
    """The run's train step. The host-driven one compiles its update and checks its memory
    plan here, so that a step that cannot fit is refused before the workdir is touched."""
    step_config = StepConfig.from_config(config, eos_ids=eos_ids, pad_id=pad_id)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    if not uses_host_step(config):
        reward_fn = functools.partial(ssrl_reward, format_weight=config.grpo.format_weight,
                                      format_rule=config.grpo.format_rule)
        train_step = make_train_step(graphdef, step_config, token_bytes=token_bytes,
                                     reward_fn=reward_fn, optimizer=optimizer, rules=rules,
                                     state_sharding=state_sharding)
        return CompiledStep(train_step, prompts, pad_id, config.data.max_golds,
                            config.data.max_gold_bytes, mesh, rules)

    from ssrl_jax.search.memory import MemoryPlanError
    from ssrl_jax.search.rollout import SearchPolicy
    from ssrl_jax.search.training import HostStep

    if jax.process_count() > 1:
        raise tc.ConfigFieldError(
            f"config.rollout.mode={config.rollout.mode!r} / config.grpo.reward="
            f"{config.grpo.reward!r}: the host-driven step runs on one host; multi-host runs "
            "support rollout.mode='self' with grpo.reward='ssrl' only")
    step = HostStep(graphdef=graphdef, config=step_config, token_bytes=token_bytes,
                    optimizer=optimizer, policy=SearchPolicy.from_config(config),
                    client=search_client(config), tokenizer=tokenizer, params=state.params,
                    prompts=prompts, mesh=mesh, reward=config.grpo.reward,
                    format_weight=config.grpo.format_weight,
                    format_rule=config.grpo.format_rule, rules=rules,
                    state_sharding=state_sharding)
    try:
        step.memory_plan(state, config.batch_size * config.rollout.group_size)
    except MemoryPlanError as error:
        step.close()
        raise tc.ConfigFieldError(str(error)) from error
    return step
