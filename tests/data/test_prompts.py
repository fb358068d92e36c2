"""Tests for ssrl_jax.data.prompts and the tiny tokenizer they are checked with."""

import pytest

from ssrl_jax.data.prompts import (
    BASE_CUE,
    PROMPT_MODES,
    build_prompt,
    build_prompts,
    dataset_prompt_ids,
    instruction,
    prompt_source_summary,
    prompt_token_ids,
    row_prompt_ids,
    uses_dataset_prompt,
)
from ssrl_jax.data.qa import extract_question
from ssrl_jax.data.tiny_tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    quickstart_corpus,
    train_tiny_tokenizer,
)
from ssrl_jax.protocol import PLACEHOLDERS
from ssrl_jax.rl.rewards import format_score

QUESTION = "Which river flows through the city where the Colosseum stands?"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(quickstart_corpus(), vocab_size=512)


@pytest.mark.parametrize("mode", PROMPT_MODES)
def test_instruction_shows_every_tag_with_the_reward_placeholders(mode):
    text = instruction(QUESTION, mode=mode)
    for tag in ("think", "search", "answer"):
        assert f"<{tag}> {PLACEHOLDERS[tag]} </{tag}>" in text
    assert text.endswith(f"\nQuestion: {QUESTION}")
    assert extract_question([{"role": "user", "content": text}]) == QUESTION


def test_self_search_writes_its_own_information_and_search_r1_does_not():
    self_search = instruction(QUESTION, mode="self_search")
    search_r1 = instruction(QUESTION, mode="search_r1")
    assert f"<information> {PLACEHOLDERS['information']} </information>" in self_search
    assert "No search engine" in self_search
    assert PLACEHOLDERS["information"] not in search_r1
    assert "never write that block yourself" in search_r1


def test_copying_the_shown_placeholders_gets_no_format_credit():
    # The tags exactly as the instruction shows them, versus the same shape with real content.
    shown = f"<think> {PLACEHOLDERS['think']} </think>\n<answer> {PLACEHOLDERS['answer']} </answer>"
    assert shown.split("\n")[0] in instruction(QUESTION)
    assert format_score(shown) == 0.0
    assert format_score("<think> The Tiber. </think>\n<answer> Tiber </answer>") == 0.5


@pytest.mark.parametrize("mode", PROMPT_MODES)
def test_plain_prompt_for_base_models_ends_with_the_cue(mode):
    text = build_prompt(QUESTION, mode=mode, chat=False)
    assert text.endswith(f"Question: {QUESTION}\n{BASE_CUE}")
    assert instruction(QUESTION, mode=mode) in text
    assert build_prompts([QUESTION, "Who?"], mode=mode, chat=False)[0] == text


def test_chat_prompt_uses_the_template(tokenizer):
    text = build_prompt(QUESTION, tokenizer=tokenizer, chat=True)
    assert text.startswith(BOS_TOKEN + "<|start_header_id|>user<|end_header_id|>\n\n")
    assert text.endswith(f"Question: {QUESTION}{EOS_TOKEN}"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert instruction(QUESTION) in text


@pytest.mark.parametrize("chat", [True, False])
def test_token_ids_match_the_text(tokenizer, chat):
    ids = prompt_token_ids(QUESTION, mode="search_r1", tokenizer=tokenizer, chat=chat)
    text = build_prompt(QUESTION, mode="search_r1", tokenizer=tokenizer, chat=chat)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids) == (text if chat else BOS_TOKEN + text)


def test_errors_name_the_problem(tokenizer):
    with pytest.raises(ValueError, match="mode must be one of"):
        build_prompt(QUESTION, mode="web", chat=False)
    with pytest.raises(ValueError, match="chat=True needs a tokenizer"):
        build_prompt(QUESTION, chat=True)
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        build_prompt("  ", chat=False)
    tokenizer_without_template = train_tiny_tokenizer(["abc abd"], vocab_size=300)
    tokenizer_without_template.chat_template = None
    with pytest.raises(ValueError, match="has no chat_template"):
        prompt_token_ids(QUESTION, tokenizer=tokenizer_without_template, chat=True)


# --- a dataset's own prompt (verl's `prompt` column) ----------------------------------------

FILE_PROMPT = (("system", "Be brief."),
               ("user", "Reason in <think> </think>, answer in <answer> </answer>. "
                        f"Question: {QUESTION}\n"))


def test_dataset_prompt_is_rendered_as_verl_renders_it(tokenizer):
    messages = [{"role": r, "content": c} for r, c in FILE_PROMPT]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = dataset_prompt_ids(FILE_PROMPT, tokenizer=tokenizer, chat=True)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text and ids.count(tokenizer.bos_token_id) == 1
    assert "Be brief." in text and FILE_PROMPT[1][1].strip() in text  # the template strips
    assert instruction(QUESTION) not in text   # not our wording


def test_dataset_prompt_without_a_chat_template_is_the_first_message(tokenizer):
    # Search-R1's verl without a chat template: the first message's content, no special tokens.
    (user,) = FILE_PROMPT[1:]
    ids = dataset_prompt_ids((user,), tokenizer=tokenizer, chat=False)
    assert ids == tokenizer(user[1], add_special_tokens=False)["input_ids"]
    assert tokenizer.bos_token_id not in ids
    with pytest.raises(ValueError, match="2 chat messages needs a chat template"):
        dataset_prompt_ids(FILE_PROMPT, tokenizer=tokenizer, chat=False)


def test_row_prompt_uses_the_file_unless_asked_to_rebuild(tokenizer):
    ours = prompt_token_ids(QUESTION, mode="search_r1", tokenizer=tokenizer, chat=True)
    theirs = dataset_prompt_ids(FILE_PROMPT, tokenizer=tokenizer, chat=True)
    assert theirs != ours

    def ids(prompt, source):
        return row_prompt_ids(QUESTION, prompt, mode="search_r1", source=source,
                              tokenizer=tokenizer, chat=True)

    assert ids(FILE_PROMPT, "dataset") == theirs
    assert ids(FILE_PROMPT, "rebuild") == ids(None, "dataset") == ids(None, "rebuild") == ours
    assert uses_dataset_prompt(FILE_PROMPT, "dataset")
    assert not uses_dataset_prompt(FILE_PROMPT, "rebuild") and not uses_dataset_prompt(None,
                                                                                     "dataset")
    with pytest.raises(ValueError, match=r"prompt source must be one of \('dataset', 'rebuild'\)"):
        ids(FILE_PROMPT, "file")


def test_prompt_source_summary_says_which_prompts_are_used():
    prompts = [FILE_PROMPT, FILE_PROMPT, None]
    assert prompt_source_summary(prompts, source="dataset", mode="self_search") == (
        "prompts (prompt_source=dataset): 2 rows use the file's chat messages verbatim; "
        "1 rows get our self_search prompt (no chat messages in the file)")
    assert prompt_source_summary(prompts, source="rebuild", mode="search_r1") == (
        "prompts (prompt_source=rebuild): 3 rows get our search_r1 prompt (asked to rebuild)")


def test_tiny_tokenizer_is_deterministic_and_round_trips(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "<think> Rome </think>\n<answer> Tiber </answer> — ünïcödé"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) == 512 and tokenizer.pad_token_id != tokenizer.eos_token_id
    again = train_tiny_tokenizer(quickstart_corpus(), vocab_size=512)
    assert again.get_vocab() == tokenizer.get_vocab()

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert (build_prompt(QUESTION, tokenizer=loaded, chat=True)
            == build_prompt(QUESTION, tokenizer=tokenizer, chat=True))
    with pytest.raises(ValueError, match="must include"):
        train_tiny_tokenizer(["x"], special_tokens=["<s>"])
