"""The world's documents: one per entity, in the retriever's corpus jsonl layout.

    docs = documents(world)                 # [{"id": "tw-person-007", "contents": "Title\\ntext"}]
    write_corpus(docs, "corpus.jsonl")      # readable by ssrl_jax.search.corpus.read_corpus

The same text is what a model pretrains on (``documents(world, known_only=True)`` drops the
held-out people) and what a self-search trajectory writes inside ``<information>``, in the form
the retriever client shows documents (``Doc 1(Title: T) text``,
``ssrl_jax.search.client.format_documents``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from ssrl_jax.toyworld.world import City, Country, Organisation, Person, World

__all__ = ["document", "document_text", "documents", "write_corpus"]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def document_text(world: World, entity) -> str:
    """The text of an entity's document (without the title line)."""
    if isinstance(entity, Person):
        return (f"{entity.name} is {_article(entity.occupation)} {entity.occupation} born in "
                f"{entity.birth_city} in {entity.birth_year}. {entity.alias} works for "
                f"{entity.employer}.")
    if isinstance(entity, Organisation):
        return (f"{entity.name} was founded in {entity.founded} by {entity.founder}. It is "
                f"based in {entity.headquarters}.")
    if isinstance(entity, City):
        capital = world.country(entity.country).capital == entity.name
        return (f"{entity.name} is {'the capital' if capital else 'a city'} of "
                f"{entity.country}.")
    if isinstance(entity, Country):
        return (f"{entity.name}, also called the {entity.alias}, is a country whose capital "
                f"is {entity.capital}.")
    raise TypeError(f"not an entity of the world: {entity!r}")


def _doc_id(entity, index: int) -> str:
    kind = {Person: "person", Organisation: "org", City: "city", Country: "country"}
    return f"tw-{kind[type(entity)]}-{index:03d}"


def document(world: World, entity, index: int) -> dict[str, str]:
    """``{"id", "contents": "Title\\ntext"}`` of one entity (title = its name)."""
    return {"id": _doc_id(entity, index), "contents": f"{entity.name}\n"
            f"{document_text(world, entity)}"}


def documents(world: World, *, known_only: bool = False) -> list[dict[str, str]]:
    """One document per entity (countries, cities, organisations, people, in that order).

    known_only: leave out the held-out people (``world.known_people``), as pretraining does.
    """
    docs = []
    for group in (world.countries, world.cities, world.organisations, world.people):
        for i, entity in enumerate(group, start=1):
            if known_only and not world.is_known(entity.name):
                continue
            docs.append(document(world, entity, i))
    return docs


def write_corpus(docs: Iterable[dict[str, str]], path: str | os.PathLike) -> int:
    """Writes the corpus jsonl (one ``{"id", "contents"}`` per line); returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"id": doc["id"], "contents": doc["contents"]},
                               ensure_ascii=False) + "\n")
            n += 1
    return n
