"""The toy world generator: determinism, answers consistent with the facts, corpus format."""

import dataclasses
import json

import pytest

from ssrl_jax.data.qa import read_jsonl
from ssrl_jax.rl.rewards import exact_match, extract_answer, format_score
from ssrl_jax.search.corpus import read_corpus, split_title
from ssrl_jax.toyworld import assets_dir
from ssrl_jax.toyworld.corpus import documents, write_corpus
from ssrl_jax.toyworld.pretrain import PretrainSettings
from ssrl_jax.toyworld.trajectories import (answer_of, believed_world, direct_trajectory,
                                            search_trajectory, sft_examples)
from ssrl_jax.toyworld.world import (make_questions, make_world, name_words, practice_world,
                                     split_questions)


@pytest.fixture(scope="module")
def world():
    return make_world(0)


@pytest.fixture(scope="module")
def questions(world):
    return make_questions(world)


def test_same_seed_same_world_other_seed_other_world(world):
    assert make_world(0) == world
    assert make_questions(make_world(0)) == make_questions(world)
    assert documents(make_world(0)) == documents(world)
    other = make_world(1)
    assert [p.name for p in other.people] != [p.name for p in world.people]


def test_world_shape(world):
    assert 60 <= len(world.entities) <= 150
    names = [e.name for e in world.entities]
    assert len(set(names)) == len(names), "entity names are unique"
    assert 0 < len(world.known_people) < len(world.people)
    for c in world.countries:
        assert world.city(c.capital).country == c.name
    for p in world.people:
        world.city(p.birth_city)
        world.organisation(p.employer)
    for o in world.organisations:
        world.person(o.founder)
        world.city(o.headquarters)


def test_questions_answer_from_the_facts(world, questions):
    assert len({q.id for q in questions}) == len(questions)
    assert {q.hops for q in questions} == {1, 2}
    for q in questions:
        assert q.question.endswith("?") and q.subject in q.question
        assert q.golden_answers and all(isinstance(g, str) and g for g in q.golden_answers)
        assert answer_of(world, q) == q.golden_answers[0]
    by_kind = {q.kind: q for q in questions}
    q = by_kind["person_birth_country"]
    p = world.person(q.subject)
    country = world.country(world.city(p.birth_city).country)
    assert q.golden_answers == (country.name, country.alias)
    q = by_kind["person_employer"]
    org = world.organisation(world.person(q.subject).employer)
    assert q.golden_answers == (org.name, org.alias)
    assert exact_match(org.alias, q.golden_answers) == 1.0


def test_split_is_a_disjoint_cover_with_every_kind(questions):
    splits = split_questions(questions, seed=0)
    ids = [q.id for s in splits.values() for q in s]
    assert sorted(ids) == sorted(q.id for q in questions)
    kinds = {q.kind for q in questions}
    for name in ("sft", "train", "test"):
        assert {q.kind for q in splits[name]} == kinds
    assert split_questions(questions, seed=0) == splits


def test_trajectories_are_well_formed_and_hallucinate_on_held_out(world, questions):
    believed = believed_world(world, seed=0)
    held_out = [q for q in questions if not all(world.is_known(e) for e in q.entities)]
    known = [q for q in questions if all(world.is_known(e) for e in q.entities)]
    assert held_out and known
    for q in questions[:40] + questions[-20:]:
        text = search_trajectory(world, q)
        assert format_score(text) == 1.0
        assert text.count("<search>") == q.hops
        assert exact_match(extract_answer(text), q.golden_answers) == 1.0
        assert format_score(direct_trajectory(world, q)) == 0.5
    for q in known:
        assert answer_of(believed, q) == q.golden_answers[0]
    single_hop_held_out = [q for q in held_out if q.hops == 1]
    assert single_hop_held_out
    for q in single_hop_held_out:  # the invented profile differs in every attribute
        assert exact_match(answer_of(believed, q), q.golden_answers) == 0.0
    sft = sft_examples(world, questions[:100], seed=0, direct_fraction=0.5)
    assert {ex["style"] for ex in sft} == {"search", "direct"}
    assert sft == sft_examples(world, questions[:100], seed=0, direct_fraction=0.5)
    assert not any(ex["unread"] for ex in sft)


def test_invented_documents_can_be_shown_unlearned(world):
    """learn_invented=False: the same invented trajectories, their held-out documents unread."""
    questions = make_questions(world)
    learned = sft_examples(world, questions, seed=0, direct_fraction=0.5)
    shown = sft_examples(world, questions, seed=0, direct_fraction=0.5, learn_invented=False)
    assert [ex["response"] for ex in shown] == [ex["response"] for ex in learned]
    by_question = {q.question: q for q in questions}
    unread = [ex for ex in shown if ex["unread"]]
    assert unread
    for ex in shown:
        q = by_question[ex["question"]]
        expected = [] if ex["style"] == "direct" else [
            e for e in q.entities if not world.is_known(e)]
        assert ex["unread"] == expected
    for ex in unread:
        for entity in ex["unread"]:
            assert f"(Title: {entity})" in ex["response"]


def test_practice_world_is_disjoint_deterministic_and_holds_out_its_readers(world):
    practice = practice_world(world, num_people=40)
    assert practice == practice_world(world, num_people=40)
    assert len(practice.people) == 40
    assert practice.known_people == {p.name for p in practice.people}
    assert not name_words(practice) & name_words(world), "no name word is shared"
    # Same question kinds, so its trajectories teach the skills the world's questions need.
    assert ({q.kind for q in make_questions(practice)} == {q.kind for q in make_questions(world)})
    half = practice_world(world, num_people=40, known_fraction=0.5)
    assert half.people == practice.people and len(half.known_people) == 20


def test_reading_practice_shows_true_unread_documents(world):
    practice = practice_world(world, num_people=40, known_fraction=0.5)
    questions = make_questions(practice)
    reading = sft_examples(practice, questions, seed=0, direct_fraction=0.0, held_out="read")
    by_question = {q.question: q for q in questions}
    assert any(ex["unread"] for ex in reading) and not all(ex["unread"] for ex in reading)
    for ex in reading:
        q = by_question[ex["question"]]
        # the truth, not the believed world's invention, even about held-out people
        assert exact_match(extract_answer(ex["response"]), q.golden_answers) == 1.0
        assert ex["unread"] == [e for e in q.entities if not practice.is_known(e)]
        for entity in ex["unread"]:
            assert f"(Title: {entity})" in ex["response"]
    invented = sft_examples(practice, questions, seed=0, direct_fraction=0.0)
    assert not any(ex["unread"] for ex in invented)
    with pytest.raises(ValueError, match="held_out"):
        sft_examples(practice, questions, held_out="true")


def test_reserved_words_are_never_used():
    base = make_world(3)
    reserved = {w.upper() for w in name_words(base)}
    other = make_world(3, reserved=reserved)
    assert not name_words(other) & name_words(base)


def test_corpus_is_read_by_the_search_package(world, tmp_path):
    docs = documents(world)
    assert len(docs) == len(world.entities)
    path = tmp_path / "corpus.jsonl"
    assert write_corpus(docs, path) == len(docs)
    read = read_corpus(path)
    assert read == docs
    titles = {split_title(d["contents"])[0] for d in read}
    assert titles == {e.name for e in world.entities}
    known = documents(world, known_only=True)
    assert len(known) == len(docs) - (len(world.people) - len(world.known_people))


def test_shipped_world_files_match_the_generator():
    out = assets_dir()
    seed = json.loads((out / "world.json").read_text())["seed"]
    world = make_world(seed)
    splits = split_questions(make_questions(world), seed=seed)
    assert read_corpus(out / "corpus.jsonl") == documents(world)
    for name in ("train", "test"):
        rows = read_jsonl(out / f"{name}.jsonl")
        assert [(r.id, r.question, r.golden_answers) for r in rows] == [
            (q.id, q.question, q.golden_answers) for q in splits[name]]
    shipped = [json.loads(line) for line in
               (out / "sft_trajectories.jsonl").read_text().splitlines()]
    settings = PretrainSettings()
    assert shipped == sft_examples(world, splits["sft"], seed=seed,
                                   direct_fraction=settings.direct_fraction,
                                   learn_invented=settings.invented_documents == "learn")


def test_shipped_model_was_pretrained_with_the_script_defaults():
    """`pretrain --out DIR` with no other flag reproduces the shipped model."""
    log = json.loads((assets_dir() / "pretrain_log.json").read_text())
    assert log["settings"] == dataclasses.asdict(PretrainSettings())


def test_an_unknown_invented_documents_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="--invented-documents='ignore'"):
        PretrainSettings(invented_documents="ignore")
