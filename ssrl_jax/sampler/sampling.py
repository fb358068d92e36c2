"""Choosing the next token from logits: suppressed ids, greedy, temperature, top-k, top-p.

Pure functions over a batch of rows. Shapes: B rows, V vocabulary, K kept
candidates. Each row draws with its own PRNG key, so a row's sample does not
depend on the other rows of the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssrl_jax.token_ids import parse_token_ids


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. `temperature=0` is greedy; `top_k=0` and `top_p=1` turn those off.

    `suppressed_token_ids` are never picked, greedy or sampled: their logits are
    set to -inf first (transformers' `suppress_tokens`, Tunix's `forbidden_tokens`);
    given as a tuple of ints (or "5,7"). The reported log-probs and entropies stay
    those of the model's own distribution, as with temperature and top-k / top-p.
    The order follows `transformers`: temperature, then top-k, then top-p.
    Hashable, so a jitted sampler compiles once per distinct configuration.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    suppressed_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        try:
            ids = parse_token_ids(self.suppressed_token_ids)
        except ValueError as e:
            raise ValueError(f"suppressed_token_ids: {e}") from None
        object.__setattr__(self, "suppressed_token_ids", ids)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingConfig(temperature=0.0)


def logprob_and_entropy(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-prob of `tokens` and entropy of the full distribution, both untempered, in fp32.

    logits: [B, V], tokens: [B] -> (logprob [B], entropy [B]).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[:, None].astype(jnp.int32), axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return chosen, entropy


def keep_top_p(sorted_logits: jax.Array, top_p: float) -> jax.Array:
    """Masks to -inf the tail of each row beyond cumulative probability `top_p`.

    sorted_logits: [B, K] in descending order -> [B, K]. A candidate is kept
    when the probability mass strictly before it is below `top_p`, so the most
    likely candidate is always kept.
    """
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(mass_before < top_p, sorted_logits, -jnp.inf)


def row_keys_at(keys: jax.Array, positions: jax.Array) -> jax.Array:
    """One fresh key per row: row keys [B] folded with each row's token position [B]."""
    return jax.vmap(jax.random.fold_in)(keys, positions)


def suppress_tokens(logits: jax.Array, token_ids: tuple[int, ...]) -> jax.Array:
    """Sets the logits of `token_ids` to -inf in every row. logits: [B, V] -> [B, V].

    Raises ValueError (at trace time) for an id outside the vocabulary, or when
    nothing would be left to pick.
    """
    vocab = logits.shape[-1]
    if max(token_ids) >= vocab or len(token_ids) >= vocab:
        raise ValueError(f"suppressed_token_ids={token_ids}: ids must be < the vocabulary size "
                         f"{vocab} and leave some token allowed")
    return logits.at[:, jnp.asarray(token_ids, jnp.int32)].set(-jnp.inf)


def sample_tokens(logits: jax.Array, keys: jax.Array, config: SamplingConfig) -> jax.Array:
    """Draws one token per row. logits: [B, V] fp32, keys: [B] PRNG keys -> tokens [B] int32."""
    if config.suppressed_token_ids:
        logits = suppress_tokens(logits, config.suppressed_token_ids)
    if config.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / config.temperature
    if config.top_k == 0 and config.top_p == 1.0:
        return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
    k = min(config.top_k or scaled.shape[-1], scaled.shape[-1])
    candidates, candidate_ids = jax.lax.top_k(scaled, k)  # [B, K], descending
    if config.top_p < 1.0:
        candidates = keep_top_p(candidates, config.top_p)
    choice = jax.vmap(jax.random.categorical)(keys, candidates)
    return jnp.take_along_axis(candidate_ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
