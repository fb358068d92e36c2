"""The one guard every CLI passes before replacing an output directory (`--overwrite`).

A command may replace only what it wrote itself. `check_replaceable(out, ...)` refuses,
naming the flag and the path, when replacing `out` would delete

- one of the command's inputs, or a directory holding one (`--out` equal to or above
  `--checkpoint` / `--corpus`), or a directory inside an input;
- a training workdir or checkpoints (`checkpoints/`, `metrics.jsonl`, Orbax step data);
- any entry the command does not write itself (`is_own(name)` is False for it).

A missing or empty `out` is always fine. Paths are compared after resolving symlinks.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from ssrl_jax.cli_errors import UserError

# What marks a training workdir or an Orbax checkpoint tree.
_WORKDIR_MARKERS = ("checkpoints", "metrics.jsonl", "_CHECKPOINT_METADATA")
_MARKER_SEARCH_DEPTH = 3


class UnsafeOverwriteError(UserError, ValueError):
    """Replacing the output directory would delete something the command did not write."""


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _within(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or lies below it."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _workdir_marker(out: str) -> str | None:
    """The first workdir / checkpoint marker under `out` (a few levels deep), or None."""
    base_depth = out.rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(out):
        for name in (*dirs, *files):
            if name in _WORKDIR_MARKERS:
                return os.path.join(root, name)
        if root.count(os.sep) - base_depth >= _MARKER_SEARCH_DEPTH - 1:
            dirs[:] = []
    return None


def check_replaceable(out: str | os.PathLike, *, flag: str,
                      inputs: Iterable[tuple[str, str | os.PathLike]] = (),
                      is_own: Callable[[str], bool] = lambda name: True,
                      what: str = "this command's output") -> None:
    """Raises UnsafeOverwriteError unless replacing `out` deletes only `what` the command wrote.

    inputs: (flag, path) of every input the command reads.
    is_own: whether a top-level entry name of `out` is one the command writes.
    """
    real_out = _real(out)
    for input_flag, path in inputs:
        real_in = _real(path)
        if _within(real_in, real_out):
            raise UnsafeOverwriteError(
                f"{flag} {out}: contains the input {input_flag} {path}; replacing it would "
                f"delete the input. Choose an {flag} outside it")
    if not os.path.isdir(real_out) or not os.listdir(real_out):
        return
    for input_flag, path in inputs:
        if _within(real_out, _real(path)):
            raise UnsafeOverwriteError(
                f"{flag} {out}: lies inside the input {input_flag} {path}; it will not be "
                f"replaced. Choose an {flag} outside it")
    marker = _workdir_marker(real_out)
    if marker is not None:
        raise UnsafeOverwriteError(
            f"{flag} {out}: holds a training workdir or checkpoints ({marker}); it will not be "
            f"replaced, --overwrite or not. Choose another {flag}")
    foreign = sorted(name for name in os.listdir(real_out) if not is_own(name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise UnsafeOverwriteError(
            f"{flag} {out}: holds entries that are not {what} ({shown}); it will not be "
            f"replaced, --overwrite or not. Move them away or choose another {flag}")
