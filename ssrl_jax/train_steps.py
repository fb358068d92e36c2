"""The train step a run loops over: one compiled program, whatever the training mode.

    step = make_step(config, ...)            # compiles, and checks the step fits in memory
    log(step.prepare(state, qa, key))        # what the compile took, for the log
    state, metrics = step(state, qa, key)    # host metrics; `samples` when logged
    step.close()

`qa` is the step's global batch of QA rows (`data.pipeline`); `key` the step's PRNG key.
The rollout is the part that changes: self-search decodes once (`rl.step.self_search_rollout`);
real search, first-K, entropy-guided and Search-R1's protocol run the multi-turn search inside
the same program (`search.step_rollout`), each host asking the retriever for the rows it holds.
TTRL's group reward scores whole groups on the host that holds them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from ssrl_jax import train_config as tc
from ssrl_jax.data import train_batches
from ssrl_jax.rl.rewards import ssrl_reward
from ssrl_jax.rl.scoring import ttrl_reward
from ssrl_jax.rl.step import RolloutFn, StepConfig, make_train_step, self_search_rollout
from ssrl_jax.rl.train_state import TrainState
from ssrl_jax.search import memory
from ssrl_jax.sharding import ShardingRules

QABatch = Mapping[str, Sequence[Any]]


@dataclasses.dataclass
class CompiledStep:
    """The run's train step (`rl.step.make_train_step`), compiled ahead of time and fed the
    rows this host's devices hold (`train_batches.step_batch`). `client`: the retriever's
    client when the rollout searches (its counters are logged after each step)."""

    train_step: Any
    prompts: train_batches.PromptTable
    pad_id: int
    max_golds: int
    max_gold_bytes: int
    mesh: jax.sharding.Mesh
    rules: ShardingRules
    client: Any = None
    compile_message: str = ""

    def _batch(self, qa: QABatch) -> dict[str, jax.Array]:
        return train_batches.step_batch(qa, self.prompts, pad_id=self.pad_id,
                                        max_golds=self.max_golds,
                                        max_gold_bytes=self.max_gold_bytes, mesh=self.mesh,
                                        rules=self.rules)

    def abstract_batch(self, num_prompts: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes, dtypes and shardings of a step's batch of `num_prompts` prompts."""
        def rows(dtype, *shape):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=self.rules.sharding(
                ("batch",) + (None,) * (len(shape) - 1), shape, self.mesh))

        ids = (num_prompts, self.prompts.length)
        return {"prompt_ids": rows(jnp.int32, *ids), "prompt_valid": rows(jnp.bool_, *ids),
                "golds": rows(jnp.uint8, num_prompts, self.max_golds, self.max_gold_bytes)}

    def compile(self, state: TrainState, num_prompts: int) -> Any:
        """Compiles the step for batches of `num_prompts` prompts (before any data is read);
        returns the compiled program, which the steps then run."""
        start = time.perf_counter()
        key = jax.random.split(jax.random.key(0))[0]
        with jax.set_mesh(self.mesh):
            self.train_step = self.train_step.lower(state, self.abstract_batch(num_prompts),
                                                    key).compile()
        self.compile_message = f"compiled the train step in {time.perf_counter() - start:.1f} s"
        return self.train_step

    def prepare(self, state: TrainState, qa: QABatch, key: jax.Array) -> str:
        if not self.compile_message:
            self.compile(state, len(qa["question"]))
        return self.compile_message

    def __call__(self, state: TrainState, qa: QABatch, key: jax.Array
                 ) -> tuple[TrainState, dict[str, Any]]:
        state, metrics = self.train_step(state, self._batch(qa), key)
        metrics = jax.device_get(metrics)
        if self.client is not None:
            from ssrl_jax.search.step_rollout import client_metrics

            metrics.update(client_metrics(self.client))
        return state, metrics

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


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


def rollout_state_shape(rollout_fn: RolloutFn, graphdef: nnx.GraphDef, state: TrainState, *,
                        rows: int, prompt_len: int, mesh: jax.sharding.Mesh) -> Any:
    """The abstract `DecodeState` the step's rollout builds for `rows` responses."""
    def rollout(params):
        keys = jax.random.split(jax.random.key(0), rows)
        return rollout_fn(nnx.merge(graphdef, params), jnp.zeros((rows, prompt_len), jnp.int32),
                          jnp.ones((rows, prompt_len), bool), keys)[0]

    with jax.set_mesh(mesh):
        return jax.eval_shape(rollout, state.params)


def check_memory(compiled: Any, decode_state: Any, config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh) -> memory.MemoryPlan | None:
    """Refuses (ConfigFieldError naming grpo.num_micro_batches) a compiled step that needs more
    memory than is free (`search/memory.py`); None when XLA gives no buffer sizes."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    plan = memory.plan_of_step(stats, decode_state, micro_batches=config.grpo.num_micro_batches,
                               mini_batches=config.grpo.num_mini_batches, mesh=mesh)
    available, where = memory.available_memory(list(mesh.devices.flat))
    try:
        memory.check_plan(plan, available=available, where=where,
                          rows_per_mini_batch=plan.rows // config.grpo.num_mini_batches)
    except memory.MemoryPlanError as error:
        raise tc.ConfigFieldError(str(error)) from error
    return plan


def make_step(config: ml_collections.ConfigDict, *, graphdef: nnx.GraphDef, state: TrainState,
              optimizer: optax.GradientTransformation, token_bytes: Sequence[bytes],
              tokenizer: Any, eos_ids: tuple[int, ...], pad_id: int,
              prompts: train_batches.PromptTable, mesh: jax.sharding.Mesh,
              rules: ShardingRules) -> CompiledStep:
    """The run's train step, compiled, its memory checked: a step that cannot fit is refused
    before the workdir is touched."""
    step_config = StepConfig.from_config(config, eos_ids=eos_ids, pad_id=pad_id)
    g = config.grpo
    if g.reward == "ttrl":
        reward_fn = ttrl_reward(step_config.group_size, g.format_weight, g.format_rule)
    else:
        reward_fn = functools.partial(ssrl_reward, format_weight=g.format_weight,
                                      format_rule=g.format_rule)
    client = search_client(config)
    rollout_fn = self_search_rollout(step_config, token_bytes)
    if client is not None:
        from ssrl_jax.search.rollout import SearchPolicy
        from ssrl_jax.search.step_rollout import search_step_rollout

        rollout_fn = search_step_rollout(step_config, policy=SearchPolicy.from_config(config),
                                         client=client, tokenizer=tokenizer,
                                         token_bytes=token_bytes, rules=rules)
    train_step = make_train_step(graphdef, step_config, token_bytes=token_bytes,
                                 reward_fn=reward_fn, optimizer=optimizer, rules=rules,
                                 state_sharding=jax.tree.map(lambda x: x.sharding, state),
                                 rollout_fn=rollout_fn, group_reward=g.reward == "ttrl")
    step = CompiledStep(train_step, prompts, pad_id, config.data.max_golds,
                        config.data.max_gold_bytes, mesh, rules, client=client)
    try:
        compiled = step.compile(state, config.batch_size)
        check_memory(compiled, rollout_state_shape(
            rollout_fn, graphdef, state, rows=config.batch_size * step_config.group_size,
            prompt_len=prompts.length, mesh=mesh), config, mesh)
    except ValueError as error:  # e.g. a group reward whose groups the mesh would split
        step.close()
        if isinstance(error, tc.ConfigFieldError):
            raise
        raise tc.ConfigFieldError(f"config.batch_size={config.batch_size} / config.mesh="
                                  f"{dict(config.mesh)}: {error}") from error
    except BaseException:
        step.close()
        raise
    return step
