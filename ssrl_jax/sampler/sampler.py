"""The host-side sampler: bucketing, device placement and the two jitted programs.

    sampler = Sampler(model, tokenizer=tokenizer)
    state = sampler.generate(prompts, max_new_tokens=256, stop_strings=("</search>",))
    ...  # ask a retriever for the rows that stopped at </search>
    state = sampler.resume(state, documents, max_new_tokens=256, stop_strings=("</search>",))
    rows = row_outputs(state)

`generate` compiles once per (prompt bucket, batch size, cache length,
sampling config, stop-table size); `resume` once per injection bucket. Budgets
(`max_new_tokens`) are run-time values and never recompile. The model is split
once (`nnx.split`); the jitted programs take its parameters as an argument and
merge them inside.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssrl_jax.models import Transformer
from ssrl_jax.sampler import decode as decode_lib
from ssrl_jax.sampler.buckets import bucket_length, left_pad
from ssrl_jax.sampler.kv_windows import DEFAULT_KV_WINDOWS, kv_windows
from ssrl_jax.sampler.sampling import GREEDY, SamplingConfig
from ssrl_jax.sampler.state import DecodeState
from ssrl_jax.sampler.stop import StopTable, build_stop_table
from ssrl_jax.sampler.token_text import token_bytes as tokenizer_token_bytes
from ssrl_jax.sharding import ShardingRules

INJECT_MIN_BUCKET = 8
# Stop tables and EOS lists are padded to these minimum sizes (then powers of
# two) so that different stop strings or EOS sets reuse one compiled program.
STOP_STATES_MIN_BUCKET = 16
EOS_MIN_BUCKET = 4


_STATIC = ("graphdef", "sampling", "pad_id", "layer_loop", "windows")
# XLA:CPU hands matmuls to YNNPACK fusions by default. A decode step's matmuls are small
# ([rows, hidden] @ [hidden, n], every weight streamed from memory once per token), and in the
# decode loop they ran slower there than with XLA's own CPU kernels: `bench sampler --batch
# 32 --new-tokens 256` decodes 1.15-1.27x faster without them, tokens identical
# (docs/performance.md, 2026-12-06). The sampler's CPU programs are compiled with it off.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _generate_program(params, ids, valid, keys, stop_next, stop_completed, eos_ids,
                      max_new_tokens, *, graphdef, cache_len, sampling, pad_id, layer_loop,
                      windows) -> DecodeState:
    return decode_lib.generate(nnx.merge(graphdef, params), ids, valid, keys,
                               cache_len=cache_len, sampling=sampling, stop_next=stop_next,
                               stop_completed=stop_completed, eos_ids=eos_ids,
                               max_new_tokens=max_new_tokens, pad_id=pad_id,
                               layer_loop=layer_loop, windows=windows)


def _resume_program(params, state, ids, valid, resume_rows, policy_len, retract, end_rows,
                    stop_next, stop_completed, eos_ids, max_new_tokens, *, graphdef, sampling,
                    pad_id, layer_loop, windows) -> DecodeState:
    model = nnx.merge(graphdef, params)
    state = decode_lib.inject(model, state, ids, valid, resume_rows, policy_len, retract,
                              end_rows)
    return decode_lib.decode(model, state, sampling=sampling, stop_next=stop_next,
                             stop_completed=stop_completed, eos_ids=eos_ids,
                             max_new_tokens=max_new_tokens, pad_id=pad_id, layer_loop=layer_loop,
                             windows=windows)


def _jit_programs(compiler_options: dict[str, str] | None = None):
    """(generate, resume), jitted with these XLA compiler options."""
    return (jax.jit(_generate_program, static_argnames=_STATIC + ("cache_len",),
                    compiler_options=compiler_options),
            jax.jit(_resume_program, static_argnames=_STATIC, donate_argnames=("state",),
                    compiler_options=compiler_options))


_generate, _resume = _jit_programs()
_generate_cpu, _resume_cpu = _jit_programs(CPU_COMPILER_OPTIONS)


def compile_count() -> int:
    """Programs compiled so far by all samplers of this process (generate + resume)."""
    return sum(f._cache_size() for f in (_generate, _resume, _generate_cpu, _resume_cpu))


def row_keys(seed: int, batch: int) -> jax.Array:
    """Per-row PRNG keys [B]; row i's key depends only on (seed, i), not on the batch size."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(batch))


def _mesh_of(params: nnx.State) -> jax.sharding.Mesh | None:
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


class Sampler:
    """Batched generation with a preallocated KV cache, stop strings and continuation.

    model: the Transformer (its parameters may be sharded on a mesh; the
      sampler then shards the batch over the rules' `batch` axes).
    tokenizer / token_bytes: needed only for stop strings (the bytes each
      token id adds to the text, see `token_text.py`).
    eos_ids: token ids that end a row; default the model config's.
    pad_id: the id written in unused slots; default the config's pad id or 0.
    prompt_buckets / inject_buckets: allowed padded lengths (default: powers
      of two from 16 / 8).
    layer_loop: decode through per-layer weights and caches (`layer_loop.py`)
      instead of the model's layer scan; default on for the CPU backend only, with an
      unquantized KV cache (`ModelConfig.kv_cache_dtype`).
    kv_windows: decode steps read the filled part of the KV cache in up to this many
      windows (`kv_windows.py`; 1: every step reads the whole cache).
    """

    def __init__(self, model: Transformer, *, tokenizer: Any = None,
                 token_bytes: Sequence[bytes] | None = None,
                 eos_ids: Sequence[int] | None = None, pad_id: int | None = None,
                 prompt_buckets: Sequence[int] | None = None,
                 inject_buckets: Sequence[int] | None = None,
                 mesh: jax.sharding.Mesh | None = None, layer_loop: bool | None = None,
                 kv_windows: int = DEFAULT_KV_WINDOWS):
        self.config = model.config
        self.graphdef, self.params = nnx.split(model)
        self.rules = model.rules or ShardingRules()
        self.mesh = mesh if mesh is not None else _mesh_of(self.params)
        vocab = self.config.vocab_size
        if token_bytes is None and tokenizer is not None:
            token_bytes = tokenizer_token_bytes(tokenizer, vocab)
        if token_bytes is not None and len(token_bytes) != vocab:
            raise ValueError(f"token_bytes has {len(token_bytes)} entries; the model's "
                             f"vocab_size is {vocab}")
        self.token_bytes = token_bytes
        self.eos_ids = tuple(self.config.eos_token_ids if eos_ids is None else eos_ids)
        if pad_id is None:
            pad_id = self.config.pad_token_id
        if pad_id is None and tokenizer is not None:
            pad_id = tokenizer.pad_token_id
        self.pad_id = int(pad_id or 0)
        for name, ids in (("eos_ids", self.eos_ids), ("pad_id", (self.pad_id,))):
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise ValueError(f"{name}: ids {bad} are outside the vocabulary [0, {vocab})")
        platform = (self.mesh.devices.flat[0].platform if self.mesh is not None
                    else jax.default_backend())
        self._generate, self._resume = ((_generate_cpu, _resume_cpu) if platform == "cpu"
                                        else (_generate, _resume))
        if layer_loop is None:
            layer_loop = platform == "cpu" and not model.config.kv_quantized
        self.layer_loop = layer_loop
        if kv_windows < 1:
            raise ValueError(f"kv_windows must be >= 1, got {kv_windows}")
        self.kv_windows = kv_windows
        self.prompt_buckets = prompt_buckets
        self.inject_buckets = inject_buckets
        self._stop_tables: dict[tuple[str, ...], tuple[jax.Array, jax.Array]] = {}

    # ------------------------------------------------------------ public --

    def stop_table(self, stop_strings: Sequence[str]) -> StopTable:
        """The host-side automaton tables for these stop strings."""
        strings = tuple(stop_strings)
        if strings and self.token_bytes is None:
            raise ValueError("stop_strings need token texts: pass tokenizer= or token_bytes= "
                             "to Sampler")
        return build_stop_table(strings, self.token_bytes or [b""] * self.config.vocab_size)

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 cache_len: int | None = None, sampling: SamplingConfig = GREEDY,
                 seed: int = 0, keys: jax.Array | None = None,
                 stop_strings: Sequence[str] = ()) -> DecodeState:
        """Prefills the prompts and decodes up to `max_new_tokens` tokens per row.

        prompts: B lists of token ids (non-empty). cache_len: total slots per
        row (prompt bucket + every later generated or injected token); default
        prompt bucket + max_new_tokens. keys: per-row PRNG keys [B]; default
        `row_keys(seed, B)`.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        ids, valid = self.pad_prompts(prompts)
        prompt_len = ids.shape[1]
        cache_len = prompt_len + max_new_tokens if cache_len is None else cache_len
        if cache_len <= prompt_len:
            raise ValueError(f"cache_len={cache_len} leaves no room after the {prompt_len}-slot "
                             "prompt bucket")
        keys = row_keys(seed, len(prompts)) if keys is None else keys
        stop_next, stop_completed = self._device_stop_table(stop_strings)
        with self.mesh_context():
            return self._generate(self.params, self.place_batch(ids), self.place_batch(valid),
                                  self.place_batch(keys),
                                  stop_next, stop_completed, self._device_eos_ids(),
                                  jnp.int32(max_new_tokens), graphdef=self.graphdef,
                                  cache_len=cache_len, sampling=sampling, pad_id=self.pad_id,
                                  layer_loop=self.layer_loop,
                                  windows=kv_windows(prompt_len, cache_len, self.kv_windows))

    def resume(self, state: DecodeState, injected: Sequence[Sequence[int]], *,
               max_new_tokens: int, resume_rows: Sequence[bool] | None = None,
               sampling: SamplingConfig = GREEDY,
               stop_strings: Sequence[str] = (),
               replace_last: Sequence[Sequence[int] | None] | None = None,
               end_rows: Sequence[bool] | None = None) -> DecodeState:
        """Appends `injected[b]` (label INJECTED) to row b's cache and decodes on.

        Nothing before is recomputed. resume_rows: which rows decode again
        (default: the rows that received tokens); other rows that are done stay
        done. replace_last[b] (None: keep): token ids that take the place of row
        b's last token, labelled POLICY and placed before `injected[b]` (a turn
        cut right after its closing tag; `[]` drops the token); such a row must
        receive at least one token. end_rows: rows still running that stop
        here (default none). `state` is donated: use only the returned state
        afterwards.
        """
        batch = state.tokens.shape[0]
        if len(injected) != batch:
            raise ValueError(f"injected has {len(injected)} rows; the state has {batch}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        replace_last = [None] * batch if replace_last is None else list(replace_last)
        if len(replace_last) != batch:
            raise ValueError(f"replace_last has {len(replace_last)} rows; the state has {batch}")
        retract = np.array([r is not None for r in replace_last], bool)
        policy_len = np.array([len(r or ()) for r in replace_last], np.int32)
        injected = [list(r or ()) + list(row) for r, row in zip(replace_last, injected)]
        empty = [int(b) for b in np.flatnonzero(retract) if not injected[b]]
        if empty:
            raise ValueError(f"replace_last: rows {empty} would lose their last token and "
                             "receive none; give them replacement or injected tokens")
        longest = max(len(row) for row in injected)
        inject_len = 0 if longest == 0 else bucket_length(
            longest, self.inject_buckets, minimum=INJECT_MIN_BUCKET, name="inject_buckets")
        free = state.cache.max_len - np.asarray(jax.device_get(state.cache.lengths)) + retract
        short = [b for b, row in enumerate(injected) if len(row) > free[b]]
        if short:
            b = short[0]
            raise ValueError(f"cache_len={state.cache.max_len} is too small: row {b} has "
                             f"{free[b]} free slots, its injection needs {len(injected[b])}; "
                             "pass a larger cache_len to generate")
        ids, valid = left_pad(injected, inject_len, self.pad_id)
        if resume_rows is None:
            resume_rows = valid.any(axis=1)
        resume_rows = np.asarray(resume_rows, bool)
        if resume_rows.shape != (batch,):
            raise ValueError(f"resume_rows must have one flag per row ({batch}), "
                             f"got shape {resume_rows.shape}")
        end_rows = np.zeros(batch, bool) if end_rows is None else np.asarray(end_rows, bool)
        if end_rows.shape != (batch,):
            raise ValueError(f"end_rows must have one flag per row ({batch}), "
                             f"got shape {end_rows.shape}")
        stop_next, stop_completed = self._device_stop_table(stop_strings)
        with self.mesh_context():
            return self._resume(self.params, state, self.place_batch(ids),
                                self.place_batch(valid), self.place_batch(resume_rows),
                                self.place_batch(policy_len), self.place_batch(retract),
                                self.place_batch(end_rows), stop_next, stop_completed,
                                self._device_eos_ids(), jnp.int32(max_new_tokens),
                                graphdef=self.graphdef, sampling=sampling, pad_id=self.pad_id,
                                layer_loop=self.layer_loop,
                                windows=kv_windows(0, state.cache.max_len, self.kv_windows))

    # ----------------------------------------------------------- helpers --

    def _device_stop_table(self, stop_strings: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        strings = tuple(stop_strings)
        if strings not in self._stop_tables:
            table = self.stop_table(strings)
            states = bucket_length(table.num_states, minimum=STOP_STATES_MIN_BUCKET)
            extra = ((0, states - table.num_states), (0, 0))  # unreachable states
            self._stop_tables[strings] = (
                self._replicated(np.pad(table.next_state, extra, constant_values=0)),
                self._replicated(np.pad(table.completed, extra, constant_values=-1)))
        return self._stop_tables[strings]

    def _device_eos_ids(self) -> jax.Array:
        size = bucket_length(len(self.eos_ids), minimum=EOS_MIN_BUCKET)
        padded = np.full((size,), -1, np.int32)  # -1 never equals a sampled token
        padded[:len(self.eos_ids)] = self.eos_ids
        return self._replicated(padded)

    def pad_prompts(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, valid) [B, L]: the prompts left-padded to their prompt bucket L."""
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompts[{i}] is empty; every row needs at least one token")
        prompt_len = bucket_length(max(len(p) for p in prompts), self.prompt_buckets,
                                   name="prompt_buckets")
        return left_pad(prompts, prompt_len, self.pad_id)

    def mesh_context(self):
        """`jax.set_mesh` of the sampler's mesh (nothing without one), for programs over it."""
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def place_batch(self, x) -> jax.Array:
        """x [B, ...] (host array) on the device(s), rows split as the rules' `batch` axes."""
        if self.mesh is None:
            return jnp.asarray(x)
        axes = ("batch",) + (None,) * (np.ndim(x) - 1)
        return jax.device_put(x, self.rules.sharding(axes, np.shape(x), self.mesh))

    def _replicated(self, x) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return jax.device_put(x, replicated)

