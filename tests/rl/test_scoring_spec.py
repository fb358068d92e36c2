"""Which mesh axes the scoring callback splits the responses over, and whole groups for a group
reward (TTRL): 8 fake CPU devices as fsdp=4 x tensor=2."""

import jax
import jax.numpy as jnp
import pytest

from ssrl_jax.rl import rewards
from ssrl_jax.rl.scoring import score_on_host, scoring_spec, ttrl_reward
from ssrl_jax.sharding import ShardingRules, make_mesh

RULES = ShardingRules()


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"fsdp": 4, "tensor": 2}, jax.devices()[:8])


def test_rows_replicated_over_tensor_are_split_over_it_unless_that_splits_groups(mesh):
    # 16 rows: the batch's fsdp axis, then tensor (2 rows per device).
    assert scoring_spec(16, mesh, RULES) == ("fsdp", "tensor")
    assert scoring_spec(16, mesh, RULES, group_size=2) == ("fsdp", "tensor")
    # Groups of 4: tensor would leave half a group per device, so it stays replicated.
    assert scoring_spec(16, mesh, RULES, group_size=4) == "fsdp"
    assert scoring_spec(6, mesh, RULES) == "tensor"  # fsdp does not divide 6 rows
    assert scoring_spec(5, mesh, RULES) is None  # nothing divides: one call


def _score(mesh, rows, group_size):
    tokens = jnp.zeros((rows, 8), jnp.int32)
    sources = jnp.zeros((rows, 8), jnp.int8)
    golds = jnp.zeros((rows, 1, 4), jnp.uint8)
    reward = ttrl_reward(group_size, 0.1, "ssrl")
    with jax.set_mesh(mesh):
        return jax.eval_shape(lambda t, s, g: score_on_host(
            t, s, g, token_bytes=[b"x"] * 8, reward_fn=reward, mask_information=True,
            rules=RULES, group_size=group_size, group_reward=True), tokens, sources, golds)


def test_a_group_reward_traces_with_whole_groups_and_refuses_split_ones(mesh):
    scores, mask = _score(mesh, rows=16, group_size=4)
    assert scores.shape[0] == 16 and mask.shape == (16, 8)
    # 8 rows over fsdp=4: 2 rows per device cannot hold a group of 4.
    with pytest.raises(ValueError, match="whole groups on each host: 8 responses in groups of 4"):
        _score(mesh, rows=8, group_size=4)
    assert "ttrl" in rewards.REWARDS  # what config.grpo.reward accepts
