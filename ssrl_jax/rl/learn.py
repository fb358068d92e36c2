"""The GRPO update of a batch of scored trajectories, traceable:

    learn = make_learn(graphdef, config, optimizer=optimizer)
    params, opt_state, metrics = learn(state, trajectories, mask, advantages, key, prompt_len)

Reference (and, with several updates per batch, old) log-probs over the whole batch, then for
every PPO epoch and mini-batch: masked clipped loss + KL to the frozen reference, gradients
summed over length-bucketed micro-batches in a scan, clipped AdamW update. Shapes: N rows,
S slots, `prompt_len` (static) the slot where responses start.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssrl_jax.models import Transformer
from ssrl_jax.rl import grpo, length_buckets
from ssrl_jax.rl.logprobs import chunked_token_logprobs
from ssrl_jax.rl.step_config import StepConfig
from ssrl_jax.sampler.kv_windows import kv_windows
from ssrl_jax.sampler.sources import TokenSource


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


def make_learn(graphdef: nnx.GraphDef, config: StepConfig, *,
               optimizer: optax.GradientTransformation):
    """learn(state, trajectories, mask [N, S], advantages [N], key, prompt_len) ->
    (params, opt_state, metrics); `trajectories` needs `tokens` and `sources` [N, S]."""

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

    def learn(state, trajectories, mask, advantages, key, prompt_len: int):
        tokens, sources = trajectories.tokens, trajectories.sources
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

    return learn
