"""Sampling on a data x fsdp x tensor mesh of 8 fake CPU devices equals unsharded sampling."""

import numpy as np
import pytest

from ssrl_jax.models import load_pretrained
from ssrl_jax.sampler import Sampler, TokenSource, row_outputs
from ssrl_jax.sharding import make_mesh

PROMPTS = [[5, 9, 200, 17], [3] * 11, list(range(30, 46)), [250, 7]]


@pytest.fixture(scope="module")
def mesh(eight_devices):
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def run_two_turns(sampler):
    state = sampler.generate(PROMPTS, max_new_tokens=12, cache_len=128)
    first = row_outputs(state)
    state = sampler.resume(state, [[1, 2, 3], [], [4], [5, 6]], max_new_tokens=6)
    return first, row_outputs(state), state


def test_sharded_greedy_equals_unsharded(model, model_dir, mesh):
    sharded_model = load_pretrained(str(model_dir), param_dtype="float32", mesh=mesh)
    sharded = Sampler(sharded_model, eos_ids=())
    assert sharded.mesh is mesh
    first, second, state = run_two_turns(sharded)
    # The unsharded run has the shapes test_sampler.py compiles.
    ref_first, ref_second, _ = run_two_turns(Sampler(model, eos_ids=(), prompt_buckets=(64,)))

    spec = state.tokens.sharding.spec
    assert spec[0] == ("data", "fsdp"), spec
    assert state.cache.k.sharding.spec[2] == ("data", "fsdp")
    for got, want in zip(first + second, ref_first + ref_second):
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_array_equal(got.sources, want.sources)
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
        np.testing.assert_allclose(got.entropies, want.entropies, atol=1e-5)
    assert all(len(r.tokens_from(TokenSource.POLICY)) == 18 for r in second)
