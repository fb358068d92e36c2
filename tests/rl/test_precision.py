"""Mixed precision: fp32 master weights and Adam state, bf16 compute (docs/training.md).

At the papers' learning rate (1e-6) an AdamW update moves each weight by about 1e-6:
far below half a bf16 ulp of a weight of 0.02 (6e-5) or of a norm weight of 1 (4e-3),
well above an fp32 ulp. So fp32 masters take the update and bf16 masters round it away.
"""

from collections import Counter
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssrl_jax.models import ModelConfig, init_model
from ssrl_jax.rl.grpo import group_advantages
from ssrl_jax.rl.optimizer import make_optimizer
from ssrl_jax.rl.learn import sequence_logprobs
from ssrl_jax.rl.step import StepConfig, make_step_parts
from ssrl_jax.rl.train_state import compute_copy, init_train_state
from ssrl_jax.sampler.sources import TokenSource

VOCAB, EOS = 64, 63
# Every kind of parameter: q/k/v biases and q/k norms on top of Llama's, tied embeddings so
# that every embedding row gets a gradient through the output softmax.
CONFIG = ModelConfig(family="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, attention_bias=True,
                     qk_norm=True, tie_word_embeddings=True, eos_token_id=EOS,
                     param_dtype="float32", dtype="bfloat16")
ROWS, PROMPT, SLOTS, GROUP = 8, 4, 16, 4
LEARNING_RATE, B2 = 1e-6, 0.999


class Rollout(NamedTuple):
    tokens: jax.Array
    sources: jax.Array


def rollout_batch(seed=0):
    """A fixed rollout of ROWS responses: PROMPT prompt slots, then policy tokens."""
    rng = np.random.RandomState(seed)
    tokens = jnp.asarray(rng.randint(0, VOCAB - 1, (ROWS, SLOTS)), jnp.int32)
    sources = np.full((ROWS, SLOTS), TokenSource.POLICY, np.int32)
    sources[:, :PROMPT] = TokenSource.PROMPT
    mask = jnp.asarray(sources == TokenSource.POLICY, jnp.float32)
    advantages = group_advantages(jnp.asarray(rng.rand(ROWS), jnp.float32), GROUP)
    return Rollout(tokens, jnp.asarray(sources)), mask, advantages


def updates_at_lr_1e6(param_dtype):
    """(params before, params after, optimizer state after, optimizer) of the learn stage's
    second update (the first is warm-up at rate 0), with `param_dtype` masters."""
    model = init_model(CONFIG.replace(param_dtype=param_dtype), seed=0)
    optimizer = make_optimizer(LEARNING_RATE, warmup_steps=1, b2=B2)
    state = init_train_state(model, optimizer)
    parts = make_step_parts(nnx.graphdef(model), StepConfig(group_size=GROUP, eos_ids=(EOS,)),
                            token_bytes=[b"x"] * VOCAB, reward_fn=None, optimizer=optimizer)
    learn = jax.jit(parts.learn, static_argnums=5)
    rollout, mask, advantages = rollout_batch()
    dtypes = jax.tree.map(lambda x: x.dtype, state.opt_state)
    for update in range(2):
        before = jax.device_get(state.params)
        params, opt_state, metrics = learn(state, rollout, mask, advantages,
                                           jax.random.key(update), PROMPT)
        assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
        # The optimizer state comes back in the dtypes it went in with (no recompile).
        assert jax.tree.map(lambda x: x.dtype, opt_state) == dtypes
        state.params, state.opt_state = params, opt_state
    return before, jax.device_get(state.params), state.opt_state, optimizer


def changed_share(before, after, min_magnitude=0.0):
    """{parameter name: share of its entries of |value| >= min_magnitude that the update
    changed} (parameters with no such entry left out)."""
    shares = {}
    for (path, b), a in zip(jax.tree.leaves_with_path(before), jax.tree.leaves(after)):
        b, a = np.asarray(b, np.float32), np.asarray(a, np.float32)
        considered = np.abs(b) >= min_magnitude
        if considered.any():
            shares[jax.tree_util.keystr(path)] = float(np.mean(a[considered] != b[considered]))
    return shares


@pytest.fixture(scope="module")
def fp32_masters():
    return updates_at_lr_1e6("float32")


@pytest.fixture(scope="module")
def bf16_masters():
    return updates_at_lr_1e6("bfloat16")


@pytest.mark.slow
def test_fp32_masters_take_an_update_at_lr_1e6_in_every_weight(fp32_masters):
    before, after, _, _ = fp32_masters
    shares = changed_share(before, after)
    assert len(shares) == 16  # embed, final norm, 14 stacked layer tensors
    for name, share in shares.items():
        assert share >= 0.99, (name, share)
    assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(after))


@pytest.mark.slow
def test_bf16_masters_round_the_same_update_away(bf16_masters):
    """The contrast: the same update on bf16 masters leaves every weight of magnitude
    >= 1e-3 (half a bf16 ulp there is 3.8e-6) unchanged; only entries near zero (the
    zero-initialised biases, the smallest random weights) move."""
    before, after, _, _ = bf16_masters
    assert all(np.asarray(x).dtype == jnp.bfloat16 for x in jax.tree.leaves(after))
    assert min(changed_share(before, after).values()) < 0.99  # the fp32 test's claim fails
    shares = changed_share(before, after, min_magnitude=1e-3)
    assert len(shares) == 13  # all but the three bias tensors
    for name, share in shares.items():
        assert share == 0.0, (name, share)


def adam_second_moments(opt_state):
    return jax.tree.leaves(opt_state[1][0].nu)


@pytest.mark.slow
def test_adam_second_moment_is_fp32_and_decays(fp32_masters, bf16_masters):
    """nu_t = b2·nu_{t-1} + (1 − b2)·g²: with a zero gradient nu shrinks by b2 = 0.999 in
    fp32 state; in bf16 state 0.999·nu rounds back to nu (bf16(0.999) == 1)."""
    assert float(jnp.asarray(B2, jnp.bfloat16)) == 1.0
    for masters, decays in ((fp32_masters, True), (bf16_masters, False)):
        params, _, opt_state, optimizer = masters
        nu = adam_second_moments(opt_state)
        assert all(x.dtype == jax.tree.leaves(params)[0].dtype for x in nu)
        zero = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        _, new_state = jax.jit(optimizer.update)(zero, opt_state, params)
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, opt_state)
        for old, new in zip(nu, adam_second_moments(new_state)):
            old, new = np.asarray(old, np.float64), np.asarray(new, np.float64)
            positive = old > 0
            assert positive.mean() > 0.99
            if decays:
                np.testing.assert_allclose(new[positive] / old[positive], B2, rtol=1e-6)
            else:
                np.testing.assert_array_equal(new, old)


def dot_operand_dtypes(jaxpr, found=None):
    """Counter of (lhs dtype, rhs dtype) over every dot_general in a jaxpr, nested ones too."""
    found = Counter() if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found[tuple(str(v.aval.dtype) for v in eqn.invars)] += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    dot_operand_dtypes(inner, found)
    return found


def test_fp32_masters_compute_in_bf16():
    """Weights are cast to the compute dtype at use: every matmul of the forward takes bf16
    operands, and log-probs come out fp32 and equal to those of the bf16 copy's forward."""
    model = init_model(CONFIG, seed=0)
    graphdef, params = nnx.split(model)
    rollout, mask, _ = rollout_batch()

    def logprobs(p):
        return sequence_logprobs(nnx.merge(graphdef, p), rollout.tokens, rollout.sources,
                                 chunk=8, first_scored=PROMPT)[0]

    forward = dot_operand_dtypes(jax.make_jaxpr(logprobs)(params).jaxpr)
    assert forward and set(forward) == {("bfloat16", "bfloat16")}, forward
    # The backward stays in bf16 too, except the products accumulated in fp32 (logits,
    # attention scores), whose fp32 cotangents meet a bf16 operand.
    backward = dot_operand_dtypes(
        jax.make_jaxpr(jax.grad(lambda p: (logprobs(p) * mask).sum()))(params).jaxpr)
    assert ("float32", "float32") not in backward, backward

    logp = jax.jit(logprobs)(params)
    assert logp.dtype == jnp.float32
    bf16_copy = compute_copy(params, jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(logp), np.asarray(jax.jit(logprobs)(bf16_copy)))


def test_the_reference_is_a_bf16_copy_in_the_parameters_shardings():
    model = init_model(CONFIG, seed=0)
    state = init_train_state(model, make_optimizer(LEARNING_RATE, warmup_steps=1))
    for master, ref in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ref_params)):
        assert master.dtype == jnp.float32 and ref.dtype == jnp.bfloat16
        assert ref.sharding == master.sharding
        np.testing.assert_array_equal(np.asarray(ref), np.asarray(master.astype(jnp.bfloat16)))
    assert all(x.dtype == jnp.float32 for x in adam_second_moments(state.opt_state))
