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
from ssrl_jax.protocol import SEARCH_CLOSE
from ssrl_jax.rl.masks import loss_mask
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.sharding import ShardingRules

# (response text, gold answers) -> RewardParts
RewardFn = Callable[[str, Sequence[str]], rewards.RewardParts]
# (response texts of consecutive groups of a shard, their golds) -> RewardParts per response:
# a reward that needs the whole group (TTRL's majority vote).
GroupRewardFn = Callable[[Sequence[str], Sequence[Sequence[str]]], list[rewards.RewardParts]]
# The reward's parts, then two figures watched in every mode: exact match against the golds
# (TTRL's own exact_match is against the group's majority) and the searches each response
# wrote (`</search>` tags in its policy-written text).
REWARD_NAMES = ("reward", "exact_match", "format_score", "f1")
SCORE_NAMES = REWARD_NAMES + ("gold_exact_match", "written_searches")


def response_text(tokens: np.ndarray, sources: np.ndarray, token_bytes: Sequence[bytes]) -> str:
    """The text of one row's response (policy-written and injected tokens). tokens, sources: [S]."""
    keep = (sources == TokenSource.POLICY) | (sources == TokenSource.INJECTED)
    return b"".join(token_bytes[t] for t in tokens[keep]).decode("utf-8", errors="replace")


def written_searches(tokens: np.ndarray, sources: np.ndarray, token_bytes: Sequence[bytes]
                     ) -> int:
    """`</search>` tags in one row's policy-written text. tokens, sources: [S]."""
    policy = tokens[sources == TokenSource.POLICY]
    return b"".join(token_bytes[t] for t in policy).count(SEARCH_CLOSE.encode())


def per_response(reward_fn: RewardFn) -> GroupRewardFn:
    """A per-response reward as a `GroupRewardFn`."""
    return lambda texts, golds: [reward_fn(t, g) for t, g in zip(texts, golds)]


def ttrl_reward(group_size: int, format_weight: float, format_rule: str) -> GroupRewardFn:
    """TTRL: each response scored against its group's majority answer; golds unused."""
    return lambda texts, golds: rewards.ttrl_rewards(texts, format_weight, group_size=group_size,
                                                     format_rule=format_rule)


def score_rows(tokens: np.ndarray, sources: np.ndarray, golds: Sequence[Sequence[str]], *,
               token_bytes: Sequence[bytes], reward_fn: GroupRewardFn, mask_information: bool,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Host scoring of a shard of responses (whole groups, consecutive).

    tokens, sources: [N, S]; golds: N gold lists -> (scores fp32 [N, len(SCORE_NAMES)],
    loss mask fp32 [N, S]).
    """
    tokens, sources = np.asarray(tokens), np.asarray(sources)
    texts = [response_text(tokens[i], sources[i], token_bytes) for i in range(len(tokens))]
    parts = reward_fn(texts, golds)
    scores = np.zeros((tokens.shape[0], len(SCORE_NAMES)), np.float32)
    for row, (text, gold, part) in enumerate(zip(texts, golds, parts)):
        gold_em = rewards.exact_match(rewards.extract_answer(text), gold) if gold else 0.0
        scores[row] = [*(getattr(part, name) for name in REWARD_NAMES), gold_em,
                       written_searches(tokens[row], sources[row], token_bytes)]
    return scores, loss_mask(tokens, sources, token_bytes, mask_information)


def score_on_host(tokens: jax.Array, sources: jax.Array, golds: jax.Array, *,
                  token_bytes: Sequence[bytes], reward_fn: RewardFn | GroupRewardFn,
                  mask_information: bool, rules: ShardingRules, group_size: int = 1,
                  group_reward: bool = False) -> tuple[jax.Array, jax.Array]:
    """`score_rows` as a callback inside a jitted program, one call per batch shard.

    golds: uint8 [N, G, L] (`data.golds`). With `group_reward` (`reward_fn` a
    `GroupRewardFn`), every shard must hold whole groups of `group_size` rows."""
    n = tokens.shape[0]
    group_fn = reward_fn if group_reward else per_response(reward_fn)

    def host(tok, src, gold):
        return score_rows(tok, src, [decode_golds(g) for g in np.asarray(gold)],
                          token_bytes=token_bytes, reward_fn=group_fn,
                          mask_information=mask_information)

    def callback(tok, src, gold):
        shapes = (jax.ShapeDtypeStruct((tok.shape[0], len(SCORE_NAMES)), jnp.float32),
                  jax.ShapeDtypeStruct(tok.shape, jnp.float32))
        return jax.pure_callback(host, shapes, tok, src, gold)

    mesh = jax.sharding.get_abstract_mesh()
    spec = scoring_spec(n, mesh, rules, group_size if group_reward else 1)
    if spec is None:
        return callback(tokens, sources, golds)
    shards = math.prod(mesh.shape[a] for a in ((spec,) if isinstance(spec, str) else spec))
    if group_reward and (n // shards) % group_size:
        raise ValueError(
            f"a group reward needs whole groups on each host: {n} responses in groups of "
            f"{group_size} do not split into {shards} shards of whole groups (mesh "
            f"{dict(mesh.shape)}); change config.batch_size or config.mesh")
    rows, rows3 = PartitionSpec(spec, None), PartitionSpec(spec, None, None)
    return jax.shard_map(callback, in_specs=(rows, rows, rows3), out_specs=(rows, rows),
                         check_vma=False)(tokens, sources, golds)


def scoring_spec(num_rows: int, mesh: jax.sharding.AbstractMesh | jax.sharding.Mesh,
                 rules: ShardingRules | None, group_size: int = 1
                 ) -> str | tuple[str, ...] | None:
    """The mesh axes the scoring callback splits `num_rows` responses over.

    The batch's own axes first (so each device scores a slice of what it already holds),
    then every other mesh axis that still divides into shards of whole groups of
    `group_size` consecutive rows: rows replicated over `tensor` are then scored by one
    device, hence one host, instead of once per tensor shard (a group reward keeps its groups
    whole, and leaves an axis that would split them replicated). None: no mesh, score
    everything in one call.
    """
    if mesh.empty or rules is None:
        return None
    batch_axes = rules.spec(("batch",), (num_rows,), mesh)[0]
    axes = [] if batch_axes is None else (
        [batch_axes] if isinstance(batch_axes, str) else list(batch_axes))
    size = math.prod(mesh.shape[a] for a in axes)
    for axis in mesh.axis_names:
        shards = size * mesh.shape[axis]
        if axis not in axes and mesh.shape[axis] > 1 and num_rows % (shards * group_size) == 0:
            axes.append(axis)
            size = shards
    return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)
