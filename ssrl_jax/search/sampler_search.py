"""The compiled search rollout for a `Sampler`'s model, called on token-id prompts.

    search = SamplerSearch(sampler, policy=policy, client=client, encode=encode,
                           max_new_tokens=512, sampling=sampling, stop_strings=("</answer>",))
    out = search(prompts, keys=keys)   # SearchRollout: trajectories, counts, per-row queries

Evaluation's rollout (`eval/sim2real.py`): the same program as the train step's
(`compiled_rollout.make_compiled_search`), jitted once per prompt bucket and batch size, with
the sampler's buckets, EOS / pad ids, layer loop, KV windows and mesh. Each row's searches
come back as `QueryRecord`s, collected on the host from the program's callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from ssrl_jax.sampler.sampler import Sampler, row_keys
from ssrl_jax.sampler.sampling import SamplingConfig
from ssrl_jax.search.compiled_rollout import QueryLog, compiled_result, make_compiled_search
from ssrl_jax.search.rollout import SearchPolicy, SearchRollout

__all__ = ["SamplerSearch"]


class SamplerSearch:
    """`search_rollout`'s turns as one compiled program per call (module docstring).

    sampler: a `Sampler` built with token texts (tokenizer= or token_bytes=); policy, client,
    encode, max_new_tokens, sampling, stop_strings: as `search_rollout`'s (client may be None
    in ``self`` mode). The client and policy are baked into the program.
    """

    def __init__(self, sampler: Sampler, *, policy: SearchPolicy, client: Any,
                 encode: Callable[[str], list[int]], max_new_tokens: int,
                 sampling: SamplingConfig, stop_strings: Sequence[str] = ()):
        if sampler.token_bytes is None:
            raise ValueError("SamplerSearch needs a Sampler built with tokenizer= or "
                             "token_bytes=")
        self.sampler = sampler
        self._log = QueryLog()
        program = make_compiled_search(
            policy=policy, client=client, encode=encode, token_bytes=sampler.token_bytes,
            eos_ids=sampler.eos_ids, pad_id=sampler.pad_id, max_new_tokens=max_new_tokens,
            sampling=sampling, stop_strings=stop_strings, inject_buckets=sampler.inject_buckets,
            layer_loop=sampler.layer_loop, kv_windows_count=sampler.kv_windows,
            rules=sampler.rules, on_queries=self._log.add)
        graphdef = sampler.graphdef
        self._run = jax.jit(lambda params, ids, valid, keys:
                            program(nnx.merge(graphdef, params), ids, valid, keys))

    def __call__(self, prompts: Sequence[Sequence[int]], *, keys: jax.Array | None = None,
                 seed: int = 0) -> SearchRollout:
        """prompts: N non-empty token-id lists; keys: per-row PRNG keys [N] (default
        `row_keys(seed, N)`). The state has `rollout_cache_len`'s slots."""
        sampler = self.sampler
        ids, valid = sampler.pad_prompts(prompts)
        keys = row_keys(seed, len(prompts)) if keys is None else keys
        self._log.start(len(prompts))
        with sampler.mesh_context():
            state, counters = self._run(sampler.params, sampler.place_batch(ids),
                                        sampler.place_batch(valid), sampler.place_batch(keys))
            # Every callback has run once the outputs are ready: only then is the log complete.
            state, counters = jax.block_until_ready((state, counters))
        return compiled_result(state, counters, sampler.token_bytes, self._log.take())
