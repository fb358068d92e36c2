"""The token-exact loss mask (SPEC §4).

A response token is trained on only if the policy wrote it and, with
information masking on, none of its bytes lies inside an
`<information>…</information>` span (tags included). Spans are found in the
bytes of the response tokens themselves (the sampler's token -> bytes table),
so a tag split over several tokens or merged with neighbouring text, a
multi-line block, and a block left open at the length cap are all exact; no
decoded text is ever re-tokenised.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ssrl_jax.protocol import INFORMATION_CLOSE, INFORMATION_OPEN
from ssrl_jax.sampler.sources import TokenSource

_OPEN, _CLOSE = INFORMATION_OPEN.encode(), INFORMATION_CLOSE.encode()


def information_spans(text: bytes) -> list[tuple[int, int]]:
    """Byte spans [start, end) of information blocks, tags included.

    A block opened but never closed runs to the end of `text` (the response
    was cut at the length cap while the model was writing information).
    """
    spans = []
    position = 0
    while (start := text.find(_OPEN, position)) >= 0:
        close = text.find(_CLOSE, start + len(_OPEN))
        if close < 0:
            spans.append((start, len(text)))
            break
        position = close + len(_CLOSE)
        spans.append((start, position))
    return spans


def tokens_touching_spans(lengths: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which tokens have a byte inside any span.

    lengths: [T] bytes per token, in order -> [T] bool. A token with no bytes
    (a special token) counts as inside when it sits strictly within a span.
    """
    ends = np.cumsum(lengths)
    starts = ends - lengths
    inside = np.zeros(lengths.shape, bool)
    for span_start, span_end in spans:
        overlaps = (starts < span_end) & (ends > span_start)
        empty_within = (lengths == 0) & (starts > span_start) & (starts < span_end)
        inside |= overlaps | empty_within
    return inside


def information_mask(tokens: np.ndarray, sources: np.ndarray, token_bytes: Sequence[bytes]) -> np.ndarray:
    """Response tokens inside information blocks.

    tokens, sources: [B, T] -> [B, T] bool. Only policy-written and injected
    tokens form the response text searched for blocks (the prompt's own
    instructions mention the tags and must not open a span).
    """
    byte_lengths = np.fromiter((len(b) for b in token_bytes), np.int64, len(token_bytes))
    inside = np.zeros(tokens.shape, bool)
    for row in range(tokens.shape[0]):
        response = np.flatnonzero((sources[row] == TokenSource.POLICY)
                                  | (sources[row] == TokenSource.INJECTED))
        if response.size == 0:
            continue
        ids = tokens[row, response]
        text = b"".join(token_bytes[i] for i in ids)
        spans = information_spans(text)
        if spans:
            inside[row, response] = tokens_touching_spans(byte_lengths[ids], spans)
    return inside


def loss_mask(tokens: np.ndarray, sources: np.ndarray, token_bytes: Sequence[bytes],
              mask_information: bool = True) -> np.ndarray:
    """The mask of trained-on tokens: policy-written, and outside information blocks if asked.

    tokens, sources: [B, T] -> [B, T] float32 (1.0 = trained on). Prompt,
    padding and injected tokens are always 0.
    """
    trained = sources == TokenSource.POLICY
    if mask_information:
        trained &= ~information_mask(tokens, sources, token_bytes)
    return trained.astype(np.float32)
