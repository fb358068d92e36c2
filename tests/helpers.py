"""Tiny Hugging Face models built in-process, for parity tests (needs the `test` extra)."""

from __future__ import annotations

import numpy as np

# One tiny config per family and variant the model issue names.
TINY_HF_CONFIGS = {
    "llama_rope3_tied": dict(
        model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "llama_untied": dict(
        model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=96,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False),
    "qwen2_bias_tied": dict(
        model_type="qwen2", vocab_size=128, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, rope_theta=1000000.0, tie_word_embeddings=True,
        rms_norm_eps=1e-6),
    "qwen3_qknorm_headdim": dict(
        model_type="qwen3", vocab_size=128, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=256, rope_theta=1000000.0, tie_word_embeddings=False,
        rms_norm_eps=1e-6),
}


def build_hf_model(name: str, seed: int = 0, **overrides):
    """A tiny random fp32 `transformers` model of the named variant, in eval mode."""
    import torch
    import transformers

    fields = {**TINY_HF_CONFIGS[name], **overrides}
    model_type = fields.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    # Random non-trivial norms and biases so that parity covers them.
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif param_name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    return model.eval()


def padded_batch(vocab_size: int, seed: int = 0):
    """ids [4, 12] with rows left-padded, right-padded and full; mask [4, 12] bool."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab_size, (4, 12))
    mask = np.ones((4, 12), bool)
    mask[0, :5] = False   # left padding
    mask[1, 8:] = False   # right padding
    mask[3, :2] = False
    return ids, mask


def save_bigram_model(directory, tokenizer, successors, *, max_position_embeddings: int):
    """Saves a tiny Llama whose next-token logits depend on the current token only.

    Attention and MLP outputs are zeroed, so each layer passes the residual through. The
    embeddings of the tokens in `successors` ({token: {next token: lm_head weight}}) are
    orthogonal unit vectors, and `lm_head` maps each to its successors (RMSNorm scales
    the unit vector to sqrt(hidden), so a weight w gives a logit of w·sqrt(hidden)).
    The model (fp32) and `tokenizer` are saved to `directory`, which is returned.
    """
    import torch

    model = build_hf_model("llama_untied", vocab_size=len(tokenizer),
                           max_position_embeddings=max_position_embeddings,
                           eos_token_id=tokenizer.eos_token_id,
                           bos_token_id=tokenizer.bos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    assert len(successors) <= model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for slot, (token, nexts) in enumerate(successors.items()):
            embed[token] = 0.0
            embed[token, slot] = 1.0
            for n, weight in nexts.items():
                head[n, slot] = weight
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def user_error(capsys, main, argv) -> str:
    """Runs a command's `main(argv)`, which must stop on a user error: exit status 2 and
    stderr ending in one `error: ...` line, no traceback. Returns that line."""
    import pytest

    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, (stopped.value.code, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last
