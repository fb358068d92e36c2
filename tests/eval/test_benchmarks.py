"""Tests for ssrl_jax.eval.benchmarks: the registry, the bundled files, missing-file errors."""

import json

import pytest

from ssrl_jax.data.qa import DataError
from ssrl_jax.eval.benchmarks import (
    BENCHMARKS,
    BenchmarkFileError,
    benchmark_path,
    bundled_data_dir,
    get_benchmark,
    load_benchmark,
    load_eval_sets,
    parse_benchmarks,
    parse_eval_specs,
    question_indices,
    toyworld_data_dir,
)
from tests.search_r1_data import INSTRUCTION, write_search_r1_parquet

EXPECTED_FILES = {
    "nq": "nq/test.jsonl",
    "triviaqa": "triviaqa/test.jsonl",
    "popqa": "popqa/test.jsonl",
    "hotpotqa": "hotpotqa/dev.jsonl",
    "2wikimultihopqa": "2wikimultihopqa/dev.jsonl",
    "musique": "musique/dev.jsonl",
    "bamboogle": "bamboogle/test.jsonl",
    "browsecomp": "browsecomp/test.jsonl",
    "toyworld_1hop": "toyworld_1hop/test.jsonl",
    "toyworld_2hop": "toyworld_2hop/test.jsonl",
}


def test_registry_names_files_and_kinds():
    assert {name: b.file for name, b in BENCHMARKS.items()} == EXPECTED_FILES
    assert [n for n, b in BENCHMARKS.items() if not b.multi_hop] == [
        "nq", "triviaqa", "popqa", "toyworld_1hop"]
    assert BENCHMARKS["browsecomp"].category == "hard"
    assert BENCHMARKS["2wikimultihopqa"].display_name == "2WikiMultiHopQA"


def test_parse_benchmarks_accepts_strings_tuples_aliases_and_drops_duplicates():
    assert [b.name for b in parse_benchmarks("nq, HotpotQA,2wiki,nq,")] == [
        "nq", "hotpotqa", "2wikimultihopqa"]
    assert [b.name for b in parse_benchmarks(("bamboogle", "musique"))] == ["bamboogle", "musique"]
    with pytest.raises(ValueError, match="unknown benchmark 'squad'.*nq, triviaqa"):
        parse_benchmarks("nq,squad")
    with pytest.raises(ValueError, match="no benchmark"):
        parse_benchmarks(" , ")
    assert get_benchmark("NQ") is BENCHMARKS["nq"]


@pytest.mark.parametrize("name,split", [("nq", "test"), ("hotpotqa", "dev")])
def test_bundled_files_load(name, split):
    rows = load_benchmark(name, bundled_data_dir())
    assert len(rows) == 24
    assert len({r.id for r in rows}) == 24
    assert all(r.data_source == name and r.golden_answers and r.question for r in rows)
    assert all(r.id.startswith(f"sample-{name}-{split}-") for r in rows)
    limited = load_benchmark(name, bundled_data_dir(), limit=5, seed=3)
    assert [r.id for r in limited] == [rows[i].id for i in question_indices(24, 5, seed=3)]
    assert benchmark_path(name, bundled_data_dir()).name == f"{split}.jsonl"


@pytest.mark.parametrize("name", ["toyworld_1hop", "toyworld_2hop"])
def test_shipped_toyworld_benchmarks_load(name):
    rows = load_benchmark(name, toyworld_data_dir())
    assert len(rows) == BENCHMARKS[name].num_rows
    assert all(r.data_source == name and r.golden_answers for r in rows)


def test_bundled_files_are_flashrag_jsonl():
    for name in ("nq", "hotpotqa"):
        lines = benchmark_path(name, bundled_data_dir()).read_text().splitlines()
        for line in lines:
            raw = json.loads(line)
            assert set(raw) == {"id", "question", "golden_answers"}
            assert isinstance(raw["golden_answers"], list) and raw["golden_answers"]


def test_missing_file_says_where_and_what(tmp_path):
    with pytest.raises(BenchmarkFileError) as info:
        load_benchmark("musique", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "musique" / "dev.jsonl") in message
    assert "<data_dir>/musique/dev.jsonl" in message and "FlashRAG" in message
    for field in ('"id"', '"question"', '"golden_answers"'):
        assert field in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)

    with pytest.raises(BenchmarkFileError, match="BrowseComp.*browse_comp_test_set.csv"):
        load_benchmark("browsecomp", tmp_path)
    with pytest.raises(BenchmarkFileError, match="not a directory"):
        load_benchmark("nq", tmp_path / "absent")


def test_bad_row_names_file_row_and_field(tmp_path):
    (tmp_path / "nq").mkdir()
    (tmp_path / "nq" / "test.jsonl").write_text(
        '{"id": "a", "question": "q?", "golden_answers": ["x"]}\n'
        '{"id": "b", "question": "q?", "golden_answers": "x"}\n')
    with pytest.raises(DataError, match=r"test.jsonl: row 2: field 'golden_answers'"):
        load_benchmark("nq", tmp_path)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_limit_must_be_positive_int(limit):
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("nq", bundled_data_dir(), limit=limit)


# --- a seeded limit samples questions -----------------------------------------------------


def test_question_indices_are_a_seeded_nested_sample_in_file_order():
    assert question_indices(10, None, seed=0) == list(range(10))
    assert question_indices(10, 10, seed=0) == question_indices(10, 50, seed=0) == list(range(10))
    five = question_indices(100, 5, seed=0)
    assert five == sorted(five) and len(set(five)) == 5
    assert five != [0, 1, 2, 3, 4]                       # not the first N
    assert question_indices(100, 5, seed=0) == five      # reproducible
    assert question_indices(100, 5, seed=1) != five      # the seed matters
    assert set(five) <= set(question_indices(100, 20, seed=0))  # a larger limit keeps these
    # Every question is equally likely to be kept.
    counts = [0] * 10
    for seed in range(2000):
        for i in question_indices(10, 3, seed=seed):
            counts[i] += 1
    assert all(abs(c / 2000 - 0.3) < 0.04 for c in counts)
    with pytest.raises(ValueError, match="limit"):
        question_indices(10, 0, seed=0)


# --- QA files named directly: Search-R1's test.parquet --------------------------------------


def flashrag_rows(name, n):
    return [{"id": f"test_{i}", "question": f"{name} question {i}",
             "golden_answers": [f"{name} answer {i}"]} for i in range(n)]


@pytest.fixture(scope="module")
def search_r1_test(tmp_path_factory):
    """Search-R1's merged test file over nq (7 rows) and hotpotqa (5 rows)."""
    path = tmp_path_factory.mktemp("search_r1") / "test.parquet"
    return write_search_r1_parquet(path, {"nq": flashrag_rows("nq", 7),
                                          "hotpotqa": flashrag_rows("hotpotqa", 5)})


def test_eval_specs_keep_files_as_paths(search_r1_test):
    specs = parse_eval_specs(f"nq, {search_r1_test},bamboogle")
    assert specs == [BENCHMARKS["nq"], search_r1_test, BENCHMARKS["bamboogle"]]
    with pytest.raises(ValueError, match="unknown benchmark 'test.csv'"):
        parse_eval_specs("test.csv")


def test_search_r1_test_parquet_is_one_benchmark_per_data_source(search_r1_test):
    nq, hotpot = load_eval_sets([search_r1_test], None)
    assert (nq.name, nq.display_name, nq.category) == ("nq", "NQ", "general")
    assert (hotpot.name, hotpot.display_name, hotpot.category) == (
        "hotpotqa", "HotpotQA", "multi-hop")
    assert nq.file == hotpot.file == search_r1_test and nq.split == ""
    assert len(nq.rows) == 7 and len(hotpot.rows) == 5
    assert nq.indices == list(range(7)) and hotpot.indices == list(range(7, 12))
    row = hotpot.rows[2]
    assert row.golden_answers == ("hotpotqa answer 2",) and row.id == "test_2"
    assert row.question.startswith("hotpotqa question 2")
    # The file's exact prompt travels with the row.
    assert row.prompt == (("user", INSTRUCTION.format(question="hotpotqa question 2?")),)


def test_search_r1_test_parquet_limit_samples_each_data_source(search_r1_test):
    nq, hotpot = load_eval_sets([search_r1_test], None, limit=3, seed=4)
    assert nq.indices == question_indices(7, 3, seed=4)
    assert hotpot.indices == [7 + i for i in question_indices(5, 3, seed=4)]
    assert [r.question for r in hotpot.rows] == [
        f"hotpotqa question {i - 7}?" for i in hotpot.indices]


def test_a_benchmark_named_twice_is_refused(search_r1_test):
    with pytest.raises(DataError, match=r"\['nq'\] are given more than once"):
        load_eval_sets(parse_eval_specs(f"nq,{search_r1_test}"), bundled_data_dir())
    with pytest.raises(BenchmarkFileError, match="absent.parquet does not exist"):
        load_eval_sets(["absent.parquet"], None)
