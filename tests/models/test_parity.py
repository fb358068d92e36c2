"""Logit parity with transformers' own PyTorch models, one test per family variant."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from ssrl_jax.models import load_pretrained  # noqa: E402
from tests.helpers import TINY_HF_CONFIGS, build_hf_model, padded_batch  # noqa: E402


@pytest.fixture(scope="module", params=sorted(TINY_HF_CONFIGS))
def pair(request, tmp_path_factory):
    hf_model = build_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(path)
    return request.param, hf_model, load_pretrained(str(path), param_dtype="float32")


def test_logits_match_transformers_with_left_and_right_padding(pair):
    name, hf_model, ours = pair
    ids, mask = padded_batch(ours.config.vocab_size)
    # transformers' plain forward does not derive positions from the mask.
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        expected = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                            position_ids=torch.tensor(positions)).logits.numpy()
    got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)


def test_loaded_config_matches_family(pair):
    name, hf_model, ours = pair
    hf = hf_model.config
    assert ours.config.family == hf.model_type
    assert ours.config.tie_word_embeddings == hf.tie_word_embeddings
    assert (ours.lm_head is None) == hf.tie_word_embeddings
    assert ours.config.qk_norm == (name.startswith("qwen3"))
    assert ours.config.attention_bias == (name.startswith("qwen2"))
