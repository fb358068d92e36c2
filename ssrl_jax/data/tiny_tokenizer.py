"""A tiny byte-level BPE tokenizer with a Llama-3-style chat template, trained in-process.

For the CPU quick start and the tests: no download, trains in milliseconds, and behaves like the
real thing where it matters here (byte-level, so any text round-trips; BOS prepended by
``add_special_tokens=True``; a chat template with ``<|start_header_id|>`` headers and
``<|eot_id|>`` turn ends; separate pad token). ``save_pretrained`` /
``AutoTokenizer.from_pretrained`` round-trip it.

    tok = train_tiny_tokenizer(quickstart_corpus(), vocab_size=512)
    tok.save_pretrained("assets/tokenizer")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ssrl_jax.cli_errors import ArgumentParser, cli_main
from ssrl_jax.protocol import tagged

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "LLAMA3_CHAT_TEMPLATE",
    "LLAMA3_SPECIAL_TOKENS",
    "PAD_TOKEN",
    "quickstart_corpus",
    "quickstart_tokenizer_path",
    "train_tiny_tokenizer",
]

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"  # ends a chat turn: what an instruct model emits when it is done.
PAD_TOKEN = "<|pad|>"
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    EOS_TOKEN,
    PAD_TOKEN,
)
# Llama 3's layout without its date/tool preamble: BOS, then per message
# "<|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>", then the assistant header.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def train_tiny_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    special_tokens: Sequence[str] = LLAMA3_SPECIAL_TOKENS,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
      texts: training text; a few KB is plenty.
      vocab_size: total size including the 256 byte symbols and the special tokens.
      special_tokens: added as special tokens with the lowest ids, in order; must include
        ``BOS_TOKEN``, ``EOS_TOKEN`` and ``PAD_TOKEN``.

    Returns:
      A tokenizer with ``bos_token``/``eos_token``/``pad_token`` set, BOS prepended when
      ``add_special_tokens=True``, and ``LLAMA3_CHAT_TEMPLATE`` as its chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = list(special_tokens)
    missing = [t for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN) if t not in special_tokens]
    if missing:
        raise ValueError(f"special_tokens must include {missing}")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(
            f"vocab_size {vocab_size} is below the {len(alphabet)} byte symbols plus "
            f"{len(special_tokens)} special tokens"
        )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=LLAMA3_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def quickstart_corpus() -> list[str]:
    """Training text for the quick-start tokenizer (~60 KB).

    Both instructions once each in chat and plain framing, then for every bundled sample row its
    question and a well-formed tagged trajectory ending in the gold answer, so the tags and the
    answers get merges of their own.
    """
    from ssrl_jax.data.prompts import PROMPT_MODES, build_prompt
    from ssrl_jax.data.qa import read_jsonl, sample_data_path

    rows = read_jsonl(sample_data_path())
    texts = [build_prompt(rows[0].question, mode=mode, chat=False) for mode in PROMPT_MODES]
    texts.append(
        "<|start_header_id|>user<|end_header_id|>\n\nQuestion<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    for row in rows:
        gold = row.golden_answers[0]
        texts.append(f"Question: {row.question}\n" + "\n".join([
            tagged("think", "I need to recall a fact."), tagged("search", row.question),
            tagged("information", f"{row.question} {gold}."),
            tagged("think", f"The answer is {gold}."), tagged("answer", gold)]))
    return texts


def quickstart_tokenizer_path() -> str:
    """The tokenizer shipped in the package (made by `main` with the defaults)."""
    from ssrl_jax.package_files import asset_path

    return str(asset_path("tokenizer"))


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    """Writes the quick-start tokenizer: `python -m ssrl_jax.data.tiny_tokenizer --out DIR`."""
    parser = ArgumentParser(prog="python -m ssrl_jax.data.tiny_tokenizer",
                            description=main.__doc__)
    parser.add_argument("--out", required=True, help="directory to save the tokenizer into")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args(argv)
    train_tiny_tokenizer(quickstart_corpus(), vocab_size=args.vocab_size).save_pretrained(args.out)


if __name__ == "__main__":
    main()
