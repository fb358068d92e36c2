"""Tests for ssrl_jax.data.qa: the canonical row, both file layouts, hub loading, bad rows."""

import dataclasses
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssrl_jax.data.prompts import build_prompt
from ssrl_jax.data.qa import (
    DataError,
    QARow,
    extract_question,
    load_hf_dataset,
    read_jsonl,
    read_parquet,
    read_qa,
    sample_data_path,
    write_jsonl,
)

ROW = {"id": "x-1", "question": "What is the capital of France?", "golden_answers": ["Paris"]}


@pytest.fixture(scope="module")
def sample_rows():
    return read_jsonl(sample_data_path())


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def verl_record(row: QARow, index: int, *, with_question: bool) -> dict:
    """The layout Search-R1's data scripts write (FlashRAG columns kept when with_question)."""
    prompt = build_prompt(row.question, mode="search_r1", chat=False)
    record = {
        "data_source": row.data_source,
        "prompt": [{"role": "user", "content": prompt}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": list(row.golden_answers)}},
        "extra_info": {"split": "train", "index": index},
    }
    if with_question:
        record.update(id=row.id, question=row.question, golden_answers=list(row.golden_answers))
    return record


def write_parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


# --- the canonical row and the sample file -------------------------------------------------


def test_row_is_frozen_hashable_and_round_trips_through_dict():
    row = QARow(id="a", question="q?", golden_answers=["x", "y"], data_source="nq")
    assert row.golden_answers == ("x", "y")
    assert hash(row) == hash(QARow(**row.to_dict()))
    assert row.to_dict() == {"id": "a", "question": "q?", "golden_answers": ["x", "y"],
                             "data_source": "nq"}
    with pytest.raises(AttributeError):
        row.id = "b"


def test_sample_file_has_about_200_rows_of_both_kinds(sample_rows):
    sources = [r.data_source for r in sample_rows]
    assert len(sample_rows) == 200
    assert sources.count("nq") == 130 and sources.count("hotpotqa") == 70
    assert len({r.id for r in sample_rows}) == 200
    assert len({r.question for r in sample_rows}) == 200
    assert all(re.fullmatch(rf"sample-{r.data_source}-\d{{4}}", r.id) for r in sample_rows)
    assert any(len(r.golden_answers) > 1 for r in sample_rows)


# --- FlashRAG jsonl ------------------------------------------------------------------------


def test_jsonl_round_trip_and_default_source(tmp_path, sample_rows):
    path = tmp_path / "copy.jsonl"
    write_jsonl(sample_rows, path)
    assert read_qa(path) == sample_rows

    # No data_source in the file: the argument, else the file stem. Blank lines are skipped.
    plain = write_lines(tmp_path / "nq_dev.jsonl", [json.dumps(ROW), "", "  "])
    assert read_jsonl(plain)[0].data_source == "nq_dev"
    assert read_jsonl(plain, data_source="nq")[0].data_source == "nq"
    # Integer ids become strings; extra keys are ignored; the question is stripped.
    other = dict(ROW, id=7, question="  Who?  ", metadata={"x": 1})
    row = read_jsonl(write_lines(tmp_path / "d.json", [json.dumps(other)]))[0]
    assert (row.id, row.question) == ("7", "Who?")


@pytest.mark.parametrize(
    "line, field, problem",
    [
        ('{"id": "a", "question": "q"', None, "invalid JSON"),
        ('["a", "q"]', None, "must be a JSON object, got list"),
        (json.dumps({k: v for k, v in ROW.items() if k != "question"}), "question", "is missing"),
        (json.dumps({k: v for k, v in ROW.items() if k != "id"}), "id", "is missing"),
        (json.dumps({k: v for k, v in ROW.items() if k != "golden_answers"}),
         "golden_answers", "is missing"),
        (json.dumps(dict(ROW, question="   ")), "question", "must be a non-empty string"),
        (json.dumps(dict(ROW, question=5)), "question", "must be a non-empty string, got 5"),
        (json.dumps(dict(ROW, golden_answers=[])), "golden_answers", "non-empty list"),
        (json.dumps(dict(ROW, golden_answers=3)), "golden_answers",
         "must be a non-empty list of non-empty strings, got 3"),
        (json.dumps(dict(ROW, golden_answers="Paris")), "golden_answers", "got 'Paris'"),
        (json.dumps(dict(ROW, golden_answers=["Paris", 3])), "golden_answers", "got ['Paris', 3]"),
        (json.dumps(dict(ROW, golden_answers=["Paris", " "])), "golden_answers", "non-empty list"),
        (json.dumps(dict(ROW, id=["a"])), "id", "must be a non-empty string"),
        (json.dumps(dict(ROW, data_source="")), "data_source", "must be a non-empty string"),
    ],
)
def test_jsonl_bad_row_names_file_line_and_field(tmp_path, line, field, problem):
    path = write_lines(tmp_path / "nq.jsonl", [json.dumps(ROW), "", line, json.dumps(ROW)])
    with pytest.raises(DataError) as err:
        read_qa(path)
    message = str(err.value)
    assert message.startswith(f"{path}: row 3: ")  # 1-based line number, blank line counted
    if field is not None:
        assert f"field '{field}' " in message
    assert problem in message


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(ROW).encode() + b"\n" + json.dumps(
        dict(ROW, question="caf\u00e9?"), ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=rf"not UTF-8 text \(byte \d+ of the line is b'\\xe9'\), "
                       rf"{re.escape(str(path))}: line 2, convert the file to UTF-8"):
        read_qa(path)


def test_empty_file_and_unknown_type_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        read_qa(write_lines(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(DataError, match=r"unknown QA file type '\.csv'"):
        read_qa(tmp_path / "data.csv")
    with pytest.raises(DataError, match="hub spec"):
        read_qa("hf:only-a-name")


# --- verl / Search-R1 parquet --------------------------------------------------------------


def test_parquet_round_trip_with_question_column(tmp_path, sample_rows):
    records = [verl_record(r, i, with_question=True) for i, r in enumerate(sample_rows)]
    path = write_parquet(tmp_path / "train.parquet", records)
    rows = read_qa(path)
    assert [dataclasses.replace(r, prompt=None) for r in rows] == sample_rows
    # The file's chat messages stay on the row, exactly as written.
    assert [r.prompt for r in rows] == [
        tuple((m["role"], m["content"]) for m in rec["prompt"]) for rec in records]


def test_row_prompt_round_trips_through_dict_and_jsonl(tmp_path):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Question: q?\n"}]
    row = QARow("a", "q?", ("x",), "nq", prompt=messages)
    assert row.prompt == (("system", "Be brief."), ("user", "Question: q?\n"))
    assert row.to_dict()["prompt"] == messages and hash(row) == hash(QARow(**row.to_dict()))
    write_jsonl([row], tmp_path / "p.jsonl")
    assert read_jsonl(tmp_path / "p.jsonl") == [row]


@pytest.mark.parametrize(
    "prompt, field, problem",
    [
        ("Question: q?", "prompt", "non-empty list of chat messages"),
        ([], "prompt", "non-empty list of chat messages"),
        (["Question: q?"], "prompt[0]", "non-empty list of chat messages"),
        ([{"role": "user"}], "prompt[0]", "non-empty list of chat messages"),
        ([{"role": "", "content": "x"}], "prompt[0]", "non-empty list of chat messages"),
        ([{"role": "user", "content": "x", "tool_calls": [1]}], "prompt[0]",
         "has fields ['tool_calls']"),
    ],
)
def test_bad_prompt_names_file_row_and_field(tmp_path, prompt, field, problem):
    path = write_lines(tmp_path / "nq.jsonl", [json.dumps(dict(ROW, prompt=prompt))])
    with pytest.raises(DataError, match=rf"row 1: field '{re.escape(field)}' .*{re.escape(problem)}"):
        read_qa(path)


def test_parquet_recovers_question_from_prompt_and_id_from_extra_info(tmp_path, sample_rows):
    records = [verl_record(r, i, with_question=False) for i, r in enumerate(sample_rows)]
    rows = read_parquet(write_parquet(tmp_path / "train.parquet", records))
    assert [r.question for r in rows] == [r.question for r in sample_rows]
    assert [r.golden_answers for r in rows] == [r.golden_answers for r in sample_rows]
    assert [r.data_source for r in rows] == [r.data_source for r in sample_rows]
    assert [r.id for r in rows[:2]] == ["train_0", "train_1"]


def test_parquet_with_flashrag_columns_reads_as_flashrag(tmp_path, sample_rows):
    path = write_parquet(tmp_path / "nq.parquet", [r.to_dict() for r in sample_rows[:5]])
    assert read_qa(path) == sample_rows[:5]


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r["reward_model"]["ground_truth"].update(target=[]),
         "reward_model.ground_truth.target"),
        (lambda r: r["reward_model"]["ground_truth"].update(target=None),
         "reward_model.ground_truth.target"),
        (lambda r: r["reward_model"].update(ground_truth=None), "reward_model.ground_truth"),
        (lambda r: r.update(data_source=None), "data_source"),
        (lambda r: r.update(prompt=[{"role": "user", "content": "Name a colour."}]), "prompt"),
        (lambda r: r.update(prompt=[{"role": "system", "content": "Question: x"}]), "prompt"),
    ],
)
def test_parquet_bad_row_names_file_row_and_field(tmp_path, sample_rows, change, field):
    records = [verl_record(r, i, with_question=False) for i, r in enumerate(sample_rows[:4])]
    change(records[2])
    path = write_parquet(tmp_path / "train.parquet", records)
    expected = rf"^{re.escape(str(path))}: row 2: field '{re.escape(field)}' "
    with pytest.raises(DataError, match=expected):
        read_qa(path)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="broken.parquet: not a readable parquet file"):
        read_qa(path)


@pytest.mark.parametrize(
    "content, question",
    [
        ("Answer it. Question: Who wrote Hamlet?\n", "Who wrote Hamlet?"),
        ("Example question: 1+1? Answer: 2\nQUESTION:\n\n  Who wrote Hamlet? \nAssistant:",
         "Who wrote Hamlet?"),
        (build_prompt("Who wrote Hamlet?", mode="self_search", chat=False), "Who wrote Hamlet?"),
    ],
)
def test_extract_question(content, question):
    messages = [{"role": "system", "content": "Question: not this one"},
                {"role": "user", "content": content}]
    assert extract_question(messages) == question


# --- hub datasets (no network: the packaged "json" / "parquet" builders on local files) -----


def test_load_hf_dataset_with_local_data_files(tmp_path, sample_rows):
    jsonl = tmp_path / "nq.jsonl"
    write_jsonl(sample_rows[:6], jsonl)
    cache = str(tmp_path / "cache")
    rows = load_hf_dataset("json", "train", data_files=str(jsonl), cache_dir=cache)
    assert rows == sample_rows[:6]

    records = [verl_record(r, i, with_question=False) for i, r in enumerate(sample_rows[:6])]
    parquet = write_parquet(tmp_path / "verl.parquet", records)
    rows = load_hf_dataset("parquet", "train", data_files=str(parquet), cache_dir=cache)
    assert [r.question for r in rows] == [r.question for r in sample_rows[:6]]

    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps(ROW), json.dumps(dict(ROW, question=""))])
    with pytest.raises(DataError, match=r"^json\[train\]: row 1: field 'question' "):
        load_hf_dataset("json", "train", data_files=str(bad), cache_dir=cache)
