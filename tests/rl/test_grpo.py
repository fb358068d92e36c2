"""GRPO math against a direct NumPy transcription of SPEC §5."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssrl_jax.rl import grpo


def _np_advantages(rewards, n, estimator):
    g = rewards.reshape(-1, n)
    mean = g.mean(1, keepdims=True)
    if estimator == "grpo":
        return ((g - mean) / (g.std(1, ddof=1, keepdims=True) + 1e-6)).ravel()
    if estimator == "grpo_no_std":
        return (g - mean).ravel()
    loo = (g.sum(1, keepdims=True) - g) / (n - 1)
    return (g - loo).ravel()


def _np_loss(logp, old, ref, adv, mask, aggregation, kl_estimator, kl_coef=0.001, eps=0.2,
             dual=None):
    ratio = np.exp(logp - old)
    a = adv[:, None]
    per_token = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - eps, 1 + eps))
    if dual is not None:
        per_token = np.where(a < 0, np.minimum(per_token, -a * dual), per_token)
    d = logp - ref
    kl = {"k1": d, "k2": 0.5 * d * d,
          "low_var_kl": np.clip(np.exp(-d) + d - 1, -10, 10)}[kl_estimator]

    def reduce(x):
        if aggregation == "token-mean":
            return (x * mask).sum() / mask.sum()
        if aggregation == "seq-mean-token-mean":
            return ((x * mask).sum(1) / mask.sum(1)).mean()
        return (x * mask).sum(1).mean()

    return reduce(per_token) + kl_coef * reduce(kl)


@pytest.mark.parametrize("estimator", ["grpo", "grpo_no_std", "rloo"])
def test_group_advantages_match_numpy(estimator):
    rewards = np.random.RandomState(0).rand(20).astype(np.float32)
    got = grpo.group_advantages(jnp.asarray(rewards), 5, estimator)
    np.testing.assert_allclose(got, _np_advantages(rewards, 5, estimator), rtol=1e-5, atol=1e-6)


def test_equal_rewards_give_zero_advantage_not_nan():
    got = grpo.group_advantages(jnp.ones(10), 5)
    assert np.all(np.asarray(got) == 0)


def _inputs(seed=0, n=6, t=9):
    rng = np.random.RandomState(seed)
    logp = np.log(rng.uniform(0.05, 1.0, (n, t))).astype(np.float32)
    old = logp + rng.normal(0, 0.3, (n, t)).astype(np.float32)
    ref = logp + rng.normal(0, 0.3, (n, t)).astype(np.float32)
    adv = rng.normal(0, 1, n).astype(np.float32)
    mask = (rng.rand(n, t) > 0.3).astype(np.float32)
    mask[:, 0] = 1.0
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("aggregation, kl_estimator", list(itertools.product(
    ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"], ["k1", "k2", "low_var_kl"])))
def test_loss_and_gradient_match_numpy(aggregation, kl_estimator):
    logp, old, ref, adv, mask = _inputs()

    def ours(lp):
        return grpo.grpo_loss(lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv),
                              jnp.asarray(mask), aggregation=aggregation,
                              kl_estimator=kl_estimator)[0]

    loss, grad = jax.value_and_grad(ours)(jnp.asarray(logp))
    expected = _np_loss(logp.astype(np.float64), old, ref, adv, mask, aggregation, kl_estimator)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    # Central finite differences of the NumPy transcription, on a few unmasked tokens.
    for i, j in [(0, 0), (2, 0), (5, 0)]:
        h = 1e-4
        plus, minus = logp.astype(np.float64).copy(), logp.astype(np.float64).copy()
        plus[i, j] += h
        minus[i, j] -= h
        numeric = (_np_loss(plus, old, ref, adv, mask, aggregation, kl_estimator)
                   - _np_loss(minus, old, ref, adv, mask, aggregation, kl_estimator)) / (2 * h)
        np.testing.assert_allclose(grad[i, j], numeric, rtol=1e-3, atol=1e-5)


def test_dual_clip_matches_numpy():
    logp, old, ref, adv, mask = _inputs(seed=1)
    logp = old + 2.0  # large ratios so that the dual clip binds for negative advantages
    got, metrics = grpo.grpo_loss(jnp.asarray(logp), jnp.asarray(old), None, jnp.asarray(adv),
                                  jnp.asarray(mask), dual_clip=3.0)
    expected = _np_loss(logp, old, ref, adv, mask, "token-mean", "k1", kl_coef=0.0, dual=3.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(metrics["clip_fraction"]) > 0.5


def test_masked_tokens_change_neither_loss_nor_gradient():
    logp, old, ref, adv, mask = _inputs(seed=2)
    perturbed = np.where(mask > 0, logp, logp - 3.0).astype(np.float32)
    fn = jax.value_and_grad(lambda lp: grpo.grpo_loss(
        lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask))[0])
    loss_a, grad_a = fn(jnp.asarray(logp))
    loss_b, grad_b = fn(jnp.asarray(perturbed))
    assert float(loss_a) == float(loss_b)
    np.testing.assert_array_equal(grad_a, grad_b)
    assert np.all(np.asarray(grad_a)[mask == 0] == 0)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batch_sums_equal_full_batch(aggregation):
    logp, old, ref, adv, mask = _inputs(seed=3, n=8)
    full = grpo.aggregate(jnp.asarray(logp), jnp.asarray(mask), aggregation)
    parts = sum(grpo.aggregate(jnp.asarray(logp[s]), jnp.asarray(mask[s]), aggregation,
                               total_tokens=mask.sum(), total_sequences=8)
                for s in (slice(0, 4), slice(4, 8)))
    np.testing.assert_allclose(parts, full, rtol=1e-6)


def test_ratio_one_gives_minus_advantage_times_mask():
    logp, _, _, adv, mask = _inputs(seed=4)
    loss, metrics = grpo.grpo_loss(jnp.asarray(logp), jnp.asarray(logp), None, jnp.asarray(adv),
                                   jnp.asarray(mask))
    expected = -(adv[:, None] * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert float(metrics["clip_fraction"]) == 0.0


def test_unknown_choices_are_named():
    with pytest.raises(ValueError, match="'ppo'"):
        grpo.group_advantages(jnp.ones(4), 2, "ppo")
    with pytest.raises(ValueError, match="'k4'"):
        grpo.kl_penalty(jnp.ones(2), jnp.ones(2), "k4")
    with pytest.raises(ValueError, match="'mean'"):
        grpo.aggregate(jnp.ones((2, 2)), jnp.ones((2, 2)), "mean")


@pytest.mark.parametrize("log_ratio", [25.0, 100.0, 1e30])
def test_huge_log_ratios_give_finite_loss_and_gradients(log_ratio):
    """Past the ±20 bound on log π/π_old (exp(89) is inf in fp32) nothing overflows."""
    logp, _, ref, _, mask = _inputs(seed=5)
    old = logp - log_ratio          # the policy now far likelier than when sampled
    adv = -np.abs(np.random.RandomState(5).normal(0, 1, logp.shape[0])).astype(np.float32) - 0.1
    for kl_estimator, dual_clip in [("low_var_kl", None), ("k3", 3.0)]:
        fn = jax.value_and_grad(lambda lp: grpo.grpo_loss(
            lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask),
            kl_estimator=kl_estimator, dual_clip=dual_clip)[0])
        loss, grad = fn(jnp.asarray(logp))
        assert np.isfinite(float(loss)), (log_ratio, kl_estimator)
        assert np.all(np.isfinite(np.asarray(grad))), (log_ratio, kl_estimator)
    # Without dual clip the loss is -A·exp(20) per token: bounded, not 5e8·exp(5) or inf.
    loss = grpo.grpo_loss(jnp.asarray(logp), jnp.asarray(old), None, jnp.asarray(adv),
                          jnp.asarray(mask))[0]
    expected = (-adv[:, None] * np.exp(np.float64(20.0)) * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_without_the_bound_the_same_inputs_overflow():
    """The contrast: an unbounded ratio (max_log_ratio=inf) gives inf loss and NaN gradients."""
    logp, _, _, _, mask = _inputs(seed=5)
    adv = -np.ones(logp.shape[0], np.float32)
    fn = jax.value_and_grad(lambda lp, bound: grpo.grpo_loss(
        lp, jnp.asarray(logp - 100.0), None, jnp.asarray(adv), jnp.asarray(mask),
        max_log_ratio=bound)[0])
    loss, grad = fn(jnp.asarray(logp), np.inf)
    assert not np.isfinite(float(loss)) or not np.all(np.isfinite(np.asarray(grad)))
    loss, grad = fn(jnp.asarray(logp), 20.0)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))


def test_the_bound_changes_nothing_inside_it():
    logp, old, ref, adv, mask = _inputs(seed=6)
    old = logp + np.random.RandomState(6).uniform(-19.0, 19.0, logp.shape).astype(np.float32)
    fn = jax.value_and_grad(lambda lp, bound: grpo.grpo_loss(
        lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask),
        max_log_ratio=bound)[0])
    bounded, bounded_grad = fn(jnp.asarray(logp), 20.0)
    free, free_grad = fn(jnp.asarray(logp), np.inf)
    np.testing.assert_allclose(float(bounded), float(free), rtol=1e-7)
    np.testing.assert_array_equal(np.asarray(bounded_grad), np.asarray(free_grad))
    expected = _np_loss(logp.astype(np.float64), old, ref, adv, mask, "token-mean", "low_var_kl")
    np.testing.assert_allclose(float(bounded), expected, rtol=1e-5)


def test_kl_penalty_is_finite_for_any_finite_log_probs():
    logp = jnp.asarray([-200.0, -0.1, -1e30, -3.0])
    ref = jnp.asarray([-0.1, -200.0, -0.5, -1e30])
    for estimator in ("k3", "low_var_kl"):
        kl, grad = jax.value_and_grad(lambda lp: grpo.kl_penalty(lp, ref, estimator).sum())(logp)
        assert np.isfinite(float(kl)) and np.all(np.isfinite(np.asarray(grad))), estimator
        assert np.all(np.asarray(grpo.kl_penalty(logp, ref, estimator)) == 10.0)  # the ±10 cap
