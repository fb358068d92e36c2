"""How much of the KV cache each decode step reads.

A decode step with the cache filled up to slot `end` needs only slots [0, end + 1).
Reading all S preallocated slots at every step costs up to S / end times the KV bytes
(on a TPU pod, most of a decode step's HBM traffic). The decode loop therefore runs
in a few windows: while the cache holds fewer than w tokens, steps attend over the
first w slots only (a static slice, so the attention stays exact and shapes stay
static), and the loop moves to the next window when the cache passes w. Each window
is one more compiled loop body, so windows are few and never narrower than
`MIN_WINDOW_SPAN` slots.
"""

from __future__ import annotations

DEFAULT_KV_WINDOWS = 4
MIN_WINDOW_SPAN = 64
WINDOW_MULTIPLE = 8


def kv_windows(start: int, cache_len: int, count: int) -> tuple[int, ...]:
    """Ascending window sizes over cache slots [start, cache_len]; the last is cache_len.

    start: slots known to be filled before decoding (the prompt bucket; 0 if unknown).
    count: at most this many windows, evenly spaced, each at least `MIN_WINDOW_SPAN`
    slots wider than the previous one and rounded up to a multiple of `WINDOW_MULTIPLE`.
    count 1 (or a span too short to split) gives (cache_len,): every step reads all.
    """
    if count < 1:
        raise ValueError(f"kv_windows: count must be >= 1, got {count}")
    if not 0 <= start < cache_len:
        raise ValueError(f"kv_windows: need 0 <= start < cache_len, got {start}, {cache_len}")
    span = cache_len - start
    count = max(1, min(count, span // MIN_WINDOW_SPAN))
    windows = []
    for k in range(1, count + 1):
        edge = start + -(-span * k // count)
        edge = min(cache_len, -(-edge // WINDOW_MULTIPLE) * WINDOW_MULTIPLE)
        if not windows or edge > windows[-1]:
            windows.append(edge)
    return tuple(windows)


def slots_read(windows: tuple[int, ...], end: int) -> int:
    """Slots a decode step reads when the cache is filled up to `end` (< windows[-1])."""
    return next(w for w in windows if end < w)
