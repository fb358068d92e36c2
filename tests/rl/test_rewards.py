"""Tests for ssrl_jax.rl.rewards against SPEC §3: each rule with a passing and a failing case."""

import string
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssrl_jax.protocol import PLACEHOLDERS
from ssrl_jax.rl.rewards import (
    FORMAT_RULES,
    RewardParts,
    exact_match,
    extract_answer,
    f1,
    format_score,
    majority_answer,
    normalize_answer,
    ssrl_reward,
    sub_exact_match,
    ttrl_rewards,
)

# A response scoring f = 1: think–search–information–think–answer.
GOOD = (
    "<think> I need the capital of France. </think>\n"
    "<search> capital of France </search>\n"
    "<information> Paris is the capital of France. </information>\n"
    "<think> It is Paris. </think>\n"
    "<answer> Paris </answer>"
)
DIRECT = "<think>x</think><answer>y</answer>"


# --- normalisation -------------------------------------------------------------------


def test_normalize_lowercases():
    assert normalize_answer("PaRiS") == "paris"


def test_normalize_removes_ascii_punctuation_but_not_other_symbols():
    assert normalize_answer("U.S.A.!?") == "usa"
    assert normalize_answer("rock'n'roll") == "rocknroll"
    # Only string.punctuation is removed; a non-ASCII dash stays.
    assert normalize_answer("x–y") == "x–y"


def test_normalize_removes_whole_word_articles_only():
    assert normalize_answer("The Eiffel Tower") == "eiffel tower"
    assert normalize_answer("a cat an apple the dog") == "cat apple dog"
    # "a"/"an"/"the" inside words stay.
    assert normalize_answer("theory anatomy banana") == "theory anatomy banana"


def test_normalize_punctuation_removed_before_articles():
    # "the," becomes "the" and is then removed as an article.
    assert normalize_answer("the, end") == "end"


def test_normalize_collapses_whitespace():
    assert normalize_answer("  new \t\n york  ") == "new york"
    assert normalize_answer("new york") == "new york"


# --- answer extraction ---------------------------------------------------------------


def test_extract_answer_takes_last_and_strips():
    r = "<answer>first</answer> text <answer>  second  </answer>"
    assert extract_answer(r) == "second"


def test_extract_answer_multiline():
    assert extract_answer("<answer>\nNew\nYork\n</answer>") == "New\nYork"


def test_extract_answer_none_without_complete_block():
    assert extract_answer("no answer here") is None
    assert extract_answer("<answer>unterminated") is None
    assert extract_answer("<Answer>x</Answer>") is None


def test_extract_answer_empty_block_is_empty_string():
    assert extract_answer("<answer>   </answer>") == ""


# --- EM / F1 / Sub-EM ----------------------------------------------------------------


def test_exact_match_any_gold():
    assert exact_match("The Paris!", ["London", "paris"]) == 1.0
    assert exact_match("Paris", ["London", "Berlin"]) == 0.0


def test_exact_match_single_string_gold_is_not_split_into_characters():
    assert exact_match("p", "paris") == 0.0
    assert exact_match("Paris", "paris") == 1.0


def test_exact_match_none_and_no_golds():
    assert exact_match(None, ["paris"]) == 0.0
    assert exact_match("paris", []) == 0.0


def test_exact_match_requires_equality_not_containment():
    assert exact_match("Paris France", ["Paris"]) == 0.0


def test_f1_token_overlap_max_over_golds():
    # pred {new, york, city} vs gold {new, york}: P = 2/3, R = 1 -> F1 = 0.8.
    assert f1("New York City", ["york new"]) == pytest.approx(0.8)
    assert f1("New York City", ["Boston", "york new"]) == pytest.approx(0.8)
    assert f1("the New York City", ["New York City"]) == pytest.approx(1.0)


def test_f1_counts_repeated_tokens_once_per_occurrence():
    # pred {a1: "paris" x2}, gold "paris" x1: common 1, P = 1/2, R = 1 -> 2/3.
    assert f1("paris paris", ["paris"]) == pytest.approx(2 / 3)


def test_f1_zero_without_overlap_or_answer():
    assert f1("London", ["Paris"]) == 0.0
    assert f1(None, ["Paris"]) == 0.0
    assert f1("", ["Paris"]) == 0.0


def test_sub_exact_match_gold_in_prediction():
    assert sub_exact_match("It is Paris, France.", ["paris"]) == 1.0
    assert sub_exact_match("It is Paris.", ["London", "Paris"]) == 1.0


def test_sub_exact_match_failing_cases():
    assert sub_exact_match("Paris", ["Paris France"]) == 0.0  # prediction inside gold: no
    assert sub_exact_match(None, ["Paris"]) == 0.0
    # A gold that normalises to "" would be in every string; it never matches.
    assert sub_exact_match("anything", ["The", "..."]) == 0.0


# --- format rules: shared by both rules ----------------------------------------------

RULES = pytest.mark.parametrize("rule", FORMAT_RULES)


@RULES
def test_format_reference_scores(rule):
    assert format_score(DIRECT, rule) == 0.5
    assert format_score(GOOD, rule) == 1.0


@RULES
def test_format_strips_surrounding_whitespace(rule):
    assert format_score("\n  " + GOOD + "\n\n", rule) == 1.0


@RULES
def test_rule1_disallowed_tag(rule):
    assert format_score("<think>x <b>bold</b></think><answer>y</answer>", rule) == 0.0
    assert format_score("<think>x</think><tool_call>q</tool_call><answer>y</answer>", rule) == 0.0
    assert format_score("<Think>x</Think><answer>y</answer>", rule) == 0.0


@RULES
def test_rule2_start_and_end(rule):
    assert format_score("hello " + DIRECT, rule) == 0.0
    assert format_score(DIRECT + " trailing", rule) == 0.0
    assert format_score("<answer>y</answer><think>x</think>", rule) == 0.0
    assert format_score(DIRECT, rule) == 0.5


@RULES
def test_rule3_first_think_last_answer_min_tags(rule):
    # Start and end are right (rule 2), but fewer than 4 tags / no think and answer pair.
    assert format_score("<think>x</answer>", rule) == 0.0
    assert format_score("<think>x</think></answer>", rule) == 0.0
    no_answer_block = "<think>x</think><search>q</search><information>i</information></answer>"
    assert format_score(no_answer_block, rule) == 0.0
    assert format_score("<think>x</search><answer>a</answer>", rule) == 0.0
    assert format_score(DIRECT, rule) == 0.5


@RULES
def test_rule4_empty_body(rule):
    assert format_score("<think>  </think><answer>y</answer>", rule) == 0.0
    assert format_score("<think>x</think><answer>\n</answer>", rule) == 0.0
    assert format_score(
        "<think>x</think><search> </search><information>i</information>"
        "<think>z</think><answer>y</answer>", rule
    ) == 0.0


@RULES
def test_rule4_search_on_several_lines(rule):
    multi = (
        "<think>x</think><search>line one\nline two</search><information>i\nj</information>"
        "<think>z</think><answer>y</answer>"
    )
    assert format_score(multi, rule) == 0.0
    assert format_score(multi.replace("line one\nline two", "one line"), rule) == 1.0


@RULES
@pytest.mark.parametrize("tag", sorted(PLACEHOLDERS))
def test_rule4_placeholder_text(tag, rule):
    bodies = {"think": "t", "search": "q", "information": "i", "answer": "a"}
    bodies[tag] = f"so {PLACEHOLDERS[tag].upper()} here"

    def resp(b):
        return (
            f"<think>{b['think']}</think><search>{b['search']}</search>"
            f"<information>{b['information']}</information><think>t</think>"
            f"<answer>{b['answer']}</answer>"
        )

    assert format_score(resp(bodies), rule) == 0.0
    clean = {"think": "t", "search": "q", "information": "i", "answer": "a"}
    assert format_score(resp(clean), rule) == 1.0


@RULES
def test_placeholder_of_another_tag_is_allowed(rule):
    # Rule 4 checks each body against its own placeholder only.
    assert format_score("<think>x</think><answer>your thoughts</answer>", rule) == 0.5


@RULES
def test_rule5_search_followed_by_information(rule):
    no_info = "<think>x</think><search>q</search><think>z</think><answer>y</answer>"
    info_first = "<think>x</think><information>i</information><search>q</search><answer>y</answer>"
    orphan_info = (
        "<think>x</think><search>q</search><information>i</information>"
        "<information>j</information><think>z</think><answer>y</answer>"
    )
    assert format_score(no_info, rule) == 0.0
    assert format_score(info_first, rule) == 0.0
    assert format_score(orphan_info, rule) == 0.0
    assert format_score(GOOD, rule) == 1.0


@RULES
def test_rule5_consecutive_search_pairs_allowed(rule):
    # think, (search, info) x2, answer: T = 1, S = 2 -> 0.5 * 1/3.
    r = (
        "<think>x</think><search>q1</search><information>i1</information>"
        "<search>q2</search><information>i2</information><answer>y</answer>"
    )
    assert format_score(r, rule) == pytest.approx(0.5 / 3)


@RULES
def test_text_between_blocks_is_allowed(rule):
    assert format_score("<think>x</think> so the answer is <answer>a</answer>", rule) == 0.5
    assert format_score("<think>x</think> \n\t <answer>a</answer>", rule) == 0.5


@RULES
@pytest.mark.parametrize(
    ("t", "s", "expected"),
    [
        (1, 0, 0.5),
        (2, 1, 1.0),
        (1, 1, 0.25),
        (2, 0, 0.5),
        (3, 2, 1.0),
        (4, 1, 0.5),
        (8, 7, 1.0),
        (9, 8, 0.0),
    ],
)
def test_rule6_think_search_counts(t, s, expected, rule):
    # Interleave think and (search, info) pairs, extra of either kind at the end.
    parts = []
    for i in range(max(t, s)):
        if i < t:
            parts.append(f"<think>t{i}</think>")
        if i < s:
            parts.append(f"<search>q{i}</search><information>i{i}</information>")
    r = "".join(parts) + "<answer>a</answer>"
    assert format_score(r, rule) == pytest.approx(expected)


def test_unknown_format_rule_is_refused():
    with pytest.raises(ValueError, match="format rule must be one of"):
        format_score(GOOD, "lenient")


# --- format rules: where SSRL's released rule and the strict one differ -------------
# Each case: (response, SSRL's value, strict value).

SSRL_VS_STRICT = {
    # Rule 1: SSRL's tag is any '<' ... '>' span, so comparisons are "tags".
    "comparison_in_think": ("<think>is 3 < 5 and 7 > 2?</think><answer>y</answer>", 0.0, 0.5),
    "less_than_then_tag": ("<think>x<5</think><answer>y</answer>", 0.0, 0.5),
    "less_than_in_answer": ("<think>t</think><answer>a < b</answer>", 0.0, 0.5),
    # Rule 4: SSRL looks for a newline in the search body before stripping.
    "search_newline_padding": (
        "<think>x</think><search>\n one line \n</search><information>i</information>"
        "<think>z</think><answer>y</answer>", 0.0, 1.0),
    # ... and splits on "\n" only, where the strict rule uses str.splitlines.
    "search_carriage_return": (
        "<think>x</think><search>a\rb</search><information>i</information>"
        "<think>z</think><answer>y</answer>", 1.0, 0.0),
    # Unbalanced or nested tags: SSRL checks counts and neighbours, not a grammar.
    "unclosed_second_think": ("<think>x</think><think>y<answer>a</answer>", 0.5, 0.0),
    "unclosed_think_before_search": (
        "<think>a</think><think>b<search>q</search><information>i</information>"
        "<answer>c</answer>", 1.0, 0.0),
    "stray_closing_think": ("<think>a</think></think><answer>b</answer>", 0.5, 0.0),
    "stray_closing_information": ("<think>t</think></information><answer>a</answer>", 0.5, 0.0),
    "answer_inside_answer": ("<think>t</think><answer>x<answer>y</answer>", 0.5, 0.0),
    "search_pair_inside_think": (
        "<think>a<search>q</search><information>i</information></think><answer>c</answer>",
        0.0, 0.0),
}


@pytest.mark.parametrize("case", sorted(SSRL_VS_STRICT))
def test_ssrl_and_strict_rules_differ_where_documented(case):
    response, ssrl_value, strict_value = SSRL_VS_STRICT[case]
    assert format_score(response) == pytest.approx(ssrl_value)
    assert format_score(response, "ssrl") == pytest.approx(ssrl_value)
    assert format_score(response, "strict") == pytest.approx(strict_value)


def test_ssrl_rule_accepts_lone_greater_than_and_empty_brackets():
    assert format_score("<think>5 > 3 and a <> b</think><answer>y</answer>") == 0.5


def test_ssrl_rule_nested_think_fails_on_second_tag():
    # The second tag must be </think>.
    assert format_score("<think>x<think>y</think></think><answer>a</answer>") == 0.0


def test_ssrl_rule_closing_answer_twice_fails_on_second_last_tag():
    assert format_score("<think>t</think><answer>b</answer></answer>") == 0.0


def test_ssrl_rule_body_is_the_shortest_span_and_may_hold_tags():
    # The second think body is " <think> " (from the first <think> to the next </think>):
    # not blank, so it passes; T = 3, S = 0 -> 1 * 1/3.
    assert format_score("<think>t</think><think> <think> </think><answer>a</answer>") == (
        pytest.approx(1 / 3))
    assert format_score("<think>t</think><think> </think><answer>a</answer>") == 0.0


def test_ssrl_rule_counts_thinks_including_unclosed_ones():
    nine = "<think>t</think>" + "<think>u" * 8 + "<answer>a</answer>"
    assert format_score(nine) == 0.0
    eight = "<think>t</think>" + "<think>u" * 7 + "<answer>a</answer>"
    assert format_score(eight) == pytest.approx(1.0 * 1 / 8)


# --- format rules: property test against an independent formulation ----------------


def _bracket_spans(text: str) -> list[str]:
    """What SSRL calls tags, by hand: from each '<' not directly followed by '>' to the next
    '>' (the inside may hold '<' and newlines); scanning resumes after that '>'."""
    spans, i = [], 0
    while True:
        start = text.find("<", i)
        if start < 0:
            return spans
        if text.startswith(">", start + 1):
            i = start + 1
            continue
        end = text.find(">", start + 1)
        if end < 0:
            return spans
        spans.append(text[start + 1 : end])
        i = end + 1


def _bodies(text: str, name: str) -> list[str]:
    """Left-to-right shortest <name>...</name> bodies, by hand."""
    open_tag, close_tag = f"<{name}>", f"</{name}>"
    out, i = [], 0
    while True:
        start = text.find(open_tag, i)
        if start < 0:
            return out
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            return out
        out.append(text[start + len(open_tag) : end])
        i = end + len(close_tag)


_NAMES = ("think", "search", "information", "answer")
_PLACEHOLDER = dict(zip(_NAMES, ("your thoughts", "your query", "your information",
                                 "your answer")))


def _reference_ssrl_score(response: str) -> float:
    text = response.strip()
    tags = _bracket_spans(text)
    allowed = set(_NAMES) | {"/" + n for n in _NAMES}
    if any(t not in allowed for t in tags):
        return 0.0
    if text[:7] != "<think>" or text[-9:] != "</answer>" or len(tags) < 4:
        return 0.0
    for name in _NAMES:
        for body in _bodies(text, name):
            if body.strip() == "" or _PLACEHOLDER[name] in body.lower():
                return 0.0
            if name == "search" and len(body.split("\n")) > 1:
                return 0.0
    if tags[0] != "think" or tags[1] != "/think" or tags[-2] != "answer" or tags[-1] != "/answer":
        return 0.0
    middle = tags[2:-2]
    for i, tag in enumerate(middle):
        if tag == "search" and tuple(middle[i + 1 : i + 4]) != ("/search", "information",
                                                                 "/information"):
            return 0.0
    thinks, searches = tags.count("think"), tags.count("search")
    if searches != tags.count("information") or thinks > 8:
        return 0.0
    # Both factors' scales are powers of two, so the float result is exact.
    return float(Fraction(min(thinks, 2), 2) * Fraction(min(thinks, searches + 1),
                                                        max(thinks, searches + 1)))


_EIGHT_TAGS = ["<think>", "</think>", "<search>", "</search>", "<information>",
               "</information>", "<answer>", "</answer>"]
_pieces = st.one_of(
    st.sampled_from(_EIGHT_TAGS),
    st.sampled_from(["<", ">", "<>", "<b>", "</Think>", "<think >", "3 < 5", "7 > 2", "\n",
                     "\r", " ", "your query", "Your Thoughts", "x", "Paris"]),
    st.text(alphabet="<>/ \n\tabqtéİ", max_size=5),
)
_soups = st.builds(
    lambda head, parts, tail, pad: pad + head + "".join(parts) + tail + pad,
    st.sampled_from(["<think>", "<think>t</think>", ""]),
    st.lists(_pieces, max_size=14),
    st.sampled_from(["</answer>", "<answer>a</answer>", ""]),
    st.sampled_from(["", " ", "\n"]),
)
_blocks = st.lists(
    st.sampled_from(["<think>t</think>", "<search>q</search><information>i</information>",
                     "<search>q</search>", "<information>i</information>", "<think>",
                     "</think>", "\n", "<search>\nq</search>", "<answer>a</answer>"]),
    max_size=10,
).map(lambda parts: "<think>x</think>" + "".join(parts) + "<answer>y</answer>")


@settings(max_examples=600, deadline=None)
@given(st.one_of(_soups, _blocks))
def test_prop_ssrl_format_matches_independent_formulation(response):
    assert format_score(response) == _reference_ssrl_score(response)


# --- combined reward -----------------------------------------------------------------


MALFORMED_CORRECT = "The answer is <answer>Paris</answer>"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (GOOD, 1.0),
        (MALFORMED_CORRECT, 0.9),
        (GOOD.replace("<answer> Paris", "<answer> Lyon"), 0.1),
        ("I don't know.", 0.0),
    ],
)
def test_ssrl_reward_four_cases(response, expected):
    parts = ssrl_reward(response, ["Paris", "City of Light"])
    assert parts.reward == pytest.approx(expected)


def test_ssrl_reward_parts_and_weight():
    parts = ssrl_reward(GOOD, ["paris"], format_weight=0.3)
    assert isinstance(parts, RewardParts)
    assert parts == RewardParts(
        reward=pytest.approx(1.0), exact_match=1.0, format_score=1.0, f1=1.0,
        sub_exact_match=1.0, answer="Paris",
    )
    half = ssrl_reward(DIRECT, ["y"], format_weight=0.3)
    assert half.reward == pytest.approx(0.7 + 0.3 * 0.5)
    none = ssrl_reward("<think>x</think>", ["y"])
    assert none.answer is None and none.exact_match == 0.0 and none.reward == 0.0


def test_reward_parts_frozen():
    parts = ssrl_reward(GOOD, ["paris"])
    with pytest.raises(AttributeError):
        parts.reward = 0.0  # type: ignore[misc]


# --- TTRL ----------------------------------------------------------------------------


def test_majority_answer_counts_normalised_forms():
    assert majority_answer(["Paris", "the paris!", "London", None, None, None]) == "paris"


def test_majority_answer_tie_breaks_by_first_occurrence():
    assert majority_answer(["London", "Paris", "paris", "london"]) == "london"
    assert majority_answer(["Paris", "London", "london", "paris"]) == "paris"


def test_majority_answer_ignores_none_and_empty():
    assert majority_answer([None, None]) is None
    assert majority_answer([]) is None
    assert majority_answer(["", "the", "", "Rome"]) == "rome"


def _resp(ans):
    return f"<think>t</think><answer>{ans}</answer>"


def test_ttrl_rewards_single_group():
    group = [_resp("Paris"), _resp("paris."), _resp("London"), "no answer"]
    parts = ttrl_rewards(group)
    assert [p.exact_match for p in parts] == [1.0, 1.0, 0.0, 0.0]
    assert [p.reward for p in parts] == pytest.approx([0.95, 0.95, 0.05, 0.0])


def test_ttrl_rewards_groups_are_independent():
    responses = [_resp("A1"), _resp("A1"), _resp("B2"), _resp("B2"), _resp("C3"), _resp("B2")]
    parts = ttrl_rewards(responses, group_size=3)
    assert [p.exact_match for p in parts] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="group_size"):
        ttrl_rewards(responses, group_size=4)


def test_ttrl_rewards_no_answer_in_group():
    parts = ttrl_rewards(["nothing", "<think>t</think><answer> </answer>"])
    assert [p.exact_match for p in parts] == [0.0, 0.0]
    assert all(p.f1 == 0.0 and p.sub_exact_match == 0.0 for p in parts)


# --- properties ----------------------------------------------------------------------

# ASCII plus a few accented letters: beyond that, str.lower/upper are not inverse to each
# other (e.g. "ß".upper() == "SS") and case invariance is not a property of SQuAD normalisation.
_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \t\néüñ"
_texts = st.text(alphabet=_ALPHABET, max_size=40)
_words = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits + "éüñ.,'-", min_size=1, max_size=8),
    max_size=8,
)
_FAST = settings(max_examples=150, deadline=None)


@_FAST
@given(_texts)
def test_prop_normalize_idempotent(s):
    n = normalize_answer(s)
    assert normalize_answer(n) == n


@_FAST
@given(_texts)
def test_prop_normalize_case_invariant(s):
    assert normalize_answer(s.upper()) == normalize_answer(s) == normalize_answer(s.lower())


@_FAST
@given(_texts, st.lists(st.tuples(st.integers(0, 40), st.sampled_from(string.punctuation))))
def test_prop_normalize_punctuation_insertion_invariant(s, inserts):
    t = s
    for pos, ch in inserts:
        pos = min(pos, len(t))
        t = t[:pos] + ch + t[pos:]
    assert normalize_answer(t) == normalize_answer(s)


@_FAST
@given(_words, st.data())
def test_prop_normalize_extra_whitespace_invariant(words, data):
    spaced = st.text(alphabet=" \t\n\r", min_size=1, max_size=4)
    seps = [data.draw(spaced) for _ in range(max(len(words) - 1, 0))]
    lead, trail = data.draw(st.text(" \t\n", max_size=3)), data.draw(st.text(" \t\n", max_size=3))
    messy = lead + "".join(w + sep for w, sep in zip(words, seps + [""])) + trail
    assert normalize_answer(messy) == normalize_answer(" ".join(words))


@_FAST
@given(st.text(max_size=30))
def test_prop_exact_match_self(x):
    if normalize_answer(x):
        assert exact_match(x, [x]) == 1.0
        assert f1(x, [x]) == pytest.approx(1.0)
        assert sub_exact_match(x, [x]) == 1.0


@_FAST
@given(_texts, _texts)
def test_prop_exact_match_symmetric(a, b):
    assert exact_match(a, [b]) == exact_match(b, [a]) == exact_match(b, a)
