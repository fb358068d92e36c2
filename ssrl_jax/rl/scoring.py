"""String-level scoring of sampled responses, called from inside the jitted step.

Gold answers travel through the step as fixed-size byte arrays (so a batch is
plain arrays and every host feeds its own rows); the host function decodes the
response bytes, applies the reward and builds the loss mask. The callback is
placed per shard with `shard_map` over every mesh axis that divides the batch, so on
a multi-host mesh each response is scored once, by the host that holds it, and the
step stays one program.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from ssrl_jax.data.golds import decode_golds
from ssrl_jax.rl import rewards
from ssrl_jax.rl.masks import loss_mask
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.sharding import ShardingRules

# (response text, gold answers) -> RewardParts
RewardFn = Callable[[str, Sequence[str]], rewards.RewardParts]
SCORE_NAMES = ("reward", "exact_match", "format_score", "f1")


def response_text(tokens: np.ndarray, sources: np.ndarray, token_bytes: Sequence[bytes]) -> str:
    """The text of one row's response (policy-written and injected tokens). tokens, sources: [S]."""
    keep = (sources == TokenSource.POLICY) | (sources == TokenSource.INJECTED)
    return b"".join(token_bytes[t] for t in tokens[keep]).decode("utf-8", errors="replace")


def score_rows(tokens: np.ndarray, sources: np.ndarray, golds: np.ndarray, *,
               token_bytes: Sequence[bytes], reward_fn: RewardFn, mask_information: bool,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Host scoring of a shard of responses.

    tokens, sources: [N, S]; golds: uint8 [N, G, L] -> (scores fp32 [N, len(SCORE_NAMES)],
    loss mask fp32 [N, S]).
    """
    tokens, sources, golds = np.asarray(tokens), np.asarray(sources), np.asarray(golds)
    scores = np.zeros((tokens.shape[0], len(SCORE_NAMES)), np.float32)
    for row in range(tokens.shape[0]):
        parts = reward_fn(response_text(tokens[row], sources[row], token_bytes),
                          decode_golds(golds[row]))
        scores[row] = [getattr(parts, name) for name in SCORE_NAMES]
    mask = loss_mask(tokens, sources, token_bytes, mask_information)
    return scores, mask


def score_on_host(tokens: jax.Array, sources: jax.Array, golds: jax.Array, *,
                  token_bytes: Sequence[bytes], reward_fn: RewardFn, mask_information: bool,
                  rules: ShardingRules) -> tuple[jax.Array, jax.Array]:
    """`score_rows` as a callback inside a jitted program, one call per batch shard."""
    n = tokens.shape[0]

    def host(tok, src, gold):
        return score_rows(tok, src, gold, token_bytes=token_bytes, reward_fn=reward_fn,
                          mask_information=mask_information)

    def callback(tok, src, gold):
        shapes = (jax.ShapeDtypeStruct((tok.shape[0], len(SCORE_NAMES)), jnp.float32),
                  jax.ShapeDtypeStruct(tok.shape, jnp.float32))
        return jax.pure_callback(host, shapes, tok, src, gold)

    spec = scoring_spec(n, jax.sharding.get_abstract_mesh(), rules)
    if spec is None:
        return callback(tokens, sources, golds)
    rows, rows3 = PartitionSpec(spec, None), PartitionSpec(spec, None, None)
    return jax.shard_map(callback, in_specs=(rows, rows, rows3), out_specs=(rows, rows),
                         check_vma=False)(tokens, sources, golds)


def scoring_spec(num_rows: int, mesh: jax.sharding.AbstractMesh | jax.sharding.Mesh,
                 rules: ShardingRules | None) -> str | tuple[str, ...] | None:
    """The mesh axes the scoring callback splits `num_rows` responses over.

    The batch's own axes first (so each device scores a slice of what it already holds),
    then every other mesh axis that still divides: rows replicated over `tensor` are
    then scored by one device, hence one host, instead of once per tensor shard.
    None: no mesh, score everything in one call.
    """
    if mesh.empty or rules is None:
        return None
    batch_axes = rules.spec(("batch",), (num_rows,), mesh)[0]
    axes = [] if batch_axes is None else (
        [batch_axes] if isinstance(batch_axes, str) else list(batch_axes))
    size = math.prod(mesh.shape[a] for a in axes)
    for axis in mesh.axis_names:
        if axis not in axes and mesh.shape[axis] > 1 and num_rows % (size * mesh.shape[axis]) == 0:
            axes.append(axis)
            size *= mesh.shape[axis]
    return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


def score_group_rows(tokens: np.ndarray, sources: np.ndarray, golds: Sequence[Sequence[str]], *,
                     token_bytes: Sequence[bytes], reward: str, group_size: int,
                     format_weight: float, mask_information: bool, format_rule: str = "ssrl"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host scoring of N = P·n responses, groups consecutive.

    Returns (scores fp32 [N, len(SCORE_NAMES)], loss mask fp32 [N, S], gold EM [N]). With
    ``reward="ttrl"`` the reward, exact_match and f1 are against the group's majority answer
    (no golds used); gold EM is always against the golds (for monitoring).
    """
    texts = [response_text(tokens[i], sources[i], token_bytes) for i in range(len(tokens))]
    if reward == "ttrl":
        parts = rewards.ttrl_rewards(texts, format_weight, group_size=group_size,
                                     format_rule=format_rule)
    else:
        parts = [rewards.ssrl_reward(t, g, format_weight, format_rule)
                 for t, g in zip(texts, golds)]
    scores = np.array([[getattr(p, name) for name in SCORE_NAMES] for p in parts], np.float32)
    gold_em = np.array([rewards.exact_match(rewards.extract_answer(t), g) if g else 0.0
                        for t, g in zip(texts, golds)], np.float32)
    return scores, loss_mask(tokens, sources, token_bytes, mask_information), gold_em
