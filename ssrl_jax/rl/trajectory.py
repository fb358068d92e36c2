"""The trajectories every rollout returns, whatever wrote them (one compiled decode, or the
host's search loop): what scoring, the loss and the step's metrics read.

Shapes: N rows, S slots. Slot j of a row holds the token at cache slot j of its rollout,
labelled by `TokenSource` (PROMPT, POLICY, INJECTED, PAD), so `sources != PAD` is the
attention mask a training forward pass uses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.sampler.state import DecodeState


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Trajectories:
    """tokens [N, S] int32; sources [N, S] int8 (`TokenSource`); logprobs [N, S] fp32 and
    entropies [N, S] fp32 of POLICY tokens under the sampling policy (0 elsewhere);
    decode_steps [] int32: decode iterations the rollout ran (all of its turns)."""

    tokens: jax.Array
    sources: jax.Array
    logprobs: jax.Array
    entropies: jax.Array
    decode_steps: jax.Array

    @classmethod
    def from_decode_state(cls, state: DecodeState,
                          decode_steps: jax.Array | int | None = None) -> "Trajectories":
        """The trajectories of a decode state (its KV cache and stop state dropped);
        `decode_steps` defaults to the state's last call."""
        steps = state.num_steps if decode_steps is None else decode_steps
        return cls(tokens=state.tokens, sources=state.sources, logprobs=state.logprobs,
                   entropies=state.entropies, decode_steps=jnp.asarray(steps, jnp.int32))

    @property
    def policy(self) -> jax.Array:
        """bool [N, S]: the slots the policy wrote."""
        return self.sources == TokenSource.POLICY

    @property
    def response_lengths(self) -> jax.Array:
        """int32 [N]: tokens each row's policy wrote."""
        return self.policy.sum(axis=1, dtype=jnp.int32)
