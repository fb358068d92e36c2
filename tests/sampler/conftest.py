"""Sampler test fixtures: a tiny byte-level BPE tokenizer and a tiny model saved with it."""

import pytest

from tests.helpers import build_hf_model

# Big enough for the tokenizer below (256 bytes + merges + 2 specials).
MODEL_VOCAB = 320
# Random tiny models with the usual 0.02 init emit one token forever under greedy
# decoding; a wider init gives varied sequences, so parity checks mean something.
INIT_RANGE = 0.3

_CORPUS = [
    "<think> I need the capital of France. </think> <search> capital of France </search> "
    "<information> Paris is the capital of France. </information> <answer> Paris </answer>",
    "<think> who wrote hamlet </think> <search> Hamlet author </search> "
    "<information> Hamlet is a tragedy by William Shakespeare. </information> "
    "<think> so the answer is Shakespeare </think> <answer> William Shakespeare </answer>",
    "The quick brown fox jumps over the lazy dog. Ünïcödé: naïve café, 東京, ½ — fin.",
]

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def train_tokenizer(vocab_size: int = 300):
    """A byte-level BPE `PreTrainedTokenizerFast` trained in milliseconds on a few tagged lines."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|eos|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|pad|>",
        chat_template=_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama (llama3 rope, tied) saved by transformers, with the tokenizer beside it.

    Its config names no EOS, so greedy runs of both libraries go the full length.
    """
    directory = tmp_path_factory.mktemp("tiny_llama")
    hf_model = build_hf_model("llama_rope3_tied", vocab_size=MODEL_VOCAB,
                              initializer_range=INIT_RANGE, eos_token_id=None,
                              bos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    hf_model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_model(model_dir):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture(scope="session")
def model(model_dir):
    from ssrl_jax.models import load_pretrained

    return load_pretrained(str(model_dir), param_dtype="float32")
