"""Instruction prompts for self-search (SSRL) and real-search (Search-R1) rollouts (SPEC §2).

Our own wording. Both instructions show every tag the model may write with the placeholder text
that ``ssrl_jax.protocol.PLACEHOLDERS`` names (``your thoughts``, ``your query``, ...), so a
trajectory that copies a placeholder gets no format credit. The question always ends the
instruction as ``Question: <question>`` on its own line, the form that
``ssrl_jax.data.qa.extract_question`` recovers.

- ``self_search``: the model writes its own ``<information>`` after each ``<search>``.
- ``search_r1``: a search engine answers each ``<search>``; the model must not write
  ``<information>`` (the sampler stops at ``</search>`` and injects the documents).

Instruct models get the instruction as one user message through the tokenizer's chat template
(``chat=True``); base models get plain text that frames a User/Assistant exchange and ends with
the cue ``Assistant:`` (``chat=False``). The response is expected to start with ``<think>``.

Dataset prompts: verl parquets (SSRL's training set, Search-R1's ``nq_search.py`` output) carry
each row's exact prompt as chat messages. With ``source="dataset"`` (``PROMPT_SOURCES``) a row
that has them is rendered verbatim as verl renders it (``row_prompt_ids``); ``"rebuild"``
ignores them and builds our wording from the question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ssrl_jax.protocol import (INFORMATION_CLOSE, INFORMATION_OPEN, PLACEHOLDERS, SEARCH_CLOSE,
                               tagged)

__all__ = [
    "BASE_CUE",
    "PROMPT_MODES",
    "PROMPT_SOURCES",
    "PromptMode",
    "build_prompt",
    "build_prompts",
    "dataset_prompt_ids",
    "instruction",
    "prompt_source_summary",
    "prompt_token_ids",
    "row_prompt_ids",
    "uses_dataset_prompt",
]

PromptMode = Literal["self_search", "search_r1"]
PROMPT_MODES: tuple[str, ...] = ("self_search", "search_r1")
# dataset: a row's own chat messages when it has them, else build; rebuild: always build.
PROMPT_SOURCES: tuple[str, ...] = ("dataset", "rebuild")
# A row's prompt as stored on ``QARow.prompt``: ((role, content), ...).
ChatPrompt = Sequence[tuple[str, str]]

_THINK, _SEARCH, _INFORMATION, _ANSWER = (tagged(name, PLACEHOLDERS[name])
                                          for name in ("think", "search", "information", "answer"))

_OPENING = (
    "Answer the question at the end. Work in steps and write every step inside one of the "
    "tags below; write nothing outside the tags.\n"
    f"- Start by reasoning inside {_THINK}, and reason again the same way after each new piece "
    "of information.\n"
)
_CLOSING = (
    "- Search as many times as you need, one query at a time. When you are sure, give only the "
    f"short final answer, with no explanation, as {_ANSWER}\n"
)
_INSTRUCTIONS: dict[str, str] = {
    "self_search": _OPENING + (
        "- When a fact is missing or uncertain, look it up: write a query on a single line as "
        f"{_SEARCH}\n"
        "- No search engine will reply. Right after each query, write yourself the passages "
        "that a good search would return, from what you know, as "
        f"{_INFORMATION}\n"
    ) + _CLOSING,
    "search_r1": _OPENING + (
        "- When a fact is missing or uncertain, ask the search engine: write a query on a "
        f"single line as {_SEARCH}\n"
        f"- Stop right after {SEARCH_CLOSE}. The search engine replies with documents between "
        f"{INFORMATION_OPEN} and {INFORMATION_CLOSE}; never write that block yourself.\n"
    ) + _CLOSING,
}

# Plain-text frame for base models; the response continues after the cue.
_BASE_FRAME = (
    "A conversation between a User and an Assistant. The User asks a question and gives "
    "instructions; the Assistant follows them exactly.\n"
    "User: {text}\n"
)
BASE_CUE = "Assistant:"


def _check_mode(mode: str) -> None:
    if mode not in PROMPT_MODES:
        raise ValueError(f"mode must be one of {PROMPT_MODES}, got {mode!r}")


def instruction(question: str, *, mode: PromptMode = "self_search") -> str:
    """The instruction text with the question on its last line (no chat template, no cue)."""
    _check_mode(mode)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    return f"{_INSTRUCTIONS[mode]}\nQuestion: {question.strip()}"


def _messages(question: str, mode: PromptMode) -> list[dict[str, str]]:
    return [{"role": "user", "content": instruction(question, mode=mode)}]


def _check_chat_tokenizer(tokenizer: Any) -> None:
    if tokenizer is None:
        raise ValueError("chat=True needs a tokenizer (its chat template renders the prompt)")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"chat=True but the tokenizer {type(tokenizer).__name__} has no chat_template; "
            "use chat=False for base models"
        )


def build_prompt(
    question: str,
    *,
    mode: PromptMode = "self_search",
    tokenizer: Any = None,
    chat: bool,
) -> str:
    """The prompt text for one question.

    ``chat=True``: ``tokenizer.apply_chat_template([user message], tokenize=False,
    add_generation_prompt=True)``, i.e. the template's own special tokens and assistant header.
    ``chat=False``: the base-model frame ending in ``"Assistant:"`` (the tokenizer is unused).
    """
    if chat:
        _check_chat_tokenizer(tokenizer)
        return tokenizer.apply_chat_template(
            _messages(question, mode), tokenize=False, add_generation_prompt=True
        )
    return _BASE_FRAME.format(text=instruction(question, mode=mode)) + BASE_CUE


def _as_id_list(encoded: Any) -> list[int]:
    """Token ids from a tokenizer's output: a list, a (Batch)Encoding dict, or one nested row."""
    if isinstance(encoded, Mapping):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if isinstance(encoded, Sequence) and encoded and isinstance(encoded[0], Sequence):
        if len(encoded) != 1:
            raise ValueError(f"expected the ids of one prompt, got a batch of {len(encoded)}")
        encoded = encoded[0]
    return [int(i) for i in encoded]


def prompt_token_ids(
    question: str,
    *,
    mode: PromptMode = "self_search",
    tokenizer: Any,
    chat: bool,
) -> list[int]:
    """The prompt's token ids (what the sampler prefills).

    Chat prompts are tokenized by ``apply_chat_template(tokenize=True)`` (transformers 5 returns
    a ``BatchEncoding`` there; both that and a plain list are accepted); the template supplies
    the special tokens. Plain prompts are encoded with ``add_special_tokens=True``, so a tokenizer
    that prepends BOS (Llama 3) does so and one that does not (Qwen) adds nothing.
    """
    if tokenizer is None:
        raise ValueError("prompt_token_ids needs a tokenizer")
    if chat:
        _check_chat_tokenizer(tokenizer)
        encoded = tokenizer.apply_chat_template(
            _messages(question, mode), tokenize=True, add_generation_prompt=True
        )
    else:
        encoded = tokenizer(build_prompt(question, mode=mode, chat=False), add_special_tokens=True)
    return _as_id_list(encoded)


def build_prompts(
    questions: Sequence[str],
    *,
    mode: PromptMode = "self_search",
    tokenizer: Any = None,
    chat: bool,
) -> list[str]:
    """``build_prompt`` for each question, in order."""
    return [build_prompt(q, mode=mode, tokenizer=tokenizer, chat=chat) for q in questions]


def _check_source(source: str) -> None:
    if source not in PROMPT_SOURCES:
        raise ValueError(f"prompt source must be one of {PROMPT_SOURCES}, got {source!r}")


def uses_dataset_prompt(prompt: ChatPrompt | None, source: str) -> bool:
    """Whether a row with chat messages ``prompt`` (None: none) is rendered from them."""
    _check_source(source)
    return source == "dataset" and prompt is not None


def dataset_prompt_ids(prompt: ChatPrompt, *, tokenizer: Any, chat: bool) -> list[int]:
    """Token ids of a dataset's own chat messages, rendered as verl renders them.

    ``chat=True``: ``apply_chat_template(messages, add_generation_prompt=True,
    tokenize=False)``, then the text is encoded with ``add_special_tokens=False`` (the
    template already holds them). ``chat=False`` (no chat template): Search-R1's verl falls
    back to the first message's content, encoded the same way; a prompt of several messages
    has no such reading and is refused.
    """
    messages = [{"role": role, "content": content} for role, content in prompt]
    if not messages:
        raise ValueError("a dataset prompt needs at least one chat message")
    if chat:
        _check_chat_tokenizer(tokenizer)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
    elif len(messages) == 1:
        text = messages[0]["content"]
    else:
        raise ValueError(
            f"a dataset prompt of {len(messages)} chat messages needs a chat template; use a "
            "tokenizer that has one (chat=true) or rebuild the prompts (prompt_source=rebuild)")
    return _as_id_list(tokenizer(text, add_special_tokens=False))


def row_prompt_ids(question: str, prompt: ChatPrompt | None, *, mode: PromptMode,
                   source: str, tokenizer: Any, chat: bool) -> list[int]:
    """A row's prompt ids: its own messages (``dataset_prompt_ids``) when ``source`` is
    ``"dataset"`` and it has them, else ours built from the question (``prompt_token_ids``)."""
    if uses_dataset_prompt(prompt, source):
        return dataset_prompt_ids(prompt, tokenizer=tokenizer, chat=chat)
    return prompt_token_ids(question, mode=mode, tokenizer=tokenizer, chat=chat)


def prompt_source_summary(prompts: Sequence[ChatPrompt | None], *, source: str,
                          mode: PromptMode) -> str:
    """One log line saying how many rows use their file's prompt and how many are built."""
    from_file = sum(uses_dataset_prompt(p, source) for p in prompts)
    built = len(prompts) - from_file
    parts = []
    if from_file:
        parts.append(f"{from_file} rows use the file's chat messages verbatim")
    if built:
        why = "asked to rebuild" if source == "rebuild" else "no chat messages in the file"
        parts.append(f"{built} rows get our {mode} prompt ({why})")
    return f"prompts (prompt_source={source}): " + "; ".join(parts)
