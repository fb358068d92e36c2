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
    parse_benchmarks,
    toyworld_data_dir,
)

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
    assert [r.id for r in load_benchmark(name, bundled_data_dir(), limit=5)] == [
        r.id for r in rows[:5]]
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
