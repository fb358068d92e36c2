"""QA data: the canonical row, its validation, and readers for the on-disk layouts (SPEC §5, §6).

Canonical row: ``QARow(id, question, golden_answers, data_source, prompt=None)``; ``prompt``
is the row's own chat messages when its file carries them (verl's ``prompt`` column), kept so
that training and evaluation can use the file's exact prompt (``ssrl_jax.data.prompts``).

Layouts read:

- **FlashRAG jsonl** (``.jsonl`` / ``.json``, one JSON object per line): ``id``, ``question``,
  ``golden_answers`` (a non-empty list of strings) and an optional ``data_source`` (default: the
  ``data_source`` argument, else the file stem). Other keys (FlashRAG's ``metadata``) are ignored.
- **verl / Search-R1 parquet** (``.parquet``): ``data_source``, ``prompt`` (chat messages),
  ``reward_model.ground_truth.target`` (gold strings) and ``extra_info.index`` / ``.split``. The
  question comes from a ``question`` column when there is one (Search-R1's files keep FlashRAG's
  columns), else from the last user message (see ``extract_question``); the id from an ``id``
  column, else ``f"{split}_{index}"`` from ``extra_info`` (FlashRAG's own id form), else
  ``f"{file stem}_{row}"``. The ``prompt`` messages are kept on the row. A parquet file without
  ``prompt``/``reward_model`` columns is read as FlashRAG columns (a FlashRAG jsonl row may also
  carry a ``prompt`` list of ``{role, content}`` messages).
- **Hugging Face hub** names through ``datasets.load_dataset`` (``load_hf_dataset``), either layout.

Paths may be local or any ``etils.epath`` URL (``gs://`` on TPU VMs). Every bad row raises
``DataError`` naming the file, the row and the field. Rows are numbered as a person finds them:
the 1-based line number in jsonl, the 0-based row index in parquet and hub datasets
(``table.slice(i, 1)``, ``dataset[i]``).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from etils import epath

from ssrl_jax.cli_errors import UserError, utf8_lines
from ssrl_jax.package_files import asset_path

__all__ = [
    "DataError",
    "QARow",
    "extract_question",
    "load_hf_dataset",
    "read_jsonl",
    "read_parquet",
    "read_qa",
    "row_from_flashrag",
    "row_from_verl",
    "sample_data_path",
    "write_jsonl",
]

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
HF_PREFIX = "hf:"
_REPR_LIMIT = 80
# "Question:" marker (any case); the question is the rest of that line, or the next non-empty one.
_QUESTION_RE = re.compile(r"\bquestion\s*:", re.IGNORECASE)


class DataError(UserError, ValueError):
    """A QA file or row that cannot be used; the message names the file, the row and the field."""


@dataclass(frozen=True)
class QARow:
    """One question with its accepted answers, and its file's own prompt when it has one.

    ``golden_answers`` is stored as a tuple (a list given to the constructor is converted), and
    ``prompt`` as ``((role, content), ...)`` (``{role, content}`` dicts are converted), so rows
    are hashable and safe to share between pipeline threads.
    """

    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str
    prompt: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.golden_answers, tuple):
            object.__setattr__(self, "golden_answers", tuple(self.golden_answers))
        if self.prompt is not None:
            pairs = tuple((m["role"], m["content"]) if isinstance(m, Mapping) else tuple(m)
                          for m in self.prompt)
            object.__setattr__(self, "prompt", pairs)

    def to_dict(self) -> dict[str, Any]:
        """The row as FlashRAG JSON: ``{id, question, golden_answers: [str], data_source}``,
        plus ``prompt: [{role, content}]`` when the row has one."""
        out: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "golden_answers": list(self.golden_answers),
            "data_source": self.data_source,
        }
        if self.prompt is not None:
            out["prompt"] = [{"role": r, "content": c} for r, c in self.prompt]
        return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _fail(where: str, field: str, problem: str, value: Any = ...) -> DataError:
    got = "" if value is ... else f", got {_short(value)}"
    return DataError(f"{where}: field '{field}' {problem}{got}")


def _required(raw: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in raw or raw[key] is None:
        raise _fail(where, key, "is missing")
    return raw[key]


def _check_id(value: Any, where: str, field: str = "id") -> str:
    # Integers are accepted (some exports number rows) and become strings; bools are not ints here.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, field, "must be a non-empty string", value)
    return value


def _check_text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, field, "must be a non-empty string", value)
    return value.strip()


def _check_golds(value: Any, where: str, field: str) -> tuple[str, ...]:
    # A bare string is refused on purpose: it is usually a bug upstream (one answer split per
    # character, or a forgotten list), and an empty gold would make an empty answer "correct".
    if (
        isinstance(value, (str, bytes, Mapping))
        or not isinstance(value, Sequence)
        or len(value) == 0
        or not all(isinstance(g, str) and g.strip() for g in value)
    ):
        raise _fail(where, field, "must be a non-empty list of non-empty strings", value)
    return tuple(value)


def _check_prompt(value: Any, where: str) -> tuple[tuple[str, str], ...] | None:
    """A ``prompt`` field: None, or a non-empty list of ``{role, content}`` chat messages."""
    if value is None:
        return None
    problem = "must be a non-empty list of chat messages {role, content} (strings)"
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) or not value:
        raise _fail(where, "prompt", problem, value)
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise _fail(where, f"prompt[{i}]", problem, message)
        extra = sorted(k for k, v in message.items() if k not in ("role", "content")
                       and v is not None)
        if extra:
            raise _fail(where, f"prompt[{i}]", f"has fields {extra}; only role and content "
                        "are read", message)
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role or not isinstance(content, str):
            raise _fail(where, f"prompt[{i}]", problem, message)
        messages.append((role, content))
    return tuple(messages)


def row_from_flashrag(raw: Any, *, where: str, default_source: str) -> QARow:
    """Validate one FlashRAG record (``id``, ``question``, ``golden_answers``, ``data_source``?,
    ``prompt``?)."""
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: must be a JSON object, got {type(raw).__name__} {_short(raw)}")
    source = raw.get("data_source")
    return QARow(
        id=_check_id(_required(raw, "id", where), where),
        question=_check_text(_required(raw, "question", where), where, "question"),
        golden_answers=_check_golds(
            _required(raw, "golden_answers", where), where, "golden_answers"
        ),
        data_source=default_source if source is None else _check_text(source, where, "data_source"),
        prompt=_check_prompt(raw.get("prompt"), where),
    )


def extract_question(messages: Any, *, where: str = "prompt") -> str:
    """Recover the question from a verl ``prompt`` (a list of ``{role, content}`` messages).

    Rule: take the last ``user`` message, find the **last** ``Question:`` marker in it (any case),
    and return the rest of that line, stripped; when the marker ends its line, the next non-empty
    line. Search-R1's prompts end with ``"... Question: {question}\\n"`` and SSRL's follow the same
    shape; taking the last marker skips any worked example earlier in the instruction, and
    stopping at the line end drops any trailing text such as an answer cue. A prompt with no
    marker raises ``DataError`` (add a ``question`` column instead).
    """
    field = "prompt"
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise _fail(where, field, "must be a list of chat messages {role, content}", messages)
    users = [
        m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"
    ]
    if not users or not isinstance(users[-1].get("content"), str):
        raise _fail(where, field, "has no user message with string content", messages)
    content = users[-1]["content"]
    markers = list(_QUESTION_RE.finditer(content))
    if not markers:
        raise _fail(
            where, field, "has no 'Question:' marker to recover the question from; "
            "add a 'question' column", content
        )
    rest = content[markers[-1].end():]
    for line in rest.splitlines():
        if line.strip():
            return line.strip()
    raise _fail(where, field, "has nothing after its last 'Question:' marker", content)


def _nested(raw: Mapping[str, Any], path: Sequence[str], where: str) -> Any:
    value: Any = raw
    for depth, key in enumerate(path):
        if not isinstance(value, Mapping) or value.get(key) is None:
            raise _fail(where, ".".join(path[: depth + 1]), "is missing")
        value = value[key]
    return value


def _verl_id(raw: Mapping[str, Any], where: str, fallback: str) -> str:
    if raw.get("id") is not None:
        return _check_id(raw["id"], where)
    info = raw.get("extra_info")
    if isinstance(info, Mapping) and info.get("index") is not None:
        index = _check_id(info["index"], where, "extra_info.index")
        split = info.get("split")
        if split is None:
            return index
        return f"{_check_text(split, where, 'extra_info.split')}_{index}"
    return fallback


def row_from_verl(raw: Mapping[str, Any], *, where: str, fallback_id: str) -> QARow:
    """Validate one verl / Search-R1 record (``data_source``, ``prompt``, ``reward_model``, ...)."""
    question = raw.get("question")
    if question is None:
        question = extract_question(_required(raw, "prompt", where), where=where)
    target = ("reward_model", "ground_truth", "target")
    return QARow(
        id=_verl_id(raw, where, fallback_id),
        question=_check_text(question, where, "question"),
        golden_answers=_check_golds(_nested(raw, target, where), where, ".".join(target)),
        data_source=_check_text(_required(raw, "data_source", where), where, "data_source"),
        prompt=_check_prompt(raw.get("prompt"), where),
    )


def _is_verl(columns: Iterable[str]) -> bool:
    names = set(columns)
    return "reward_model" in names or "prompt" in names


def read_jsonl(path: str | epath.PathLike, *, data_source: str | None = None) -> list[QARow]:
    """Read a FlashRAG jsonl file; blank lines are skipped, rows are numbered by line (1-based)."""
    path = epath.Path(path)
    default_source = data_source or path.stem
    rows = []
    with path.open("rb") as f:
        for line_no, line in utf8_lines(f, str(path), error=DataError):
            if not line.strip():
                continue
            where = f"{path}: row {line_no}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{where}: invalid JSON ({e.msg} at column {e.colno}); "
                    "expected one JSON object per line"
                ) from None
            rows.append(row_from_flashrag(raw, where=where, default_source=default_source))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_parquet(path: str | epath.PathLike, *, data_source: str | None = None) -> list[QARow]:
    """Read a verl/Search-R1 parquet file (or one with FlashRAG columns); rows numbered from 0."""
    import pyarrow.parquet as pq

    path = epath.Path(path)
    try:
        with path.open("rb") as f:
            table = pq.read_table(f)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError.
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    return _rows_from_records(
        table.to_pylist(), table.column_names, str(path), data_source or path.stem
    )


def _rows_from_records(
    records: Iterable[Mapping[str, Any]], columns: Sequence[str], name: str, default_source: str
) -> list[QARow]:
    verl = _is_verl(columns)
    rows = []
    for i, raw in enumerate(records):
        where = f"{name}: row {i}"
        if verl:
            rows.append(row_from_verl(raw, where=where, fallback_id=f"{default_source}_{i}"))
        else:
            rows.append(row_from_flashrag(raw, where=where, default_source=default_source))
    if not rows:
        raise DataError(f"{name}: no rows")
    return rows


def load_hf_dataset(
    name: str,
    split: str,
    *,
    config: str | None = None,
    data_source: str | None = None,
    **load_kwargs: Any,
) -> list[QARow]:
    """Read a ``datasets`` hub dataset (needs network) in either layout.

    ``load_hf_dataset("RUC-NLPIR/FlashRAG_datasets", "train", config="nq")`` reads FlashRAG's NQ.
    ``load_kwargs`` go to ``datasets.load_dataset`` (``data_files``, ``cache_dir``, ...), so a
    builder name such as ``"json"`` with ``data_files=`` reads local files the same way. Rows
    without a ``data_source`` get ``data_source``, else ``config``, else the last part of ``name``.
    """
    import datasets

    dataset = datasets.load_dataset(name, config, split=split, **load_kwargs)
    label = f"{name}{'/' + config if config else ''}[{split}]"
    default_source = data_source or config or name.rstrip("/").rsplit("/", 1)[-1]
    return _rows_from_records(dataset, dataset.column_names, label, default_source)


def read_qa(path_or_spec: str | epath.PathLike, *, data_source: str | None = None) -> list[QARow]:
    """Read QA rows from a file or a hub spec, choosing the reader by extension.

    - ``*.jsonl`` / ``*.json``: FlashRAG JSON lines (``read_jsonl``).
    - ``*.parquet``: verl / Search-R1 layout (``read_parquet``).
    - ``hf:NAME:SPLIT`` or ``hf:NAME:CONFIG:SPLIT``: a hub dataset (``load_hf_dataset``), e.g.
      ``hf:RUC-NLPIR/FlashRAG_datasets:nq:train``.

    ``data_source`` is the default for rows that carry none.
    """
    spec = str(path_or_spec)
    if spec.startswith(HF_PREFIX):
        parts = spec[len(HF_PREFIX):].split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise DataError(f"{spec}: a hub spec is 'hf:NAME:SPLIT' or 'hf:NAME:CONFIG:SPLIT'")
        config = parts[1] if len(parts) == 3 else None
        return load_hf_dataset(parts[0], parts[-1], config=config, data_source=data_source)
    suffix = epath.Path(spec).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(spec, data_source=data_source)
    if suffix in PARQUET_SUFFIXES:
        return read_parquet(spec, data_source=data_source)
    raise DataError(
        f"{spec}: unknown QA file type {suffix or '(none)'!r}; expected one of "
        f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)} or an 'hf:' spec"
    )


def write_jsonl(rows: Iterable[QARow], path: str | epath.PathLike) -> None:
    """Write rows as FlashRAG jsonl (one ``QARow.to_dict()`` per line, UTF-8, non-ASCII kept)."""
    path = epath.Path(path)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")


SAMPLE_DATA = "sample"  # the name that stands for the bundled file in data.train_files


def sample_data_path() -> pathlib.Path:
    """The bundled sample file: about 200 QA rows written for this project (FlashRAG jsonl).

    Single-hop general-knowledge questions (``data_source`` "nq") and two-hop ones ("hotpotqa");
    ids ``sample-nq-0001``, ``sample-hotpotqa-0001``, ... For the CPU quick start and tests.
    """
    return asset_path("data", "sample_qa.jsonl")
