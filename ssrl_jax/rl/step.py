"""The one compiled GRPO train step (self-search mode).

    train_step = make_train_step(graphdef, config, token_bytes=..., reward_fn=...)
    state, metrics = train_step(state, batch, key)

Inside one jitted program, `state` donated: sample n responses per prompt →
score them on the host (per shard) → group advantages → masked clipped loss +
KL to the frozen reference, gradients accumulated over micro-batches in a scan
→ optax update, for every mini-batch and PPO epoch. Shapes: P prompts, n group
size, N = P·n responses, L prompt bucket, S = L + max_new_tokens slots.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssrl_jax.models import Transformer
from ssrl_jax.models.init import logical_axes_of
from ssrl_jax.rl import grpo, length_buckets
from ssrl_jax.rl.logprobs import chunked_token_logprobs
from ssrl_jax.rl.optimizer import optimizer_state_shardings
from ssrl_jax.rl.scoring import SCORE_NAMES, RewardFn, score_on_host
from ssrl_jax.sampler import decode as decode_lib
from ssrl_jax.sampler.kv_windows import DEFAULT_KV_WINDOWS, kv_windows
from ssrl_jax.sampler.sampling import SamplingConfig
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.sampler.stop import build_stop_table
from ssrl_jax.sharding import ShardingRules, constrain


# "decode": the rollout's weights are gathered over fsdp once per step, before the decode
# loop; "train": they keep the training layout (gathered layer by layer at every decode step).
WEIGHT_LAYOUTS = ("decode", "train")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about a train step (SPEC §5 defaults)."""

    group_size: int = 5
    max_new_tokens: int = 512
    sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=1.0)
    stop_strings: tuple[str, ...] = ()
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    num_mini_batches: int = 1
    num_micro_batches: int = 1
    ppo_epochs: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    max_log_ratio: float = grpo.MAX_LOG_RATIO
    kl_coef: float = 0.001
    kl_estimator: grpo.KLEstimator = "low_var_kl"
    # Entropy bonus: loss − entropy_coef · (mean entropy of trained tokens), as verl's
    # actor.entropy_coeff (Search-R1 0.001, SSRL 0).
    entropy_coef: float = 0.0
    aggregation: grpo.Aggregation = "token-mean"
    advantage_estimator: grpo.AdvantageEstimator = "grpo"
    mask_information: bool = True
    logprob_chunk: int = 256
    # Rows of the rollout returned (replicated) under metrics["samples"] for logging.
    sample_rows: int = 0
    # The layout of the rollout's weight copy (`decode_copy`): "decode" or "train".
    weight_layout: str = "decode"
    # Decode steps read the filled part of the KV cache in up to this many windows
    # (`sampler/kv_windows.py`).
    kv_windows: int = DEFAULT_KV_WINDOWS
    # The update runs each micro-batch over the filled slots only, at one of up to this
    # many widths, rows sorted by length first (`rl/length_buckets.py`); 1: all S slots.
    length_buckets: int = DEFAULT_KV_WINDOWS

    def __post_init__(self):
        if not self.eos_ids:
            raise ValueError("StepConfig.eos_ids: at least one end-of-sequence id is needed")
        for name in ("group_size", "num_mini_batches", "num_micro_batches", "ppo_epochs",
                     "max_new_tokens", "logprob_chunk", "kv_windows", "length_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"StepConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.weight_layout not in WEIGHT_LAYOUTS:
            raise ValueError(f"StepConfig.weight_layout={self.weight_layout!r}: must be one of "
                             f"{WEIGHT_LAYOUTS}")
        if self.sample_rows < 0:
            raise ValueError(f"StepConfig.sample_rows must be >= 0, got {self.sample_rows}")
        if not (math.isfinite(self.max_log_ratio) and self.max_log_ratio > 0):
            raise ValueError(f"StepConfig.max_log_ratio must be a finite number > 0, "
                             f"got {self.max_log_ratio}")

    @property
    def single_update(self) -> bool:
        """One optimizer update on the batch: the PPO ratio is exactly 1 (as in the papers)."""
        return self.num_mini_batches == 1 and self.ppo_epochs == 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """What a step carries. `params` are the master weights (`param_dtype`, fp32 in every
    training config) and `opt_state` is shaped and typed like them; `ref_params`, the
    frozen KL reference, is stored in the compute dtype (`dtype`, bf16 on TPU): the model
    casts every weight to that dtype at use, so the reference computes exactly what an
    fp32 copy would, for half the memory."""

    step: jax.Array
    params: nnx.State
    opt_state: Any
    ref_params: nnx.State


def compute_copy(params: Any, dtype: Any) -> Any:
    """A copy of `params` with every floating-point leaf cast to `dtype` (new buffers, same
    shardings). The rollout decodes with this copy of the master weights, made inside the
    step, and the frozen reference is kept as one."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda p: jnp.copy(p).astype(dtype)
                        if jnp.issubdtype(p.dtype, jnp.floating) else jnp.copy(p), params)


def decode_copy(params: nnx.State, dtype: Any, rules: ShardingRules | None) -> nnx.State:
    """`compute_copy` in the decode layout of `rules` (`ShardingRules.decode_layout`: each
    weight replicated over data × fsdp, still split over tensor) when a mesh is set; with
    `rules` None, in the layout of `params`."""
    copy = compute_copy(params, dtype)
    mesh = jax.sharding.get_abstract_mesh()
    if rules is None or mesh.empty:
        return copy
    layout = rules.decode_layout()
    return jax.tree.map(
        lambda v: v.replace(jax.lax.with_sharding_constraint(
            v.get_value(), layout.spec(logical_axes_of(v), v.shape, mesh))),
        copy, is_leaf=lambda x: isinstance(x, nnx.Variable))


def init_train_state(model: Transformer, optimizer: optax.GradientTransformation) -> TrainState:
    """Policy parameters, a frozen copy in the compute dtype as the reference, and optimizer
    state (sharded alike)."""
    params = nnx.state(model, nnx.Param)
    ref_params = compute_copy(params, model.config.dtype)
    opt_state = jax.jit(optimizer.init,
                        out_shardings=optimizer_state_shardings(optimizer, params))(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                       ref_params=ref_params)
    # Scalars (step, Adam's count) go on the parameters' mesh, replicated, so that the
    # state a step returns has the same shardings as the one it was given (no recompile).
    mesh = jax.tree.leaves(params)[0].sharding.mesh
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(
        lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding)
        else jax.device_put(x, replicated), state)


def sequence_logprobs(model: Transformer, tokens: jax.Array, sources: jax.Array, chunk: int,
                      first_scored: int = 1) -> tuple[jax.Array, jax.Array]:
    """Log-prob [N, S] of each slot's token given the slots before it, and entropies [N, S].

    Slots before `first_scored` (>= 1) get 0: with `first_scored` = the prompt length, the
    output projection runs over the response slots only, which is all the loss reads. PAD
    slots are masked out of attention; the positions follow the mask exactly as in sampling.
    """
    if not 1 <= first_scored < tokens.shape[1]:
        raise ValueError(f"first_scored={first_scored} must be in [1, {tokens.shape[1]})")
    hidden = model.hidden_states(tokens, attention_mask=sources != TokenSource.PAD)
    logp, entropy = chunked_token_logprobs(hidden[:, first_scored - 1:-1],
                                           model.output_embedding(), tokens[:, first_scored:],
                                           chunk_size=chunk)
    unscored = jnp.zeros((tokens.shape[0], first_scored), jnp.float32)
    return (jnp.concatenate([unscored, logp], 1), jnp.concatenate([unscored, entropy], 1))


def split_rows(x: jax.Array, chunks: int) -> jax.Array:
    """[N, ...] -> [chunks, N / chunks, ...], chunk c holding rows c, c + chunks, ...

    Strided rather than contiguous: with the rows block-sharded over devices, every
    chunk then takes rows from every device, so each device works on every chunk.
    """
    return x.reshape(-1, chunks, *x.shape[1:]).swapaxes(0, 1)


def merge_rows(x: jax.Array) -> jax.Array:
    """The inverse of `split_rows`: [chunks, N / chunks, ...] -> [N, ...]."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


class StepParts(NamedTuple):
    """The three stages of a train step, each traceable on its own (the benchmark
    times them apart; `make_train_step` composes them into one program).

    rollout(params, batch, key) -> DecodeState of N = P·n responses
    score(rollout_state, batch) -> (scores [N, len(SCORE_NAMES)], loss mask [N, S],
                                    advantages [N])
    learn(state, rollout_state, mask, advantages, key, prompt_len) -> (params, opt_state,
                                                                       metrics)
    `prompt_len` (static: the prompt bucket L) is where responses start; the logits of
    the prompt slots, which carry no loss, are not computed.
    """

    rollout: Callable
    score: Callable
    learn: Callable


def make_step_parts(graphdef: nnx.GraphDef, config: StepConfig, *, token_bytes: Sequence[bytes],
                    reward_fn: RewardFn, optimizer: optax.GradientTransformation,
                    rules: ShardingRules | None = ShardingRules()) -> StepParts:
    """The rollout / score / learn stages of `make_train_step` (arguments as there)."""
    stop = build_stop_table(config.stop_strings, token_bytes)
    stop_next, stop_completed = np.asarray(stop.next_state), np.asarray(stop.completed)
    eos_ids = np.asarray(config.eos_ids, np.int32)
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
        keys = jax.random.split(key, ids.shape[0])
        cache_len = ids.shape[1] + config.max_new_tokens
        state = decode_lib.prefill(model, ids, valid, keys, cache_len)
        return decode_lib.decode(model, state, sampling=config.sampling,
                                 stop_next=jnp.asarray(stop_next),
                                 stop_completed=jnp.asarray(stop_completed),
                                 eos_ids=jnp.asarray(eos_ids),
                                 max_new_tokens=jnp.int32(config.max_new_tokens),
                                 pad_id=config.pad_id,
                                 windows=kv_windows(ids.shape[1], cache_len, config.kv_windows))

    def forward_logprobs(params, tokens, sources, prompt_len):
        return sequence_logprobs(nnx.merge(graphdef, params), tokens, sources,
                                 config.logprob_chunk, first_scored=prompt_len)

    def bucket_widths(prompt_len, slots):
        return kv_windows(prompt_len, slots, config.length_buckets)

    def batched_logprobs(params, tokens, sources, prompt_len):
        """forward_logprobs over the whole batch, one training micro-batch at a time (a
        whole-batch pass would hold every row's attention scores at once), each chunk at
        the narrowest bucket width that holds its tokens."""
        chunks = config.num_mini_batches * config.num_micro_batches
        slots = tokens.shape[1]

        def padded_logprobs(chunk):
            logp = forward_logprobs(params, chunk["tokens"], chunk["sources"], prompt_len)[0]
            return jnp.pad(logp, ((0, 0), (0, slots - logp.shape[1])))

        def one_chunk(ts):
            chunk = {"tokens": ts[0], "sources": ts[1]}
            return length_buckets.run_at_width(
                padded_logprobs, bucket_widths(prompt_len, slots),
                jnp.max(length_buckets.row_extents(ts[1])), chunk)

        logp = jax.lax.map(one_chunk, (split_rows(tokens, chunks), split_rows(sources, chunks)))
        return merge_rows(logp)

    def micro_loss(params, micro, totals, prompt_len):
        logp, entropy = forward_logprobs(params, micro["tokens"], micro["sources"], prompt_len)
        old = jax.lax.stop_gradient(logp) if config.single_update else micro["old_logp"]
        loss, metrics = grpo.grpo_loss(
            logp, old, micro["ref_logp"], micro["advantages"], micro["mask"],
            clip_low=config.clip_low, clip_high=config.clip_high, dual_clip=config.dual_clip,
            max_log_ratio=config.max_log_ratio, kl_coef=config.kl_coef,
            kl_estimator=config.kl_estimator, aggregation=config.aggregation,
            total_tokens=totals[0], total_sequences=totals[1])
        metrics["entropy"] = grpo.aggregate(entropy, micro["mask"], "token-mean",
                                            total_tokens=totals[0])
        if config.entropy_coef:
            loss = loss - config.entropy_coef * grpo.aggregate(
                entropy, micro["mask"], config.aggregation, total_tokens=totals[0],
                total_sequences=totals[1])
            metrics["loss"] = loss
        return loss, metrics

    def update(params, opt_state, mini, prompt_len):
        """One optimizer update on a mini-batch, gradients summed over micro-batches.

        Gradients are accumulated, clipped and fed to AdamW in fp32, never rounded; the
        new optimizer state is stored back in the dtypes it came in (those of the master
        weights, so a step returns the state it was compiled for)."""
        totals = (mini["mask"].sum(), jnp.float32(mini["mask"].shape[0]))
        micro = jax.tree.map(lambda x: split_rows(x, config.num_micro_batches), mini)
        grad_fn = jax.value_and_grad(
            lambda p, one, totals: micro_loss(p, one, totals, prompt_len), has_aux=True)
        widths = bucket_widths(prompt_len, mini["tokens"].shape[1])

        def accumulate(carry, one):
            grads, metrics = carry
            extent = jnp.max(length_buckets.row_extents(one["sources"]))
            (_, m), g = length_buckets.run_at_width(lambda c: grad_fn(params, c, totals),
                                                    widths, extent, one)
            return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, metrics, m)), None

        zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        zero_metrics = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro),
                                                      totals)[0][1])
        zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_metrics)
        (grads, metrics), _ = jax.lax.scan(accumulate, (zero_grads, zero_metrics), micro)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_opt_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_opt_state,
                                     opt_state)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return optax.apply_updates(params, updates), new_opt_state, metrics

    def score(rollout_state, batch):
        tokens, sources = rollout_state.tokens, rollout_state.sources
        golds = jnp.repeat(batch["golds"], n, axis=0)
        scores, mask = score_on_host(tokens, sources, golds, token_bytes=token_bytes,
                                     reward_fn=reward_fn, mask_information=config.mask_information,
                                     rules=rules)
        scores = constrain(scores, ("batch", None), rules)
        rewards = scores[:, SCORE_NAMES.index("reward")]
        return scores, mask, grpo.group_advantages(rewards, n, config.advantage_estimator)

    def learn(state, rollout_state, mask, advantages, key, prompt_len: int):
        tokens, sources = rollout_state.tokens, rollout_state.sources
        data = {"tokens": tokens, "sources": sources, "mask": mask, "advantages": advantages}
        bucketed = len(bucket_widths(prompt_len, tokens.shape[1])) > 1

        def all_logprobs(params):
            if not bucketed:
                return batched_logprobs(params, tokens, sources, prompt_len)
            # Rows of similar length share chunks; the result comes back in row order.
            chunks = config.num_mini_batches * config.num_micro_batches
            by_length = length_buckets.chunk_order(length_buckets.row_extents(sources), chunks)
            logp = batched_logprobs(params, tokens[by_length], sources[by_length], prompt_len)
            return logp[jnp.argsort(by_length)]

        data["ref_logp"] = (all_logprobs(state.ref_params) if config.kl_coef
                            else jnp.zeros(tokens.shape, jnp.float32))
        if not config.single_update:
            data["old_logp"] = all_logprobs(state.params)

        params, opt_state = state.params, state.opt_state
        num = tokens.shape[0]
        update_metrics = []
        for epoch in range(config.ppo_epochs):
            order = (jnp.arange(num) if config.single_update else
                     jax.random.permutation(jax.random.fold_in(key, epoch), num))
            for rows in jnp.split(order, config.num_mini_batches):
                if bucketed:  # a permutation inside the mini-batch: its loss is a sum
                    rows = rows[length_buckets.chunk_order(
                        length_buckets.row_extents(data["sources"][rows]),
                        config.num_micro_batches)]
                mini = jax.tree.map(lambda x: x[rows], data)
                params, opt_state, m = update(params, opt_state, mini, prompt_len)
                update_metrics.append(m)
        metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *update_metrics)
        return params, opt_state, metrics

    return StepParts(rollout=rollout, score=score, learn=learn)


def make_train_step(graphdef: nnx.GraphDef, config: StepConfig, *, token_bytes: Sequence[bytes],
                    reward_fn: RewardFn, optimizer: optax.GradientTransformation,
                    rules: ShardingRules | None = ShardingRules(), state_sharding: Any = None):
    """Builds the jitted `train_step(state, batch, key) -> (state, metrics)`.

    `state_sharding` (the shardings of the `TrainState` the step will be given, e.g.
    `jax.tree.map(lambda x: x.sharding, state)`) pins the returned state to the same
    layout, so that step after step the program is called with what it was compiled
    for; metrics are then returned replicated.

    batch: {"prompt_ids": int32 [P, L] left-padded, "prompt_valid": bool [P, L],
    "golds": uint8 [P, G, B] (see `data.golds.encode_golds`)}. `state` is donated.
    metrics: scalars, plus with `config.sample_rows = k > 0` a dict `samples` of one
    rollout from each of the first k prompts ({"tokens", "sources"}: [k, S],
    "reward": [k]), replicated so every host can read them.
    """
    parts = make_step_parts(graphdef, config, token_bytes=token_bytes, reward_fn=reward_fn,
                            optimizer=optimizer, rules=rules)
    n = config.group_size

    def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array):
        sample_key, shuffle_key = jax.random.split(key)
        rollout_state = parts.rollout(state.params, batch, sample_key)
        scores, mask, advantages = parts.score(rollout_state, batch)
        params, opt_state, metrics = parts.learn(state, rollout_state, mask, advantages,
                                                 shuffle_key, batch["prompt_ids"].shape[1])

        tokens, sources = rollout_state.tokens, rollout_state.sources
        policy = sources == TokenSource.POLICY
        for i, name in enumerate(SCORE_NAMES):
            metrics[name] = scores[:, i].mean()
        metrics["response_length"] = policy.sum(axis=1).mean()
        metrics["masked_share"] = 1.0 - mask.sum() / jnp.maximum(policy.sum(), 1)
        metrics["trained_tokens"] = mask.sum()
        metrics["decode_steps"] = rollout_state.num_steps
        if config.sample_rows:
            # One response from each of the first prompts, so the samples show different questions.
            k = config.sample_rows
            rewards = scores[:, SCORE_NAMES.index("reward")]
            metrics["samples"] = jax.tree.map(
                lambda x: constrain(x[::n][:k], (None,) * x.ndim, rules),
                {"tokens": tokens, "sources": sources, "reward": rewards})
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                               ref_params=state.ref_params)
        return new_state, metrics

    if state_sharding is None:
        return jax.jit(train_step, donate_argnums=0)
    return jax.jit(train_step, donate_argnums=0, out_shardings=(state_sharding, None))
