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

    rows = load_benchmark("nq", "/data/flashrag", limit=100)   # list[QARow]
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable

from etils import epath

from ssrl_jax.data.qa import DataError, QARow, read_jsonl
from ssrl_jax.package_files import asset_path

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkFileError",
    "benchmark_path",
    "bundled_data_dir",
    "get_benchmark",
    "load_benchmark",
    "parse_benchmarks",
    "resolve_data_dir",
    "toyworld_data_dir",
]

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


def load_benchmark(name: str | Benchmark, data_dir: str | epath.PathLike,
                   limit: int | None = None) -> list[QARow]:
    """The rows of one benchmark, in file order; the first ``limit`` when given.

    Rows get ``data_source`` = the benchmark name unless the file sets one. Raises
    ``BenchmarkFileError`` when the file is missing and ``DataError`` (naming file, row and
    field) for a bad row.
    """
    benchmark = get_benchmark(name) if isinstance(name, str) else name
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if not epath.Path(data_dir).is_dir():
        raise BenchmarkFileError(
            f"data_dir {data_dir} is not a directory; it must hold the benchmark files in "
            f"FlashRAG's layout (<data_dir>/{benchmark.file}, ...)")
    path = benchmark_path(benchmark, data_dir)
    if not path.is_file():
        raise BenchmarkFileError(_missing_file_message(benchmark, path, data_dir))
    rows = read_jsonl(path, data_source=benchmark.name)
    return rows if limit is None else rows[:limit]
