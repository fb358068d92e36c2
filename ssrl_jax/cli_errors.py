"""One error style for every command line: ``error: <what>, <where>, <what to do>``, exit 2.

Library code raises a `UserError` (or a subclass: `ConfigFieldError`, `DataError`,
`CheckpointError`, ...) where it detects input the user can fix; each command's `main`
is wrapped in `cli_main`, which prints the message on stderr and exits with
`EXIT_USER_ERROR` instead of a traceback. Anything else is a bug and keeps its
traceback. Standard library only, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

EXIT_USER_ERROR = 2  # what argparse uses for bad flags
_Fn = TypeVar("_Fn", bound=Callable)


class UserError(Exception):
    """Input the user can fix. ``str()`` is ``"<what>, <where>, <what to do>"``.

    `where` (a file and line, a flag, a config field) and `fix` are optional so that a
    subclass raised with one complete sentence keeps working.
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(", ".join(part for part in (what, where, fix) if part))


def exit_user_error(message: str) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with `EXIT_USER_ERROR`."""
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


# OS errors about a path the user gave: the path is in `filename`.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def user_message(error: BaseException) -> str | None:
    """The one-line message of a user error; None for anything that is a bug."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, _PATH_ERRORS) and error.filename is not None:
        return f"{error.strerror or type(error).__name__}, {error.filename}, check the path"
    if isinstance(error, UnicodeDecodeError):
        return (f"not UTF-8 text (byte {error.start + 1}: {error.object[error.start:error.end]!r}),"
                " in an input file, convert the file to UTF-8")
    return None


def cli_main(main: _Fn) -> _Fn:
    """Decorates a command's `main`: user errors print one line and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised unless it is the user's
            message = user_message(error)
            if message is None:
                raise
            exit_user_error(message)

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse with our error line; subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        exit_user_error(f"{message}, in the arguments of {self.prog}, "
                        f"see `{self.prog} --help`")


# ------------------------------------------------------- absl / config flags ----

def config_flag_error(error: Exception, argv: Sequence[str], *, fields_hint: str) -> UserError:
    """A UserError naming the flag that `error` (raised while parsing `argv`) is about.

    `fields_hint` says where the valid fields are listed (e.g. a config file).
    """
    from absl import flags

    if isinstance(error, (KeyError, AttributeError)):
        # ml_collections: KeyError("'name'\nDid you mean \"names\" instead of \"name\"?")
        text = str(error.args[0] if error.args else error)
        found = re.search(r"[A-Za-z_]\w*", text)
        name = found.group(0) if found else text
        flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                     and re.search(rf"[.]{re.escape(name)}(?:[.]|$)", a.split("=")[0])),
                    f"--config.{name}")
        guess = re.search(r'Did you mean "([^"]+)"', text)
        fix = f"use a field listed in {fields_hint}"
        return UserError(f"unknown config field {name!r}", flag,
                         f"did you mean {guess.group(1)!r}? ({fix})" if guess else fix)
    if isinstance(error, SyntaxError):
        return UserError(f"the config file is not Python ({error.msg}, line {error.lineno})",
                         f"--config {error.filename}", "pass a config file such as "
                         f"{fields_hint}")
    if isinstance(error, OSError):
        path = _config_path(argv)
        problem = ("not found" if path and not os.path.isfile(path.split(":")[0])
                   else f"cannot be loaded ({_first_line(_root_cause(error))})")
        return UserError(f"config file {problem}", f"--config {path or ''}".strip(),
                         f"pass an existing config file such as {fields_hint}")
    if isinstance(error, flags.Error):
        return UserError(str(error), "on the command line", "see --help for the flags")
    return UserError(str(error), "on the command line", f"check the flags against {fields_hint}")


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _first_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def parse_config_flags(flag_values, argv: Sequence[str], *, fields_hint: str,
                       config_flag: str = "config") -> list[str]:
    """`flag_values(argv)` plus loading the config file; bad flags raise `UserError`.

    Returns the arguments left over (argv[0] first). The config file is loaded here
    because `config_flags` loads it lazily, on first access.
    """
    try:
        rest = flag_values(list(argv))
        config = flag_values[config_flag].value
        if config is not None:
            config.keys()  # a config that failed to load raises here, naming the failure
    except Exception as error:  # noqa: BLE001 - mapped or re-raised
        from absl import flags

        if not isinstance(error, (flags.Error, KeyError, AttributeError, OSError, SyntaxError,
                                  ValueError, TypeError)):
            raise
        raise config_flag_error(error, argv, fields_hint=fields_hint) from None
    return rest


# ------------------------------------------------------------- input files ----

def utf8_lines(lines: Iterable[bytes], name: str, *,
               error: type[UserError] = UserError) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of a file read in binary; bad UTF-8 raises `error`
    naming the file and the line."""
    for line_no, raw in enumerate(lines, start=1):
        try:
            yield line_no, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"not UTF-8 text (byte {e.start + 1} of the line is "
                        f"{raw[e.start:e.end]!r})", f"{name}: line {line_no}",
                        "convert the file to UTF-8 (e.g. iconv -t UTF-8)") from None


def read_json_file(path: str | os.PathLike, *, error: type[UserError] = UserError) -> Any:
    """The JSON value in the file at `path`; invalid JSON or UTF-8 raises `error` naming it."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text (byte {e.start + 1})", os.fspath(path),
                    "convert the file to UTF-8") from None
    except json.JSONDecodeError as e:
        raise error(f"invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                    os.fspath(path), "fix or replace the file") from None
