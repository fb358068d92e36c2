"""The evaluation benchmarks of SPEC §6 and where their files live. Pure Python, no JAX.

Every benchmark is one FlashRAG jsonl file under a data directory, at the path FlashRAG's
collection (``RUC-NLPIR/FlashRAG_datasets`` on the Hugging Face hub) uses:
``<data_dir>/<benchmark>/<split>.jsonl``, one JSON object per line with ``id`` (string),
``question`` (string) and ``golden_answers`` (non-empty list of strings). The split is the one
the Search-R1 / SSRL papers evaluate on: ``test`` where the dataset publishes test answers,
else ``dev``. BrowseComp is not in FlashRAG's collection: convert OpenAI's test set (1,266
rows, ``problem`` / ``answer``) to the same layout at ``browsecomp/test.jsonl``. The toy
world's test questions (``toyworld_1hop``, ``toyworld_2hop``) ship in the same layout under
``ssrl_jax/assets/toyworld/benchmarks`` (``toyworld_data_dir()``).

An evaluation may also name QA files directly (``*.parquet``, ``*.jsonl``, ``*.json``), such as
Search-R1's ``test.parquet`` (verl layout, several ``data_source`` values in one file): each
``data_source`` in the file is then one benchmark (``load_eval_sets``).

``limit`` keeps a seeded random sample of each benchmark's questions (in file order; a larger
limit with the same seed keeps every question of a smaller one), not the first N.

    rows = load_benchmark("nq", "/data/flashrag", limit=100, seed=0)   # list[QARow]
    sets = load_eval_sets(parse_eval_specs("nq,/data/test.parquet"), "/data/flashrag")
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
from collections.abc import Iterable, Sequence

from etils import epath

from ssrl_jax.data.qa import DataError, QARow, read_jsonl, read_qa
from ssrl_jax.package_files import asset_path

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkFileError",
    "EvalSet",
    "QA_FILE_SUFFIXES",
    "benchmark_path",
    "bundled_data_dir",
    "get_benchmark",
    "is_file_spec",
    "load_benchmark",
    "load_eval_sets",
    "parse_benchmarks",
    "parse_eval_specs",
    "question_indices",
    "resolve_data_dir",
    "toyworld_data_dir",
]

QA_FILE_SUFFIXES = (".parquet", ".jsonl", ".json")

FLASHRAG_URL = "https://huggingface.co/datasets/RUC-NLPIR/FlashRAG_datasets"
BROWSECOMP_URL = "https://openaipublic.blob.core.windows.net/simple-evals/browse_comp_test_set.csv"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark: its registry name, file and kind.

    ``file`` is relative to the data directory. ``category`` is the paper's grouping
    (``general``, ``multi-hop`` or ``hard``); ``num_rows`` is the size of the full file, for
    reference only (a file of another size is still read).
    """

    name: str
    display_name: str
    split: str
    category: str
    num_rows: int
    source: str

    @property
    def file(self) -> str:
        return f"{self.name}/{self.split}.jsonl"

    @property
    def multi_hop(self) -> bool:
        return self.category != "general"


_FLASHRAG = f"FlashRAG's collection ({FLASHRAG_URL})"
_TOYWORLD = ("the toy world (docs/toyworld.md): shipped under ssrl_jax/assets/toyworld/"
             "benchmarks; `python -m ssrl_jax.toyworld.pretrain --out DIR` writes them to "
             "DIR/benchmarks")
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("nq", "NQ", "test", "general", 3610, _FLASHRAG),
        Benchmark("triviaqa", "TriviaQA", "test", "general", 11313, _FLASHRAG),
        Benchmark("popqa", "PopQA", "test", "general", 14267, _FLASHRAG),
        Benchmark("hotpotqa", "HotpotQA", "dev", "multi-hop", 7405, _FLASHRAG),
        Benchmark("2wikimultihopqa", "2WikiMultiHopQA", "dev", "multi-hop", 12576, _FLASHRAG),
        Benchmark("musique", "Musique", "dev", "multi-hop", 2417, _FLASHRAG),
        Benchmark("bamboogle", "Bamboogle", "test", "multi-hop", 125, _FLASHRAG),
        Benchmark(
            "browsecomp", "BrowseComp", "test", "hard", 1266,
            f"OpenAI's BrowseComp test set ({BROWSECOMP_URL}; decrypt it and write each "
            "problem as 'question' and its answer as the one entry of 'golden_answers')",
        ),
        Benchmark("toyworld_1hop", "Toy world 1-hop", "test", "general", 58, _TOYWORLD),
        Benchmark("toyworld_2hop", "Toy world 2-hop", "test", "multi-hop", 28, _TOYWORLD),
    )
}
# Other spellings people use on the command line.
_ALIASES = {"2wiki": "2wikimultihopqa", "2wikimqa": "2wikimultihopqa", "hotpot": "hotpotqa",
            "trivia": "triviaqa", "browse_comp": "browsecomp"}


class BenchmarkFileError(DataError, FileNotFoundError):
    """A benchmark's file is missing; the message says where to put it and what it holds."""


def get_benchmark(name: str) -> Benchmark:
    """The registry entry for ``name`` (case-insensitive; a few aliases such as ``2wiki``)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def parse_benchmarks(spec: str | Iterable[str]) -> list[Benchmark]:
    """Benchmarks from ``"nq,hotpotqa"`` or ``("nq", "hotpotqa")``, in order, duplicates dropped."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"no benchmark named; expected some of {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(get_benchmark(n) for n in names))


def bundled_data_dir() -> pathlib.Path:
    """The sample data directory shipped in the package: ``nq/test.jsonl`` and
    ``hotpotqa/dev.jsonl``, 24 questions each written for this project (not dataset rows)."""
    return asset_path("data", "benchmarks")


def toyworld_data_dir() -> pathlib.Path:
    """The shipped toy world's test questions: ``toyworld_1hop/test.jsonl`` and
    ``toyworld_2hop/test.jsonl`` (docs/toyworld.md)."""
    return asset_path("toyworld", "benchmarks")


def resolve_data_dir(data_dir: str) -> str:
    """'bundled' and 'toyworld' name the shipped directories; any other value is a path."""
    named = {"bundled": bundled_data_dir, "toyworld": toyworld_data_dir}
    return str(named[data_dir]()) if data_dir in named else data_dir


def benchmark_path(benchmark: Benchmark | str, data_dir: str | epath.PathLike) -> epath.Path:
    """``<data_dir>/<name>/<split>.jsonl``."""
    if isinstance(benchmark, str):
        benchmark = get_benchmark(benchmark)
    return epath.Path(data_dir) / benchmark.file


def _missing_file_message(benchmark: Benchmark, path: epath.Path, data_dir) -> str:
    return (
        f"benchmark '{benchmark.name}' ({benchmark.display_name}, {benchmark.split} split): "
        f"{path} does not exist. Put the file at <data_dir>/{benchmark.file} with "
        f"data_dir={data_dir}; it comes from {benchmark.source}. It must be jsonl: one JSON "
        'object per line with "id" (string), "question" (string) and "golden_answers" '
        '(non-empty list of strings), e.g. {"id": "test_0", "question": "who wrote hamlet", '
        '"golden_answers": ["William Shakespeare", "Shakespeare"]}.'
    )


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def question_indices(num_rows: int, limit: int | None, seed: int) -> list[int]:
    """Which of ``num_rows`` questions an evaluation keeps, in file order.

    All of them when ``limit`` is None or not below ``num_rows``; else the first ``limit``
    of a permutation drawn by ``random.Random(seed)``, so a larger limit keeps every question
    of a smaller one and the sample does not depend on the Python or NumPy version.
    """
    _check_limit(limit)
    if limit is None or limit >= num_rows:
        return list(range(num_rows))
    order = list(range(num_rows))
    random.Random(seed).shuffle(order)
    return sorted(order[:limit])


def load_benchmark(name: str | Benchmark, data_dir: str | epath.PathLike,
                   limit: int | None = None, seed: int = 0) -> list[QARow]:
    """The rows of one benchmark in file order; a seeded sample of ``limit`` when given
    (``question_indices``).

    Rows get ``data_source`` = the benchmark name unless the file sets one. Raises
    ``BenchmarkFileError`` when the file is missing and ``DataError`` (naming file, row and
    field) for a bad row.
    """
    benchmark = get_benchmark(name) if isinstance(name, str) else name
    _check_limit(limit)
    if not epath.Path(data_dir).is_dir():
        raise BenchmarkFileError(
            f"data_dir {data_dir} is not a directory; it must hold the benchmark files in "
            f"FlashRAG's layout (<data_dir>/{benchmark.file}, ...)")
    path = benchmark_path(benchmark, data_dir)
    if not path.is_file():
        raise BenchmarkFileError(_missing_file_message(benchmark, path, data_dir))
    rows = read_jsonl(path, data_source=benchmark.name)
    return [rows[i] for i in question_indices(len(rows), limit, seed)]


def is_file_spec(spec: str) -> bool:
    """Whether a benchmark spec names a QA file (by its suffix) rather than a registry entry."""
    return str(spec).strip().lower().endswith(QA_FILE_SUFFIXES)


def parse_eval_specs(spec: str | Iterable[str]) -> list[Benchmark | str]:
    """``parse_benchmarks``, but a spec ending in ``QA_FILE_SUFFIXES`` stays a file path."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"no benchmark named; expected some of {', '.join(BENCHMARKS)} or "
                         f"QA files ({', '.join(QA_FILE_SUFFIXES)})")
    return list(dict.fromkeys(n if is_file_spec(n) else get_benchmark(n) for n in names))


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The questions of one benchmark that an evaluation runs.

    ``rows`` are in file order (a seeded sample when limited); ``indices`` are their positions
    in ``file`` (they seed each question's samples). ``split`` is "" for a QA file named
    directly.
    """

    name: str
    display_name: str
    split: str
    category: str
    file: str
    rows: list[QARow]
    indices: list[int]


def _file_sets(path: str, limit: int | None, seed: int) -> list[EvalSet]:
    """One ``EvalSet`` per ``data_source`` of a QA file, in order of first appearance."""
    if not epath.Path(path).is_file():
        raise BenchmarkFileError(f"benchmark file {path} does not exist")
    rows = read_qa(path)
    by_source: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_source.setdefault(row.data_source, []).append(i)
    sets = []
    for source, positions in by_source.items():
        keep = [positions[i] for i in question_indices(len(positions), limit, seed)]
        known = BENCHMARKS.get(_ALIASES.get(source.lower(), source.lower()))
        sets.append(EvalSet(
            name=source, display_name=known.display_name if known else source, split="",
            category=known.category if known else "other", file=str(path),
            rows=[rows[i] for i in keep], indices=keep))
    return sets


def load_eval_sets(specs: Sequence[Benchmark | str], data_dir: str | epath.PathLike | None,
                   *, limit: int | None = None, seed: int = 0) -> list[EvalSet]:
    """The questions of each spec of ``parse_eval_specs``: a registry benchmark under
    ``data_dir``, or every ``data_source`` of a QA file (e.g. Search-R1's ``test.parquet``).

    Two specs giving the same benchmark name is an error (their results would collide).
    """
    sets: list[EvalSet] = []
    for spec in specs:
        if isinstance(spec, Benchmark):
            if data_dir is None:
                raise BenchmarkFileError(f"benchmark '{spec.name}' needs a data_dir")
            rows = load_benchmark(spec, data_dir)
            keep = question_indices(len(rows), limit, seed)
            sets.append(EvalSet(spec.name, spec.display_name, spec.split, spec.category,
                                str(benchmark_path(spec, data_dir)),
                                [rows[i] for i in keep], keep))
        else:
            sets.extend(_file_sets(spec, limit, seed))
    names = [s.name for s in sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"benchmarks {duplicates} are given more than once (by name or by a "
                        "file's data_source); evaluate each once")
    return sets
