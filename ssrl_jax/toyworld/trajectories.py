"""Example self-search trajectories (SPEC §2) written from the world's facts: SFT data.

    believed = believed_world(world, seed=0)     # held-out people get invented (wrong) facts
    text = search_trajectory(believed, question)  # <think>..<search>..<information>..<answer>
    examples = sft_examples(world, questions, seed=0, direct_fraction=0.5)
    reading = sft_examples(practice, questions, direct_fraction=0, held_out="read")

Two styles:

- **search**: one ``<search>`` per hop; each ``<information>`` is the document the search
  would return, written ``Doc 1(Title: T) text`` as the retriever client shows it and laid
  out exactly as a real search appends it (``protocol.INFO_PREFIX`` / ``INFO_SUFFIX``),
  then a ``<think>`` that states the fact read from it; the last think is followed by the
  answer.
- **direct**: ``<think> I know this one. </think>`` then the answer, no search.

Trajectories are written from the *believed* world: facts of known entities are true; each
held-out person (``world.known_people``) gets one invented profile, so trajectories about
them carry wrong self-written information and a wrong answer, consistently. A model
pretrained on them learns the format and the true facts of the known part only: on held-out
people it hallucinates, as a real model does on what it never read. With ``held_out="read"``
(the practice world) held-out people show their true document instead, unlearned: reading
practice.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from ssrl_jax.protocol import INFO_PREFIX, INFO_SUFFIX, tagged
from ssrl_jax.search.client import format_documents
from ssrl_jax.toyworld.corpus import _article, document
from ssrl_jax.toyworld.world import OCCUPATIONS, Question, World

__all__ = ["DIRECT_THINK", "believed_world", "direct_trajectory", "search_trajectory",
           "sft_examples", "trajectory"]

DIRECT_THINK = "I know this one."


def believed_world(world: World, *, seed: int = 0) -> World:
    """``world`` with every held-out person's attributes replaced by invented ones."""
    rng = random.Random(f"believed-{seed}")
    cities = [c.name for c in world.cities]
    orgs = [o.name for o in world.organisations]
    people = []
    for p in world.people:
        if p.name in world.known_people:
            people.append(p)
            continue
        people.append(dataclasses.replace(
            p, occupation=rng.choice([o for o in OCCUPATIONS if o != p.occupation]),
            birth_year=rng.choice([y for y in range(1900, 2001) if y != p.birth_year]),
            birth_city=rng.choice([c for c in cities if c != p.birth_city]),
            employer=rng.choice([o for o in orgs if o != p.employer])))
    return dataclasses.replace(world, people=tuple(people))


def _doc(world: World, name: str) -> str:
    """The entity's document as ``<information>`` shows it."""
    groups = (world.countries, world.cities, world.organisations, world.people)
    for group in groups:
        for i, e in enumerate(group, start=1):
            if e.name == name:
                return format_documents([document(world, e, i)])
    raise KeyError(name)


# Per question kind: (what to find first, [(entity to search, query suffix, fact stated
# after reading it)], answer), all computed from a world.
def _plan(world: World, q: Question) -> tuple[str, list[tuple[str, str, str]], str]:
    s = q.subject
    if q.kind.startswith("person_"):
        p = world.person(s)
        city = world.city(p.birth_city)
        org = world.organisation(p.employer)
        return {
            "person_birth_city": (f"where {s} was born",
                                  [(s, "birthplace", f"{s} was born in {city.name}.")],
                                  city.name),
            "person_birth_year": (f"the year {s} was born",
                                  [(s, "birth year", f"{s} was born in {p.birth_year}.")],
                                  str(p.birth_year)),
            "person_occupation": (f"the occupation of {s}",
                                  [(s, "occupation", f"{s} is {_article(p.occupation)} {p.occupation}.")],
                                  p.occupation),
            "person_employer": (f"where {s} works",
                                [(s, "employer", f"{s} works for {org.name}.")], org.name),
            "person_birth_country": (
                f"where {s} was born, then its country",
                [(s, "birthplace", f"{s} was born in {city.name}. Now I need the country of "
                                   f"{city.name}."),
                 (city.name, "country", f"{city.name} is in {city.country}.")],
                city.country),
            "person_employer_city": (
                f"where {s} works, then where it is based",
                [(s, "employer", f"{s} works for {org.name}. Now I need where {org.name} is "
                                 "based."),
                 (org.name, "city", f"{org.name} is based in {org.headquarters}.")],
                org.headquarters),
        }[q.kind]
    if q.kind.startswith("org_"):
        o = world.organisation(s)
        founder = world.person(o.founder)
        city = world.city(o.headquarters)
        return {
            "org_founded": (f"when {s} was founded",
                            [(s, "founded", f"{s} was founded in {o.founded}.")],
                            str(o.founded)),
            "org_city": (f"where {s} is based",
                         [(s, "city", f"{s} is based in {city.name}.")], city.name),
            "org_founder": (f"who founded {s}",
                            [(s, "founder", f"{s} was founded by {founder.name}.")],
                            founder.name),
            "org_country": (
                f"where {s} is based, then its country",
                [(s, "city", f"{s} is based in {city.name}. Now I need the country of "
                             f"{city.name}."),
                 (city.name, "country", f"{city.name} is in {city.country}.")],
                city.country),
            "org_founder_city": (
                f"who founded {s}, then where that person was born",
                [(s, "founder", f"{s} was founded by {founder.name}. Now I need where "
                                f"{founder.name} was born."),
                 (founder.name, "birthplace", f"{founder.name} was born in "
                                              f"{founder.birth_city}.")],
                founder.birth_city),
        }[q.kind]
    if q.kind == "city_country":
        c = world.city(s)
        return (f"the country of {s}", [(s, "country", f"{s} is in {c.country}.")], c.country)
    if q.kind == "country_capital":
        c = world.country(s)
        return (f"the capital of {s}", [(s, "capital", f"The capital of {s} is {c.capital}.")],
                c.capital)
    raise ValueError(f"unknown question kind {q.kind!r}")


def search_trajectory(world: World, q: Question) -> str:
    """The self-search trajectory for ``q`` written from ``world``'s facts."""
    need, hops, answer = _plan(world, q)
    text = tagged("think", f"I need to find {need}.") + "\n"
    for entity, suffix, fact in hops:
        # The observation exactly as a real search appends it (INFO_PREFIX … INFO_SUFFIX), so
        # that what the model writes itself can be swapped for a retriever's (Sim2Real).
        text += tagged("search", f"{entity} {suffix}")
        text += f"{INFO_PREFIX}{_doc(world, entity)}{INFO_SUFFIX}"
        text += tagged("think", fact) + "\n"
    return text + tagged("answer", answer)


def direct_trajectory(world: World, q: Question) -> str:
    """An answer without searching: ``<think> I know this one. </think>`` + the answer."""
    _, _, answer = _plan(world, q)
    return tagged("think", DIRECT_THINK) + "\n" + tagged("answer", answer)


def trajectory(world: World, q: Question, style: str) -> str:
    if style == "search":
        return search_trajectory(world, q)
    if style == "direct":
        return direct_trajectory(world, q)
    raise ValueError(f"style must be 'search' or 'direct', got {style!r}")


def answer_of(world: World, q: Question) -> str:
    """The answer ``world`` implies for ``q`` (the believed answer on a believed world)."""
    return _plan(world, q)[2]


def sft_examples(world: World, questions: Sequence[Question], *, seed: int = 0,
                 direct_fraction: float = 0.5, held_out: str = "invent",
                 learn_invented: bool = True) -> list[dict]:
    """One trajectory per question: ``{question, response, style, known, unread}``; a seeded
    ``direct_fraction`` of them answer without searching.

    held_out: what a trajectory about a held-out person shows. ``"invent"``: the believed
    world's invented profile, consistently (what the model will hallucinate; ``world``'s own
    questions). ``"read"``: the true document, which the model never pretrained on; its
    entities are listed in ``unread`` so that pretraining masks the loss on those
    ``<information>`` blocks, and the fact stated after one can only be read from it
    (reading practice, the practice world).

    learn_invented: with ``held_out="invent"``, whether the model is taught to write the
    invented documents (True: it memorises them and writes them back under self-search) or
    only shown them, listed in ``unread`` like reading practice (False: what it states after
    one is read from it).
    """
    if held_out not in ("invent", "read"):
        raise ValueError(f"held_out must be 'invent' or 'read', got {held_out!r}")
    source = believed_world(world, seed=seed) if held_out == "invent" else world
    rng = random.Random(f"sft-{seed}")
    out = []
    for q in questions:
        style = "direct" if rng.random() < direct_fraction else "search"
        known = all(world.is_known(e) for e in q.entities)
        unread = [] if style == "direct" or (held_out == "invent" and learn_invented) else [
            entity for entity, _, _ in _plan(world, q)[1] if not world.is_known(entity)]
        out.append({"question": q.question, "response": trajectory(source, q, style),
                    "style": style, "known": known, "unread": unread})
    return out
