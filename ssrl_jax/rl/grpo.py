"""GRPO as SSRL and Search-R1 use it (SPEC §5): advantages, clipped loss, KL, aggregation.

Pure functions over arrays. Shapes: N responses (= prompts × group size n),
T response tokens; `mask` [N, T] is 1.0 on tokens that are trained on.
"""

from __future__ import annotations

from typing import Callable, Literal, get_args

import jax
import jax.numpy as jnp

AdvantageEstimator = Literal["grpo", "grpo_no_std", "rloo"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
KLEstimator = Literal["k1", "k2", "k3", "low_var_kl"]
ADVANTAGE_ESTIMATORS: tuple[str, ...] = get_args(AdvantageEstimator)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)
KL_CLAMP = 10.0
# |log π/π_ref| is clamped here before the exp of k3 / low_var_kl (as verl does).
KL_LOG_RATIO_CLAMP = 20.0
# Default bound on |log π/π_old| before the PPO ratio's exp (verl and Tunix use ±20):
# exp(20) ≈ 4.9e8 is finite in fp32, where exp(89) is already inf.
MAX_LOG_RATIO = 20.0


def group_advantages(rewards: jax.Array, group_size: int, estimator: AdvantageEstimator = "grpo",
                     eps: float = 1e-6) -> jax.Array:
    """Per-response advantages from rewards of consecutive groups.

    rewards: [N] with N = groups × group_size, each group's responses adjacent -> [N].
    grpo: (r − mean) / (std + eps), std with Bessel's correction (ddof=1);
    grpo_no_std: r − mean; rloo: r − mean of the other responses in the group.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 for group advantages, got {group_size}")
    grouped = rewards.reshape(-1, group_size).astype(jnp.float32)
    mean = grouped.mean(axis=1, keepdims=True)
    if estimator == "grpo":
        std = grouped.std(axis=1, keepdims=True, ddof=1)
        advantages = (grouped - mean) / (std + eps)
    elif estimator == "grpo_no_std":
        advantages = grouped - mean
    elif estimator == "rloo":
        advantages = (grouped - mean) * group_size / (group_size - 1)
    else:
        raise ValueError(f"advantage estimator {estimator!r} is not one of "
                         f"{', '.join(ADVANTAGE_ESTIMATORS)}")
    return advantages.reshape(-1)


def clipped_policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                        clip_low: float = 0.2, clip_high: float = 0.2,
                        dual_clip: float | None = None,
                        max_log_ratio: float = MAX_LOG_RATIO) -> tuple[jax.Array, jax.Array]:
    """Token-level PPO-clip loss.

    logp, old_logp: [N, T]; advantages: [N] (one scalar per response) ->
    (loss [N, T], clipped [N, T] float: 1 where the clipped branch was taken).
    The log-ratio logp − old_logp is clamped to ±`max_log_ratio` before its exp, so the
    loss and its gradient stay finite for any finite log-probs (a token past the bound
    gets no gradient through the ratio). With `dual_clip` = c > 1, a negative-advantage
    token's loss is capped at −A·c.
    """
    advantage = advantages[:, None]
    ratio = jnp.exp(jnp.clip(logp - old_logp, -max_log_ratio, max_log_ratio))
    unclipped = -advantage * ratio
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = -advantage * clipped_ratio
    loss = jnp.maximum(unclipped, clipped)
    took_clip = (clipped > unclipped).astype(jnp.float32)
    if dual_clip is not None:
        capped = jnp.minimum(loss, -advantage * dual_clip)
        took_clip = jnp.where((advantage < 0) & (capped < loss), 1.0, took_clip)
        loss = jnp.where(advantage < 0, capped, loss)
    return loss, took_clip


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: KLEstimator = "low_var_kl") -> jax.Array:
    """Per-token KL(policy ‖ reference) estimate from sampled tokens' log-probs.

    logp, ref_logp: [N, T] -> [N, T]. k1 = logp − ref; k2 = ½(logp − ref)²;
    k3 / low_var_kl = exp(ref − logp) − (ref − logp) − 1 with ref − logp clamped to
    [−20, 20] first (finite value and gradient), the result clamped to [−10, 10].
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    if estimator in ("k3", "low_var_kl"):
        log_ratio = jnp.clip(log_ratio, -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
        kl = jnp.exp(-log_ratio) + log_ratio - 1.0
        return jnp.clip(kl, -KL_CLAMP, KL_CLAMP)
    raise ValueError(f"KL estimator {estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")


def aggregate(per_token: jax.Array, mask: jax.Array, mode: Aggregation = "token-mean",
              total_tokens: jax.Array | None = None, total_sequences: jax.Array | None = None,
              ) -> jax.Array:
    """Reduces a per-token quantity [N, T] over a (mini-)batch to a scalar.

    token-mean: Σ(x·m) / Σm over all tokens; seq-mean-token-mean: mean over
    responses of each response's token mean; seq-mean-token-sum: mean over
    responses of each response's token sum. When this micro-batch is one slice
    of a larger mini-batch, pass the mini-batch's `total_tokens` (Σm) and
    `total_sequences` so that summing the micro-batch results gives the
    mini-batch value exactly. Responses with no unmasked token count as 0.
    """
    mask = mask.astype(per_token.dtype)
    masked = per_token * mask
    if total_sequences is None:
        total_sequences = per_token.shape[0]
    if mode == "token-mean":
        if total_tokens is None:
            total_tokens = mask.sum()
        return masked.sum() / jnp.maximum(total_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        return per_seq.sum() / total_sequences
    if mode == "seq-mean-token-sum":
        return masked.sum(axis=1).sum() / total_sequences
    raise ValueError(f"loss aggregation {mode!r} is not one of {', '.join(AGGREGATIONS)}")


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array | None,
              advantages: jax.Array, mask: jax.Array, *, clip_low: float = 0.2,
              clip_high: float = 0.2, dual_clip: float | None = None,
              max_log_ratio: float = MAX_LOG_RATIO, kl_coef: float = 0.001,
              kl_estimator: KLEstimator = "low_var_kl", aggregation: Aggregation = "token-mean",
              total_tokens: jax.Array | None = None, total_sequences: jax.Array | None = None,
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked clipped policy loss plus kl_coef × KL to the reference (a loss term).

    logp, old_logp, ref_logp, mask: [N, T]; advantages: [N] -> (scalar loss,
    metrics of this (micro-)batch, each aggregated like the loss). `max_log_ratio`
    bounds |logp − old_logp| before the ratio's exp (`clipped_policy_loss`).
    """
    reduce: Callable[[jax.Array], jax.Array] = lambda x: aggregate(  # noqa: E731
        x, mask, aggregation, total_tokens, total_sequences)
    token_loss, took_clip = clipped_policy_loss(logp, old_logp, advantages, clip_low, clip_high,
                                                dual_clip, max_log_ratio)
    policy_loss = reduce(token_loss)
    metrics = {"policy_loss": policy_loss, "clip_fraction": reduce(took_clip)}
    loss = policy_loss
    if ref_logp is not None and kl_coef:
        kl = reduce(kl_penalty(logp, ref_logp, kl_estimator))
        loss = loss + kl_coef * kl
        metrics["kl"] = kl
    metrics["loss"] = loss
    return loss, metrics
