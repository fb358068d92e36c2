"""The train step's rollout with a real retriever: the compiled multi-turn search
(`compiled_rollout.make_compiled_search`) as an `rl.step.RolloutFn`, so that real search,
first-K and entropy-guided modes (and Search-R1's protocol) run inside the one compiled step,
each host serving the searches of the rows it holds."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


from ssrl_jax.rl.step_config import StepConfig
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.search.client import COUNTERS
from ssrl_jax.search.compiled_rollout import make_compiled_search
from ssrl_jax.search.rollout import SearchPolicy
from ssrl_jax.sharding import ShardingRules


def search_step_rollout(config: StepConfig, *, policy: SearchPolicy, client: Any, tokenizer: Any,
                        token_bytes: Sequence[bytes], rules: ShardingRules | None):
    """rollout(model, ids, valid, keys) -> (DecodeState, metrics): per-row search counts
    (real, failed, dropped, invalid actions; `counted_searches`, what the step turns into
    self-written searches), injected tokens, the turns and decode steps of the rollout."""
    program = make_compiled_search(
        policy=policy, client=client,
        encode=functools.partial(tokenizer.encode, add_special_tokens=False),
        token_bytes=token_bytes, eos_ids=config.eos_ids, pad_id=config.pad_id,
        max_new_tokens=config.max_new_tokens, sampling=config.sampling,
        kv_windows_count=config.kv_windows, rules=rules)

    def rollout(model, ids, valid, keys):
        state, counts = program(model, ids, valid, keys)
        return state, {
            "decode_steps": counts.decode_steps, "search_turns": counts.turns,
            "real_searches": counts.real, "failed_searches": counts.failed,
            "dropped_searches": counts.dropped, "invalid_actions": counts.invalid,
            "counted_searches": counts.real + counts.failed + counts.dropped,
            "injected_tokens": (state.sources == TokenSource.INJECTED).sum(axis=1)}

    return rollout


def client_metrics(client: Any) -> dict[str, float]:
    """The client's counters since the last call (`search_queries`, `search_cache_hits`, ...),
    read and reset after each step, summed over the hosts (each host's client asks for the
    rows it holds). Every host calls it: on many hosts it is a collective."""
    counts = client.reset_counters()
    values = np.array([counts[name] for name in COUNTERS], np.float64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        values = np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)
    return {f"search_{name}": float(v) for name, v in zip(COUNTERS, values)}


