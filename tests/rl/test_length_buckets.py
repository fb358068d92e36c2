"""Length buckets in the update: rows sorted by length, micro-batches cut to their tokens."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssrl_jax.models import init_model
from ssrl_jax.rl import length_buckets
from ssrl_jax.rl.rewards import ssrl_reward
from ssrl_jax.rl.learn import split_rows
from ssrl_jax.rl.step import make_step_parts
from ssrl_jax.rl.train_state import init_train_state
from ssrl_jax.sampler.sources import TokenSource
from tests.rl.test_step import CONFIG, EOS, PAD, TOKEN_BYTES, step_config

PROMPT, NEW = 8, 128          # 2 buckets of 64 slots: widths 72, 136
ROWS = 8
# What `learn` reads of a rollout.
Trajectories = collections.namedtuple("Trajectories", "tokens sources")


def test_row_extents_and_chunk_order():
    sources = np.full((4, 10), TokenSource.PAD, np.int8)
    sources[0, 2:5] = TokenSource.POLICY            # extent 5
    sources[1, :9] = TokenSource.PROMPT             # extent 9
    sources[2, 3] = TokenSource.INJECTED            # extent 4
    np.testing.assert_array_equal(length_buckets.row_extents(jnp.asarray(sources)), [5, 9, 4, 0])
    extents = jnp.asarray([50, 10, 40, 20, 30, 60, 0, 70])
    order = length_buckets.chunk_order(extents, 2)
    chunks = np.asarray(split_rows(extents[order], 2))
    # Chunk 0 holds the four shortest rows, chunk 1 the four longest.
    assert sorted(chunks[0].tolist()) == [0, 10, 20, 30]
    assert sorted(chunks[1].tolist()) == [40, 50, 60, 70]
    assert sorted(np.asarray(order).tolist()) == list(range(8))


@pytest.mark.parametrize("extent,width", [(1, 72), (72, 72), (73, 136), (136, 136), (200, 200)])
def test_run_at_width_takes_the_narrowest_width_that_holds_the_tokens(extent, width):
    chunk = {"tokens": jnp.zeros((2, 200), jnp.int32), "advantages": jnp.zeros((2,))}
    seen = jax.jit(lambda e: length_buckets.run_at_width(
        lambda c: (jnp.int32(c["tokens"].shape[1]), c["advantages"].shape[0]),
        (72, 136, 200), e, chunk))(jnp.int32(extent))
    assert int(seen[0]) == width and int(seen[1]) == 2


def synthetic_rollout(seed=0):
    """ROWS rows of PROMPT prompt slots and responses of very different lengths."""
    rng = np.random.RandomState(seed)
    slots = PROMPT + NEW
    tokens = rng.randint(0, EOS, (ROWS, slots)).astype(np.int32)
    sources = np.full((ROWS, slots), TokenSource.PAD, np.int8)
    sources[:, :PROMPT] = TokenSource.PROMPT
    lengths = [3, 126, 20, 64, 100, 7, 50, 40]
    for row, n in enumerate(lengths):
        sources[row, PROMPT:PROMPT + n] = TokenSource.POLICY
        tokens[row, PROMPT + n - 1] = EOS
    tokens[sources == TokenSource.PAD] = PAD
    mask = (sources == TokenSource.POLICY).astype(np.float32)
    advantages = rng.randn(ROWS).astype(np.float32)
    return (Trajectories(jnp.asarray(tokens), jnp.asarray(sources)), jnp.asarray(mask),
            jnp.asarray(advantages))


@pytest.mark.slow
def test_bucketed_update_equals_the_full_width_update():
    """Two mini-batches of two micro-batches, with the KL term: the reference and old
    log-probs, the mini-batch split and the micro-batch sums all go through buckets."""
    changes = dict(num_micro_batches=2, num_mini_batches=2, kl_coef=0.01)
    model = init_model(CONFIG, seed=0)
    optimizer = optax.sgd(1.0)  # parameters move by the gradient itself
    graphdef = nnx.graphdef(model)
    state = init_train_state(model, optimizer)
    rollout, mask, advantages = synthetic_rollout()
    results = {}
    for buckets in (1, 2):
        config = step_config(length_buckets=buckets, **changes)
        parts = make_step_parts(graphdef, config, token_bytes=TOKEN_BYTES,
                                reward_fn=ssrl_reward, optimizer=optimizer)
        learn = jax.jit(parts.learn, static_argnums=5)
        results[buckets] = learn(state, rollout, mask, advantages, jax.random.key(0), PROMPT)
    (params1, _, metrics1), (params2, _, metrics2) = results[1], results[2]
    for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    for name in metrics1:
        np.testing.assert_allclose(float(metrics1[name]), float(metrics2[name]), rtol=1e-4,
                                   atol=1e-6, err_msg=name)
    # The update changed the weights (the equality above is not of two no-ops).
    before = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert any(not np.allclose(np.asarray(a), np.asarray(b))
               for a, b in zip(before, jax.tree.leaves(params2)))
