"""The compiled GRPO train step: compiles once, shards exactly, and learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssrl_jax.data.golds import encode_golds
from ssrl_jax.models import ModelConfig, init_model
from ssrl_jax.rl.rewards import RewardParts
from ssrl_jax.rl.optimizer import learning_rate_schedule, make_optimizer
from ssrl_jax.rl.learn import sequence_logprobs
from ssrl_jax.rl.step import StepConfig, make_train_step
from ssrl_jax.rl.train_state import init_train_state
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.sharding import ShardingRules, make_mesh

# A synthetic task whose reward is reachable by chance: the prompt names a word,
# and the response is rewarded when its first word is that word.
VOCAB, EOS, PAD, CUE = 32, 30, 31, 29
WORDS = 8
TOKEN_BYTES = [f" w{i}".encode() for i in range(VOCAB - 3)] + [b" ?", b"", b""]
CONFIG = ModelConfig(family="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=EOS)


def first_word_reward(text, golds):
    words = text.split()
    hit = float(bool(words) and words[0] in golds)
    return RewardParts(reward=hit, exact_match=hit, format_score=0.0, f1=hit,
                       sub_exact_match=hit, answer=words[0] if words else None)


def make_batch(rng, prompts=8):
    targets = rng.randint(0, WORDS, prompts)
    ids = np.stack([targets, np.full(prompts, CUE)], axis=1).astype(np.int32)
    return {"prompt_ids": ids, "prompt_valid": np.ones(ids.shape, bool),
            "golds": encode_golds([[f"w{t}"] for t in targets], 2, 8)}


def step_config(**changes):
    return StepConfig(group_size=8, max_new_tokens=2, eos_ids=(EOS,), pad_id=PAD,
                      **{"kl_coef": 0.0, **changes})


def build(config, lr=1e-2, mesh=None, seed=0, pin_state=False, model_config=CONFIG):
    model = init_model(model_config, seed=seed, mesh=mesh)
    optimizer = make_optimizer(lr, warmup_steps=1)
    graphdef = nnx.graphdef(model)
    state = init_train_state(model, optimizer)
    step = make_train_step(graphdef, config, token_bytes=TOKEN_BYTES,
                           reward_fn=first_word_reward, optimizer=optimizer,
                           state_sharding=(jax.tree.map(lambda x: x.sharding, state)
                                           if pin_state else None))
    return step, state


@pytest.mark.slow
def test_learns_the_synthetic_task():
    step, state = build(step_config(), lr=3e-3)
    rng = np.random.RandomState(0)
    rewards = []
    for i in range(150):
        state, metrics = step(state, make_batch(rng), jax.random.key(i))
        rewards.append(float(metrics["reward"]))
    assert np.mean(rewards[:3]) < 0.3, rewards[:3]
    assert np.mean(rewards[-10:]) >= 0.9, rewards
    assert int(state.step) == 150


def test_five_steps_compile_once_with_kl_and_micro_batches(compile_counter):
    step, state = build(step_config(kl_coef=0.001, num_micro_batches=2, num_mini_batches=2,
                                    ppo_epochs=2))
    rng = np.random.RandomState(1)
    batches = [make_batch(rng) for _ in range(5)]
    keys = [jax.random.key(i) for i in range(5)]
    with compile_counter:
        state, metrics = step(state, batches[0], keys[0])
        jax.block_until_ready(metrics)
    assert compile_counter.count >= 1  # the step itself (plus small helpers on first use)
    with compile_counter:
        for batch, key in zip(batches[1:], keys[1:]):
            state, metrics = step(state, batch, key)
            jax.block_until_ready(metrics)
    assert compile_counter.count == 0
    for name in ("loss", "kl", "clip_fraction", "entropy", "grad_norm", "reward",
                 "response_length", "masked_share", "exact_match"):
        assert np.isfinite(float(metrics[name])), name
    assert float(metrics["response_length"]) > 0


def test_entropy_bonus_is_subtracted_from_the_loss():
    """grpo.entropy_coef (Search-R1's entropy_coeff): loss = GRPO loss − coef · mean entropy
    of the trained tokens, and its gradient enters the update."""
    batch = make_batch(np.random.RandomState(3))
    results = {}
    for coef in (0.0, 0.5):
        step, state = build(step_config(entropy_coef=coef))
        _, metrics = step(state, batch, jax.random.key(5))
        results[coef] = jax.device_get(metrics)
    plain, bonus = results[0.0], results[0.5]
    np.testing.assert_allclose(float(plain["entropy"]), float(bonus["entropy"]), rtol=1e-6)
    np.testing.assert_allclose(float(bonus["loss"]),
                               float(plain["loss"]) - 0.5 * float(plain["entropy"]), rtol=1e-5)
    assert abs(float(bonus["grad_norm"]) - float(plain["grad_norm"])) > 1e-4


def test_micro_batching_gives_the_same_update():
    rng = np.random.RandomState(2)
    batch = make_batch(rng)
    results = []
    for micro in (1, 4):
        step, state = build(step_config(kl_coef=0.001, num_micro_batches=micro))
        state, metrics = step(state, batch, jax.random.key(7))
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kv_cache_dtype", ["", "int8"])
def test_sharded_step_equals_unsharded(eight_devices, kv_cache_dtype):
    batch = make_batch(np.random.RandomState(3))
    config = step_config(kl_coef=0.001)
    model_config = CONFIG.replace(kv_cache_dtype=kv_cache_dtype)
    key = jax.random.key(11)
    step, state = build(config, model_config=model_config)
    state, expected = step(state, batch, key)
    expected_params = jax.device_get(state.params)

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        step, state = build(config, mesh=mesh, model_config=model_config)
        sharding = ShardingRules().sharding(("batch", None), batch["prompt_ids"].shape, mesh)
        sharded_batch = {k: jax.device_put(v, sharding if v.ndim == 2 else
                                           ShardingRules().sharding(("batch", None, None),
                                                                    v.shape, mesh))
                         for k, v in batch.items()}
        state, got = step(state, sharded_batch, key)
    np.testing.assert_allclose(float(got["loss"]), float(expected["loss"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(got["reward"]), float(expected["reward"]))
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(expected_params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_pinned_state_sharding_keeps_a_sharded_run_on_one_compile(eight_devices, compile_counter):
    mesh = make_mesh({"fsdp": 8})
    rng = np.random.RandomState(4)
    with jax.set_mesh(mesh):
        step, state = build(step_config(kl_coef=0.001), mesh=mesh, pin_state=True)
        before = jax.tree.map(lambda x: x.sharding, state)
        batches = [make_batch(rng) for _ in range(3)]
        keys = [jax.random.key(i) for i in range(3)]
        state, metrics = step(state, batches[0], keys[0])
        with compile_counter:
            for batch, key in zip(batches[1:], keys[1:]):
                state, metrics = step(state, batch, key)
            jax.block_until_ready(metrics)
    assert compile_counter.count == 0
    assert jax.tree.map(lambda x: x.sharding, state) == before


def test_optimizer_moments_are_sharded_like_their_parameters(eight_devices):
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    with jax.set_mesh(mesh):
        model = init_model(CONFIG, seed=0, mesh=mesh)
        state = init_train_state(model, make_optimizer(1e-3, warmup_steps=1))
    adam = state.opt_state[1][0]
    param_specs = jax.tree.leaves(jax.tree.map(lambda x: x.sharding.spec, state.params))
    for moments in (adam.mu, adam.nu):
        assert jax.tree.leaves(jax.tree.map(lambda x: x.sharding.spec, moments)) == param_specs
    assert any(spec != jax.sharding.PartitionSpec(*[None] * len(spec)) for spec in param_specs)


def test_response_logprobs_match_the_full_pass_and_skip_the_prompt():
    model = init_model(CONFIG, seed=3)
    rng = np.random.RandomState(3)
    tokens = jnp.asarray(rng.randint(0, VOCAB - 3, (4, 10)), jnp.int32)
    sources = np.full((4, 10), TokenSource.POLICY, np.int32)
    sources[:, :6] = TokenSource.PROMPT
    sources[0, :2] = TokenSource.PAD           # a left-padded prompt
    sources = jnp.asarray(sources)
    full_logp, full_entropy = sequence_logprobs(model, tokens, sources, chunk=4)
    logp, entropy = sequence_logprobs(model, tokens, sources, chunk=4, first_scored=6)
    np.testing.assert_allclose(logp[:, 6:], full_logp[:, 6:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entropy[:, 6:], full_entropy[:, 6:], rtol=1e-5, atol=1e-6)
    assert not np.any(np.asarray(logp[:, :6])) and not np.any(np.asarray(entropy[:, :6]))
    assert np.all(np.asarray(full_logp[:, 2:6]) < 0)   # the full pass did score the prompt
    with pytest.raises(ValueError, match="first_scored=10"):
        sequence_logprobs(model, tokens, sources, chunk=4, first_scored=10)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
    # cosine from step 2 to step 6: 1 → 0.1 along half a cosine
    ("cosine", [0.0, 0.5, 1.0, 0.1 + 0.9 * (1 + np.cos(np.pi / 4)) / 2, 0.55,
                0.1 + 0.9 * (1 + np.cos(3 * np.pi / 4)) / 2]),
])
def test_learning_rate_schedules(schedule, expected):
    rate = learning_rate_schedule(1.0, 2, schedule=schedule, total_steps=6, final_lr_ratio=0.1)
    np.testing.assert_allclose([float(rate(step)) for step in range(6)], expected, rtol=1e-6)
    assert float(rate(100)) == pytest.approx(expected[-1] if schedule == "constant" else 0.1)


def test_cosine_schedule_needs_a_length():
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        make_optimizer(1.0, warmup_steps=10, schedule="cosine", total_steps=10)
    with pytest.raises(ValueError, match="schedule='linear'"):
        make_optimizer(1.0, warmup_steps=1, schedule="linear")
