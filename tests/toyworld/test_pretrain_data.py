"""Pretraining data: self-written information is laid out and tokenised exactly as a real
search appends it, so a model trained on it can have its searches answered by a retriever."""

import pytest
from transformers import AutoTokenizer

from ssrl_jax.protocol import INFO_PREFIX, INFO_SUFFIX
from ssrl_jax.search.client import format_documents
from ssrl_jax.search.retriever import Hit
from ssrl_jax.toyworld import model_dir
from ssrl_jax.toyworld.corpus import documents
from ssrl_jax.toyworld.pretrain import response_tokens, text_encoder
from ssrl_jax.toyworld.trajectories import search_trajectory
from ssrl_jax.toyworld.world import make_questions, make_world


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(model_dir())


def _contains(ids, part):
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def test_information_blocks_are_what_a_real_search_would_inject(tokenizer):
    world = make_world(0)
    docs = {d["contents"].partition("\n")[0]: d for d in documents(world)}
    encode = text_encoder(tokenizer)
    question = next(q for q in make_questions(world) if q.hops == 2 and
                    all(world.is_known(e) for e in q.entities))
    text = search_trajectory(world, question)
    ids, mask = response_tokens(text, encode)
    assert tokenizer.decode(ids) == text and mask == [1] * len(ids)
    assert text.count(INFO_PREFIX) == 2
    entity = question.entities[0]
    # search_rollout appends encode(INFO_PREFIX) + encode(client text) + encode(INFO_SUFFIX)
    shown = format_documents([Hit(docs[entity]["id"], docs[entity]["contents"])])
    injected = encode(INFO_PREFIX) + encode(shown) + encode(INFO_SUFFIX)
    assert _contains(ids, injected), "the self-written block differs from the injection"


def test_text_without_information_is_encoded_whole_and_an_open_block_is_an_error(tokenizer):
    encode = text_encoder(tokenizer)
    direct = "<think> I know this one. </think>\n<answer> Dritro </answer>"
    assert response_tokens(direct, encode)[0] == encode(direct)
    with pytest.raises(ValueError, match="not closed"):
        response_tokens("<search> x </search>" + INFO_PREFIX + "Doc 1(Title: x) y", encode)


def test_unread_documents_are_shown_but_carry_no_loss(tokenizer):
    world = make_world(0)
    encode = text_encoder(tokenizer)
    question = next(q for q in make_questions(world) if q.kind == "person_birth_country")
    person, city = question.entities
    text = search_trajectory(world, question)
    ids, mask = response_tokens(text, encode, unread=[person])
    assert ids == response_tokens(text, encode)[0], "masking never changes the tokens"
    unlearned = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert unlearned.startswith(f"Doc 1(Title: {person})") and city not in unlearned.split(")")[0]
    learned = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert f"{INFO_PREFIX}{INFO_SUFFIX}" in learned, "the block's frame is still learnt"
    assert f"(Title: {city})" in learned and f"(Title: {person})" not in learned
    assert f"<think> {person} was born in" in learned, "the fact read back is learnt"
