"""From QA rows to train-step arrays: mixing by data source, gold limits, prompt lengths."""

import logging

import numpy as np
import pytest
from transformers import AutoTokenizer

from ssrl_jax.data.pipeline import make_qa_iterator
from ssrl_jax.data.prompts import prompt_token_ids
from ssrl_jax.data.qa import DataError, QARow, write_jsonl
from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path
from ssrl_jax.data.train_batches import (check_golds, read_training_rows, step_batch,
                                         tokenize_prompts)
from ssrl_jax.sharding import ShardingRules, make_mesh
from tests.search_r1_data import write_search_r1_parquet


def rows(source, n, question="What is the capital of France?"):
    return [QARow(f"{source}-{i}", f"{question} ({i})", ("Paris",), source) for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(quickstart_tokenizer_path())


def test_files_are_mixed_by_data_source_weights(tmp_path):
    write_jsonl(rows("nq", 30), tmp_path / "nq.jsonl")
    write_jsonl(rows("hotpotqa", 30), tmp_path / "hotpot.jsonl")
    files = [str(tmp_path / "nq.jsonl"), str(tmp_path / "hotpot.jsonl")]
    assert len(read_training_rows(files, {}, seed=0)) == 60
    mixed = read_training_rows(files, {"nq": 3, "hotpotqa": 1}, seed=0)
    sources = [r.data_source for r in mixed[:40]]
    assert sources.count("nq") == 30 and sources.count("hotpotqa") == 10
    with pytest.raises(DataError, match=r"names \['trivia'\]"):
        read_training_rows(files, {"nq": 1, "hotpotqa": 1, "trivia": 1}, seed=0)
    with pytest.raises(DataError, match=r"no weight to the data sources \['hotpotqa'\]"):
        read_training_rows(files, {"nq": 1}, seed=0)


def test_golds_over_the_limits_name_the_row():
    check_golds(rows("nq", 2), max_golds=1, max_gold_bytes=5)
    too_many = [QARow("x7", "q", ("a", "b", "c"), "nq")]
    with pytest.raises(DataError, match=r"row id='x7' \(nq\): 3 golden_answers exceed"):
        check_golds(too_many, max_golds=2, max_gold_bytes=8)
    too_long = [QARow("x8", "q", ("a" * 9,), "nq")]
    with pytest.raises(DataError, match="row id='x8'.*max_gold_bytes=8"):
        check_golds(too_long, max_golds=2, max_gold_bytes=8)


def test_prompts_fix_one_length_and_drop_the_overlong(tokenizer, caplog):
    short = rows("nq", 3)
    long = [QARow("long", "why " * 400, ("x",), "nq")]
    with caplog.at_level(logging.WARNING):
        kept, table = tokenize_prompts(short + long, tokenizer, mode="self_search", chat=False,
                                       max_prompt_tokens=512)
    assert [r.id for r in kept] == ["nq-0", "nq-1", "nq-2"]
    assert "dropped 1 of 4 training rows" in caplog.text
    longest = max(len(table.ids[r.question]) for r in kept)
    assert longest <= table.length <= 512 and table.length & (table.length - 1) == 0
    ids, valid = table.batch([kept[0].question], pad_id=tokenizer.pad_token_id)
    assert ids.shape == (1, table.length) and valid[0, -1] and valid.sum() == len(
        table.ids[kept[0].question])
    with pytest.raises(DataError, match="every training prompt exceeds"):
        tokenize_prompts(long, tokenizer, mode="self_search", chat=False, max_prompt_tokens=64)


def test_step_batch_is_sharded_over_the_batch_axis(tokenizer, eight_devices):
    kept, table = tokenize_prompts(rows("nq", 8), tokenizer, mode="self_search", chat=False,
                                   max_prompt_tokens=1024)
    qa = {"question": [r.question for r in kept], "golden_answers": [r.golden_answers
                                                                    for r in kept]}
    mesh = make_mesh({"data": 2, "fsdp": 4})
    batch = step_batch(qa, table, pad_id=0, max_golds=2, max_gold_bytes=8, mesh=mesh,
                       rules=ShardingRules())
    assert batch["prompt_ids"].shape == (8, table.length)
    assert batch["golds"].shape == (8, 2, 8)
    for array in batch.values():
        assert array.sharding.spec[0] == ("data", "fsdp")
    assert bytes(np.asarray(batch["golds"])[3, 0, :5]) == b"Paris"


# --- a verl parquet's own prompts -----------------------------------------------------------


@pytest.fixture(scope="module")
def search_r1_train(tmp_path_factory):
    """A train.parquet written as Search-R1's nq_search.py writes it (6 nq rows)."""
    rows = [{"id": f"train_{i}", "question": f"capital number {i}", "golden_answers": ["Paris"]}
            for i in range(6)]
    path = tmp_path_factory.mktemp("nq_search") / "train.parquet"
    return write_search_r1_parquet(path, {"nq": rows}, split="train")


def verl_ids(tokenizer, row):
    """How verl tokenises a row's prompt: chat template to text, then no special tokens."""
    messages = [{"role": r, "content": c} for r, c in row.prompt]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_training_uses_the_parquets_prompts_verbatim(tokenizer, search_r1_train, caplog,
                                                     eight_devices):
    rows = read_training_rows([search_r1_train], {}, seed=0)
    assert all(r.prompt is not None and r.question.endswith("?") for r in rows)
    with caplog.at_level(logging.INFO, logger="ssrl_jax.data.train_batches"):
        kept, table = tokenize_prompts(rows, tokenizer, mode="self_search", chat=True,
                                       max_prompt_tokens=1024)
    assert table.summary == ("prompts (prompt_source=dataset): 6 rows use the file's chat "
                             "messages verbatim")
    assert table.summary in caplog.text
    ours = [tuple(prompt_token_ids(r.question, tokenizer=tokenizer, chat=True)) for r in kept]
    assert table.row_ids({"question": [r.question for r in kept],
                          "prompt": [r.prompt for r in kept]}) == [
        verl_ids(tokenizer, r) for r in kept]
    assert verl_ids(tokenizer, kept[0]) != ours[0]
    # Through the grain pipeline and into the step's arrays.
    qa = next(make_qa_iterator(kept, batch_size=4, seed=0, shuffle=False, num_threads=0))
    batch = step_batch(qa, table, pad_id=tokenizer.pad_token_id, max_golds=1, max_gold_bytes=8,
                       mesh=make_mesh({"data": 2, "fsdp": 4}), rules=ShardingRules())
    ids, valid = np.asarray(batch["prompt_ids"]), np.asarray(batch["prompt_valid"])
    assert tuple(ids[1][valid[1]]) == verl_ids(tokenizer, kept[1])


def test_rebuild_ignores_the_parquets_prompts(tokenizer, search_r1_train):
    rows = read_training_rows([search_r1_train], {}, seed=0)
    _, table = tokenize_prompts(rows, tokenizer, mode="search_r1", chat=True,
                                max_prompt_tokens=1024, source="rebuild")
    assert table.summary == ("prompts (prompt_source=rebuild): 6 rows get our search_r1 "
                             "prompt (asked to rebuild)")
    assert table.row_ids({"question": [rows[0].question], "prompt": [rows[0].prompt]}) == [
        tuple(prompt_token_ids(rows[0].question, mode="search_r1", tokenizer=tokenizer,
                               chat=True))]


def test_rows_sharing_a_question_keep_their_own_prompts(tokenizer):
    a = QARow("a", "q?", ("x",), "nq", prompt=[{"role": "user", "content": "Question: q?"}])
    b = QARow("b", "q?", ("x",), "nq", prompt=[{"role": "user", "content": "Short. Question: q?"}])
    _, table = tokenize_prompts([a, b], tokenizer, mode="self_search", chat=True,
                                max_prompt_tokens=1024)
    ids = table.row_ids({"question": ["q?", "q?"], "prompt": [a.prompt, b.prompt]})
    assert ids == [verl_ids(tokenizer, a), verl_ids(tokenizer, b)] and ids[0] != ids[1]
