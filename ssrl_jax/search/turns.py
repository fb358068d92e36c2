"""Where a search-agent turn ends and what it asked for, as Search-R1's agent loop reads it.

Facts from Search-R1 (`search_r1/llm_agent/generation.py`):

- a turn's text is cut right after its first ``</search>`` (else its first ``</answer>``);
  whatever the model wrote after the tag is dropped and the kept text re-tokenised;
- the turn's action is the first ``<search>…</search>`` or ``<answer>…</answer>`` pair in it
  (dot-all, body stripped); a turn with neither is an invalid action and is answered with
  `protocol.INVALID_ACTION_OBSERVATION`.

Our sampler stops a row on the token that completes the tag, and a BPE token can carry bytes
past it (``>\\n\\n``). `kept_bytes` says how much of that last token to keep and
`retokenize` gives the ids that replace it (`Sampler.resume(replace_last=...)`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# A cut token is replaced by at most this many tokens (else it is kept whole).
CUT_ROOM = 8

_ACTION_RE = re.compile(rb"<(search|answer)>(.*?)</\1>", re.DOTALL)


def first_action(text: bytes) -> tuple[str, tuple[int, int]] | None:
    """The turn's action ("search" or "answer") and the byte span of its body, or None."""
    match = _ACTION_RE.search(text)
    return None if match is None else (match.group(1).decode(), match.span(2))


def kept_bytes(text: bytes, last_len: int, tags: Sequence[str]) -> int | None:
    """Bytes of the last token to keep so that `text` ends right after a tag, or None.

    text: the turn's bytes, ending with its last token (`last_len` bytes). Only a tag that ends
    inside that token counts (the row stopped there); None when nothing follows it.
    """
    last_start = len(text) - last_len
    ends = []
    for tag in tags:
        tag_bytes = tag.encode()
        at = text.find(tag_bytes, max(0, last_start - len(tag_bytes) + 1))
        if at >= 0 and at + len(tag_bytes) > last_start:
            ends.append(at + len(tag_bytes))
    if not ends or min(ends) == len(text):
        return None
    return min(ends) - last_start


def retokenize(piece: bytes, encode: Callable[[str], list[int]],
               token_bytes: Sequence[bytes]) -> list[int] | None:
    """Token ids whose bytes are exactly `piece`: the tokenizer's own encoding when it round
    trips, else a greedy longest match over the vocabulary's byte strings; None if neither can
    (or the result is longer than `CUT_ROOM`)."""
    try:
        ids = encode(piece.decode("utf-8"))
    except UnicodeDecodeError:
        ids = None
    if ids is None or b"".join(token_bytes[i] for i in ids) != piece:
        ids = _greedy_bytes(piece, token_bytes)
    return ids if ids is not None and len(ids) <= CUT_ROOM else None


def _greedy_bytes(piece: bytes, token_bytes: Sequence[bytes]) -> list[int] | None:
    wanted = {piece[i:j] for i in range(len(piece)) for j in range(i + 1, len(piece) + 1)}
    ids_of = {}
    for token_id, data in enumerate(token_bytes):
        if data in wanted:
            ids_of.setdefault(data, token_id)
    ids, at = [], 0
    while at < len(piece):
        end = next((j for j in range(len(piece), at, -1) if piece[at:j] in ids_of), None)
        if end is None:
            return None
        ids.append(ids_of[piece[at:end]])
        at = end
    return ids
