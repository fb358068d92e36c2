"""A seeded, invented world: countries, cities, organisations and people, and questions on it.

    world = make_world(seed=0)
    world.people[0].name, world.city(world.people[0].birth_city).country
    questions = make_questions(world)              # single-hop and multi-hop, with aliases
    splits = split_questions(questions, seed=0)    # {"sft": [...], "train": [...], "test": [...]}

Every name is built from invented syllables, so no fact of this world can be known from
anywhere else: what a model answers right it learned from this world's documents. The
generator is pure Python and deterministic in its seed (``random.Random(seed)`` only).

Entities and facts:

- country: name, alias ("Republic of X"), capital (one of its cities);
- city: name, country;
- organisation: name, alias (the name without its kind word), kind, founded year,
  headquarters city, founder (a person);
- person: first and last name (alias: the last name alone), occupation, birth year,
  birth city, employer (an organisation).

``World.known_people`` is the set of people whose documents a model pretrains on (the rest
are held out, so a model can only hallucinate about them; a real search engine over the
world's corpus still finds them). Questions name their ``entities`` (the entities the
answer chain passes through), so each question knows whether the model could know it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence

__all__ = [
    "City", "Country", "Organisation", "Person", "Question", "World", "make_questions",
    "make_world", "practice_world", "split_questions", "SPLITS",
]

SPLITS = ("sft", "train", "test")

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r",
           "s", "st", "t", "th", "v", "z", "sk", "tr", "j")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "sk", "nd", "rk", "v", "x")
OCCUPATIONS = ("painter", "engineer", "physician", "poet", "architect", "chemist", "sailor",
               "composer", "judge", "astronomer", "baker", "botanist")
_PRACTICE_SEED_OFFSET = 1_000_003
ORG_KINDS = ("Works", "Institute", "Company", "Guild", "Press", "Foundry", "Trust", "Academy")


@dataclasses.dataclass(frozen=True)
class Country:
    name: str
    alias: str
    capital: str


@dataclasses.dataclass(frozen=True)
class City:
    name: str
    country: str


@dataclasses.dataclass(frozen=True)
class Organisation:
    name: str
    alias: str
    kind: str
    founded: int
    headquarters: str
    founder: str


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    alias: str
    occupation: str
    birth_year: int
    birth_city: str
    employer: str


@dataclasses.dataclass(frozen=True)
class Question:
    """One question with its gold answers (first = canonical, then aliases).

    kind: e.g. ``person_birth_city`` or ``person_birth_country`` (two hops); hops: 1 or 2;
    subject: the entity the question names; entities: every entity on the answer chain, in
    order (subject first).
    """

    id: str
    question: str
    golden_answers: tuple[str, ...]
    kind: str
    hops: int
    subject: str
    entities: tuple[str, ...]

    def to_flashrag(self, data_source: str = "toyworld") -> dict:
        """The FlashRAG row ``{id, question, golden_answers, data_source}``."""
        return {"id": self.id, "question": self.question,
                "golden_answers": list(self.golden_answers), "data_source": data_source}


@dataclasses.dataclass(frozen=True)
class World:
    seed: int
    countries: tuple[Country, ...]
    cities: tuple[City, ...]
    organisations: tuple[Organisation, ...]
    people: tuple[Person, ...]
    known_people: frozenset[str]

    def country(self, name: str) -> Country:
        return _by_name(self.countries, name)

    def city(self, name: str) -> City:
        return _by_name(self.cities, name)

    def organisation(self, name: str) -> Organisation:
        return _by_name(self.organisations, name)

    def person(self, name: str) -> Person:
        return _by_name(self.people, name)

    def entity(self, name: str):
        for group in (self.countries, self.cities, self.organisations, self.people):
            for e in group:
                if e.name == name:
                    return e
        raise KeyError(name)

    @property
    def entities(self) -> tuple:
        return self.countries + self.cities + self.organisations + self.people

    def is_known(self, name: str) -> bool:
        """Whether a model pretrained on the world's known documents can know this entity."""
        return not isinstance(self.entity(name), Person) or name in self.known_people


def _by_name(items: Iterable, name: str):
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)


class _Names:
    """Unique invented words: onset + vowel + coda syllables, capitalised."""

    def __init__(self, rng: random.Random, reserved: Iterable[str] = ()):
        self.rng = rng
        self.used: set[str] = {w.lower() for w in reserved}

    def word(self, syllables: Sequence[int] = (2, 2, 3)) -> str:
        while True:
            n = self.rng.choice(syllables)
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n)]
            word = "".join(parts) + self.rng.choice(_CODAS)
            if 4 <= len(word) <= 10 and word not in self.used:
                self.used.add(word)
                return word.capitalize()


def make_world(seed: int = 0, *, num_countries: int = 5, cities_per_country: int = 3,
               num_organisations: int = 12, num_people: int = 64,
               known_fraction: float = 0.75, reserved: Iterable[str] = ()) -> World:
    """The world of ``seed``: about 100 entities (defaults: 5 + 15 + 12 + 64).

    reserved: words (any case) no name may use, e.g. another world's.
    """
    rng = random.Random(seed)
    names = _Names(rng, reserved)
    country_names = [names.word((2, 2, 3)) for _ in range(num_countries)]
    cities: list[City] = []
    countries: list[Country] = []
    for cname in country_names:
        own = [City(names.word((2, 3)), cname) for _ in range(cities_per_country)]
        cities.extend(own)
        style = rng.choice(("Republic", "Kingdom", "Union"))
        countries.append(Country(cname, f"{style} of {cname}", own[0].name))

    people_names: list[tuple[str, str]] = []
    for _ in range(num_people):
        first, last = names.word((2,)), names.word((2, 3))
        people_names.append((f"{first} {last}", last))
    org_stems = [names.word((2, 3)) for _ in range(num_organisations)]
    founders = rng.sample([n for n, _ in people_names], num_organisations)
    organisations = []
    for stem, founder in zip(org_stems, founders):
        kind = rng.choice(ORG_KINDS)
        organisations.append(Organisation(
            name=f"{stem} {kind}", alias=stem, kind=kind, founded=rng.randint(1820, 1990),
            headquarters=rng.choice(cities).name, founder=founder))

    people = []
    for full, last in people_names:
        people.append(Person(
            name=full, alias=last, occupation=rng.choice(OCCUPATIONS),
            birth_year=rng.randint(1900, 2000), birth_city=rng.choice(cities).name,
            employer=rng.choice(organisations).name))
    order = list(range(num_people))
    rng.shuffle(order)
    known = frozenset(people[i].name for i in order[:round(known_fraction * num_people)])
    return World(seed, tuple(countries), tuple(cities), tuple(organisations), tuple(people),
                 known)


def name_words(world: World) -> set[str]:
    """Every invented word in the world's names (lower case)."""
    return {w.lower() for e in world.entities for w in e.name.split() if w not in ORG_KINDS}


def practice_world(world: World, *, num_people: int = 128,
                   known_fraction: float = 1.0) -> World:
    """A second, disjoint world (no name shared with ``world``) for pretraining practice.

    Pretraining reads the documents of its known people and one trajectory for each of its
    questions: many more worked examples of copying a name from the question into
    ``<search>`` and the document title, and of reading a fact back out of
    ``<information>``, than ``world``'s own ``sft`` split has, without giving away any
    ``world`` question outside that split. Its held-out people (``1 - known_fraction``) are
    reading practice: their trajectories show the true document, which the model never
    read, so the fact can only be taken from the information (``sft_examples``,
    ``held_out="read"``).
    """
    return make_world(world.seed + _PRACTICE_SEED_OFFSET, num_countries=len(world.countries),
                      cities_per_country=len(world.cities) // len(world.countries),
                      num_organisations=len(world.organisations), num_people=num_people,
                      known_fraction=known_fraction, reserved=name_words(world))


# ------------------------------------------------------------------ questions ----

def _golds(world: World, name: str) -> tuple[str, ...]:
    """The canonical name and its aliases (people: last name; countries: 'Republic of X')."""
    entity = world.entity(name)
    alias = getattr(entity, "alias", None)
    return (name, alias) if alias and alias != name else (name,)


def make_questions(world: World) -> list[Question]:
    """Every question the world supports, in a fixed order (ids ``toyworld-0001``, ...)."""
    qs: list[tuple[str, str, tuple[str, ...], int, tuple[str, ...]]] = []

    def add(kind, text, golds, entities):
        qs.append((kind, text, tuple(golds), 1 if len(entities) == 1 else 2, tuple(entities)))

    for p in world.people:
        city = world.city(p.birth_city)
        org = world.organisation(p.employer)
        add("person_birth_city", f"Where was {p.name} born?", _golds(world, city.name),
            [p.name])
        add("person_birth_year", f"In which year was {p.name} born?", [str(p.birth_year)],
            [p.name])
        add("person_occupation", f"What is the occupation of {p.name}?", [p.occupation],
            [p.name])
        add("person_employer", f"Which organisation does {p.name} work for?",
            _golds(world, org.name), [p.name])
        add("person_birth_country", f"In which country was {p.name} born?",
            _golds(world, city.country), [p.name, city.name])
        add("person_employer_city", f"In which city is the organisation {p.name} works for "
            "based?", _golds(world, org.headquarters), [p.name, org.name])
    for o in world.organisations:
        founder = world.person(o.founder)
        add("org_founded", f"In which year was {o.name} founded?", [str(o.founded)], [o.name])
        add("org_city", f"In which city is {o.name} based?", _golds(world, o.headquarters),
            [o.name])
        add("org_founder", f"Who founded {o.name}?", _golds(world, founder.name), [o.name])
        add("org_country", f"In which country is {o.name} based?",
            _golds(world, world.city(o.headquarters).country), [o.name, o.headquarters])
        add("org_founder_city", f"Where was the founder of {o.name} born?",
            _golds(world, founder.birth_city), [o.name, founder.name])
    for c in world.cities:
        add("city_country", f"In which country is {c.name}?", _golds(world, c.country),
            [c.name])
    for c in world.countries:
        add("country_capital", f"What is the capital of {c.name}?", _golds(world, c.capital),
            [c.name])
    return [Question(f"toyworld-{i:04d}", text, golds, kind, hops, entities[0], entities)
            for i, (kind, text, golds, hops, entities) in enumerate(qs, start=1)]


def split_questions(questions: Sequence[Question], *, seed: int = 0,
                    fractions: tuple[float, float, float] = (0.4, 0.4, 0.2)
                    ) -> dict[str, list[Question]]:
    """Random disjoint split into ``sft`` (pretraining trajectories), ``train`` (GRPO) and
    ``test`` (evaluation), stratified by question kind; each split keeps file order."""
    rng = random.Random(f"split-{seed}")
    by_kind: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_kind.setdefault(q.kind, []).append(i)
    assignment: dict[int, str] = {}
    for kind in sorted(by_kind):
        idx = by_kind[kind][:]
        rng.shuffle(idx)
        n_sft = round(fractions[0] * len(idx))
        n_train = round(fractions[1] * len(idx))
        for j, i in enumerate(idx):
            assignment[i] = "sft" if j < n_sft else "train" if j < n_sft + n_train else "test"
    return {s: [q for i, q in enumerate(questions) if assignment[i] == s] for s in SPLITS}
