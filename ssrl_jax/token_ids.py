"""Token-id lists given in configs and flags: "151643, 151644", (151643, 151644) or ""."""

from __future__ import annotations

from typing import Any


def parse_token_ids(value: Any) -> tuple[int, ...]:
    """The ids of a comma/space-separated string or a sequence of ints, in order, unique.

    Raises ValueError for anything that is not a list of integers >= 0.
    """
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    try:
        ids = [int(item) for item in items]
        exact = all(not isinstance(item, (bool, float)) for item in items)
    except (TypeError, ValueError):
        ids, exact = [], False
    if not exact or any(i < 0 for i in ids):
        raise ValueError(f"{value!r} is not a list of token ids (integers >= 0), e.g. '5,7'")
    return tuple(dict.fromkeys(ids))
