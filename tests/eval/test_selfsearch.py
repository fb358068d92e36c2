"""Tests for ssrl_jax.eval.scoring (no JAX) and ssrl_jax.eval.selfsearch (the JAX sampler path).

The model is a tiny Llama whose weights are set so that, after any prompt, it writes
`` <answer> Paris </answer>`` or `` <answer> Rome </answer>`` with equal probability (greedy:
Paris, the lower token id). ``write_answering_model`` is shared with test_evaluate_cli.py.
"""

import itertools

import numpy as np
import pytest

from ssrl_jax.data.qa import QARow
from ssrl_jax.eval.scoring import (
    Completion,
    EvalSettings,
    aggregate,
    question_record,
    resolve_chat,
)

# --------------------------------------------------------------------------- model --


def write_answering_model(directory):
    """Saves the Paris/Rome model (transformers, fp32, vocab 1024) and the shipped tokenizer.

    Attention and MLP outputs are zeroed, so each layer passes the residual through and the
    next-token logits depend on the current token only: a bigram table. Embeddings of the
    table's tokens are orthogonal unit vectors and ``lm_head`` maps each to its successors
    (logit 32 against 0), so the model follows prompt end → " <" → "answer" → ">" →
    " Paris" | " Rome" → " </" → "answer" → ">", where the stop string ``</answer>`` ends it.
    """
    import transformers

    from ssrl_jax.data.prompts import prompt_token_ids
    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path
    from tests.helpers import save_bigram_model

    tok = transformers.AutoTokenizer.from_pretrained(quickstart_tokenizer_path())

    def one(text):
        (token,) = tok.encode(text, add_special_tokens=False)
        return token

    lt, ans, gt, paris, rome, slash = map(one, (" <", "answer", ">", " Paris", " Rome", " </"))
    starts = {prompt_token_ids("q?", tokenizer=tok, chat=chat)[-1] for chat in (True, False)}
    successors = {**{s: [lt] for s in starts}, lt: [ans], ans: [gt], gt: [paris, rome],
                  paris: [slash], rome: [slash], slash: [ans]}
    # RMSNorm scales the unit vector to 8: a weight of 4 gives logit 32.
    successors = {token: {n: 4.0 for n in nexts} for token, nexts in successors.items()}
    return save_bigram_model(directory, tok, successors, max_position_embeddings=1024)


ROWS = [
    QARow("fr", "What is the capital of France?", ("Paris",), "t"),
    QARow("it", "What is the capital of Italy?", ("Rome",), "t"),
    QARow("uk", "What is the capital of the United Kingdom?", ("London",), "t"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_answering_model(tmp_path_factory.mktemp("answering_model"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    from ssrl_jax.eval.selfsearch import load_for_eval

    return load_for_eval(str(model_dir), dtype="float32")


@pytest.fixture(scope="module")
def sampler(loaded):
    from ssrl_jax.sampler import Sampler

    model, tokenizer, eos = loaded
    return Sampler(model, tokenizer=tokenizer, eos_ids=eos)


# The bigram model never writes EOS, so these tests end responses at </answer>.
SETTINGS = EvalSettings(num_samples=4, max_new_tokens=12, batch_size=16, stop_at_answer=True)

# ------------------------------------------------------------------------- scoring --


def completion(answer, reason="eos"):
    text = f"<think> t </think>\n<answer> {answer} </answer>" if answer else "no answer"
    return Completion(text=text, num_tokens=9, finish_reason=reason)


def brute_pass_at_k(correct, k):
    """Mean over questions of the fraction of k-subsets of samples that hold a correct one."""
    per_question = []
    for row in correct:
        subsets = list(itertools.combinations(row, k))
        per_question.append(sum(any(s) for s in subsets) / len(subsets))
    return float(np.mean(per_question))


def test_aggregate_pass_at_k_matches_enumeration_of_k_subsets():
    rng = np.random.default_rng(0)
    answers = [[rng.choice(["a", "b", "c", None]) for _ in range(6)] for _ in range(5)]
    rows = [QARow(str(i), "q?", ("a", "A."), "t") for i in range(5)]
    records = [question_record(r, completion("a"), [completion(a) for a in ans])
               for r, ans in zip(rows, answers)]
    metrics = aggregate(records)
    correct = [[a == "a" for a in ans] for ans in answers]
    assert metrics["ks"] == [1, 2, 4, 6]
    for k in metrics["ks"]:
        assert metrics["pass@k"][str(k)] == pytest.approx(brute_pass_at_k(correct, k))
    assert metrics["sampled"]["em"] == pytest.approx(np.mean(correct))
    assert metrics["greedy"]["em"] == 1.0
    assert [r["num_correct"] for r in records] == [sum(c) for c in correct]


def test_maj_at_k_ties_go_to_the_answer_seen_first():
    row = QARow("q", "q?", ("Paris",), "t")
    # first 2: one each, Rome first -> Rome wins the tie; all 4: 2 vs 2, Rome still first.
    rome_first = question_record(row, None, [completion(a) for a in
                                             ["Rome", "Paris", "Paris", "Rome"]])
    paris_first = question_record(row, None, [completion(a) for a in
                                              ["Paris", "Rome", "Rome", "Paris"]])
    assert aggregate([rome_first])["maj@k"] == {"1": 0.0, "2": 0.0, "4": 0.0}
    assert aggregate([paris_first])["maj@k"] == {"1": 1.0, "2": 1.0, "4": 1.0}
    assert rome_first["majority_answer"] == "rome"
    # No answer is not a vote: one "Paris" beats three unanswered samples.
    none_first = question_record(row, None, [completion(a) for a in [None, None, None, "Paris"]])
    assert aggregate([none_first])["maj@k"] == {"1": 0.0, "2": 0.0, "4": 1.0}


def test_question_record_fields():
    row = QARow("q", "Who?", ("Ada Lovelace", "Lovelace"), "nq")
    record = question_record(row, completion("the Lovelace", "stop_string"),
                             [completion(None, "length")])
    assert record["greedy"] == {
        "response": "<think> t </think>\n<answer> the Lovelace </answer>",
        "answer": "the Lovelace", "em": 1.0, "f1": 1.0, "sub_em": 1.0, "format_score": 0.5,
        "num_tokens": 9, "finish_reason": "stop_string"}
    assert record["samples"][0]["answer"] is None and record["samples"][0]["em"] == 0.0
    assert record["golden_answers"] == ["Ada Lovelace", "Lovelace"]
    assert record["num_correct"] == 0 and record["majority_answer"] is None


def test_the_last_answer_block_is_scored():
    row = QARow("q", "Capital of France?", ("Paris",), "nq")
    text = ("<think> t </think><answer> Rome </answer><think> no, wait </think>"
            "<answer> Paris </answer>")
    record = question_record(row, Completion(text, 20, "eos"), [])
    assert record["greedy"]["answer"] == "Paris" and record["greedy"]["em"] == 1.0


def test_eval_prompts_use_the_files_chat_messages(loaded, caplog):
    import logging

    from ssrl_jax.data.prompts import prompt_token_ids
    from ssrl_jax.eval.selfsearch import eval_prompt_ids

    tokenizer = loaded[1]
    messages = [{"role": "user", "content": "Use <search> when unsure. Question: who?\n"}]
    rows = [QARow("a", "who?", ("x",), "nq", prompt=messages), QARow("b", "why?", ("y",), "nq")]
    verl = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   tokenize=False), add_special_tokens=False)
    ours = [prompt_token_ids(r.question, tokenizer=tokenizer, chat=True) for r in rows]
    with caplog.at_level(logging.INFO, logger="ssrl_jax.eval.selfsearch"):
        ids = eval_prompt_ids(rows, EvalSettings(chat="true"), tokenizer, label="nq")
    assert ids == [verl["input_ids"], ours[1]] and ids[0] != ours[0]
    assert ("nq: prompts (prompt_source=dataset): 1 rows use the file's chat messages "
            "verbatim; 1 rows get our self_search prompt (no chat messages in the file)"
            ) in caplog.text
    rebuilt = eval_prompt_ids(rows, EvalSettings(chat="true", prompt_source="rebuild"),
                              tokenizer)
    assert rebuilt == ours


def test_aggregate_rejects_inconsistent_records():
    row = QARow("q", "q?", ("a",), "t")
    with pytest.raises(ValueError, match="same number of samples"):
        aggregate([question_record(row, None, [completion("a")]),
                   question_record(row, None, [completion("a")] * 2)])
    with pytest.raises(ValueError, match="greedy"):
        aggregate([question_record(row, None, [completion("a")]),
                   question_record(row, completion("a"), [completion("a")])])
    with pytest.raises(ValueError, match="at least one"):
        aggregate([])


@pytest.mark.parametrize("field,value", [
    ("num_samples", -1), ("temperature", 0.0), ("top_p", 1.5), ("top_k", -2),
    ("max_new_tokens", 0), ("batch_size", 0), ("mode", "rag"), ("chat", "yes"), ("seed", -1),
    ("greedy", 1), ("prompt_source", "file"), ("stop_at_answer", "yes"),
])
def test_settings_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}="):
        EvalSettings(**{field: value})


def test_settings_need_something_to_sample():
    with pytest.raises(ValueError, match="num_samples"):
        EvalSettings(greedy=False, num_samples=0)
    assert EvalSettings(num_samples=0).ks == [] and EvalSettings(num_samples=6).ks == [1, 2, 4, 6]
    # SSRL's protocol by default: no stop string, generate to EOS (or the cap).
    assert EvalSettings().stop_strings == () and EvalSettings().prompt_source == "dataset"
    assert EvalSettings(stop_at_answer=True).stop_strings == ("</answer>",)


def test_resolve_chat():
    class Tok:
        chat_template = "x"

    assert resolve_chat("auto", Tok()) is True and resolve_chat("auto", object()) is False
    assert resolve_chat("false", Tok()) is False and resolve_chat("true", object()) is True


# ---------------------------------------------------------------------- JAX sampler --


def test_sample_keys_depend_only_on_seed_question_and_sample():
    import jax

    from ssrl_jax.eval.selfsearch import sample_keys

    a = jax.random.key_data(sample_keys(3, [0, 0, 7, 9], [0, 1, 2, 0]))
    b = jax.random.key_data(sample_keys(3, [7], [2]))
    assert np.array_equal(a[2], b[0])
    assert len({tuple(np.asarray(k).ravel()) for k in a}) == 4
    c = jax.random.key_data(sample_keys(4, [7], [2]))
    assert not np.array_equal(b, c)


def test_evaluate_rows_samples_and_scores(sampler, loaded):
    from ssrl_jax.eval.selfsearch import evaluate_rows

    tokenizer = loaded[1]
    records, metrics = evaluate_rows(sampler, tokenizer, ROWS, SETTINGS)
    assert [r["id"] for r in records] == ["fr", "it", "uk"]
    for r in records:
        assert r["greedy"]["response"] == " <answer> Paris </answer>"
        assert r["greedy"]["finish_reason"] == "stop_string" and r["greedy"]["num_tokens"] == 7
        assert {s["answer"] for s in r["samples"]} <= {"Paris", "Rome"}
        assert all(s["finish_reason"] == "stop_string" for s in r["samples"])
    all_answers = [s["answer"] for r in records for s in r["samples"]]
    assert {"Paris", "Rome"} <= set(all_answers)  # 12 fair coin flips: both appear
    assert metrics["greedy"]["em"] == pytest.approx(1 / 3)
    correct = [[s["em"] == 1.0 for s in r["samples"]] for r in records]
    for k in (1, 2, 4):
        assert metrics["pass@k"][str(k)] == pytest.approx(brute_pass_at_k(correct, k))
    assert metrics["pass@k"]["1"] <= metrics["pass@k"]["2"] <= metrics["pass@k"]["4"]
    assert metrics["sampled"]["num_tokens"] == 7.0


def test_default_protocol_generates_past_the_first_answer(sampler, loaded):
    """SSRL's protocol: no stop at </answer>; the response runs to EOS or the cap."""
    from ssrl_jax.eval.selfsearch import evaluate_rows

    records, _ = evaluate_rows(sampler, loaded[1], ROWS[:1],
                               EvalSettings(num_samples=0, max_new_tokens=12, batch_size=16))
    greedy = records[0]["greedy"]
    assert greedy["response"] == " <answer> Paris </answer> Paris </answer> Paris"
    assert greedy["finish_reason"] == "length" and greedy["num_tokens"] == 12
    assert greedy["answer"] == "Paris" and greedy["em"] == 1.0


def test_samples_do_not_depend_on_batching_or_neighbours(sampler, loaded):
    from ssrl_jax.eval.selfsearch import evaluate_rows

    tokenizer = loaded[1]
    settings = EvalSettings(num_samples=4, max_new_tokens=12, batch_size=16, seed=5)
    full, _ = evaluate_rows(sampler, tokenizer, ROWS, settings)
    small_batches = EvalSettings(num_samples=4, max_new_tokens=12, batch_size=3, seed=5,
                                 greedy=False)
    alone, _ = evaluate_rows(sampler, tokenizer, ROWS[2:], small_batches, row_indices=[2])
    assert alone[0]["samples"] == full[2]["samples"]
    assert alone[0]["greedy"] is None
    other_seed, _ = evaluate_rows(
        sampler, tokenizer, ROWS, EvalSettings(num_samples=4, max_new_tokens=12, seed=6))
    assert [s["answer"] for r in other_seed for s in r["samples"]] != [
        s["answer"] for r in full for s in r["samples"]]


def test_load_for_eval_from_a_checkpoint(tmp_path, model_dir, loaded):
    import jax
    from flax import nnx

    from ssrl_jax.checkpoints import write_params_checkpoint
    from ssrl_jax.eval.selfsearch import load_for_eval

    model, _, eos = loaded
    step_dir = write_params_checkpoint(tmp_path / "ckpt", nnx.state(model, nnx.Param),
                                       model.config, extra_meta={"tokenizer": str(model_dir)})
    restored, tokenizer, restored_eos = load_for_eval(str(step_dir), dtype="float32")
    assert restored_eos == eos and tokenizer.chat_template
    a = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    b = nnx.to_pure_dict(nnx.state(restored, nnx.Param))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    write_params_checkpoint(tmp_path / "bare", nnx.state(model, nnx.Param), model.config)
    with pytest.raises(ValueError, match="tokenizer"):
        load_for_eval(str(tmp_path / "bare"), dtype="float32")
