"""Tests for ssrl_jax.data.pipeline: weighted mixing, host sharding, shuffling, resume."""

import itertools
import json
from collections import Counter

import pytest

from ssrl_jax.data.pipeline import (
    collate_rows,
    make_qa_iterator,
    mix_datasets,
    num_batches,
)
from ssrl_jax.data.qa import QARow


def make_rows(source: str, n: int) -> list[QARow]:
    return [QARow(f"{source}-{i}", f"q{i}?", (f"a{i}",) * (1 + i % 3), source) for i in range(n)]


NQ, HOTPOT = make_rows("nq", 300), make_rows("hotpotqa", 500)


def take(it, n):
    return [next(it) for _ in range(n)]


# --- mixing --------------------------------------------------------------------------------


def test_mix_honours_weights_in_every_window_and_is_deterministic():
    sources = {"nq": NQ, "hotpotqa": HOTPOT}
    mixed = mix_datasets(sources, {"nq": 0.25, "hotpotqa": 0.75}, seed=3)
    # The longest mix without repeats: hotpotqa runs out at 500 / 0.75 rows.
    assert len(mixed) == 666
    assert len({r.id for r in mixed}) == len(mixed)
    for start in range(0, 600, 100):
        share = Counter(r.data_source for r in mixed[start:start + 100])["nq"] / 100
        assert share == pytest.approx(0.25, abs=0.02)
    assert mixed == mix_datasets(sources, {"hotpotqa": 3.0, "nq": 1.0}, seed=3)
    assert mixed != mix_datasets(sources, {"nq": 0.25, "hotpotqa": 0.75}, seed=4)


def test_mix_upsamples_with_num_rows_and_drops_zero_weights():
    mixed = mix_datasets({"nq": NQ, "hotpotqa": HOTPOT}, {"nq": 0.5, "hotpotqa": 0.5},
                         seed=0, num_rows=1200)
    counts = Counter(r.data_source for r in mixed)
    assert counts == {"nq": 600, "hotpotqa": 600}
    nq_ids = Counter(r.id for r in mixed if r.data_source == "nq")
    assert set(nq_ids.values()) == {2}  # each NQ row exactly twice: two reshuffled passes
    only = mix_datasets({"nq": NQ, "hotpotqa": HOTPOT}, {"nq": 1, "hotpotqa": 0}, seed=0)
    assert sorted(r.id for r in only) == sorted(r.id for r in NQ)


def test_mix_without_weights_concatenates_and_bad_weights_are_errors():
    assert mix_datasets({"nq": NQ, "hotpotqa": HOTPOT}, seed=0) == HOTPOT + NQ
    with pytest.raises(ValueError, match="weights must name exactly the sources"):
        mix_datasets({"nq": NQ, "hotpotqa": HOTPOT}, {"nq": 1.0}, seed=0)
    with pytest.raises(ValueError, match=r"weights\['nq'\] must be a finite number >= 0"):
        mix_datasets({"nq": NQ}, {"nq": -1.0}, seed=0)
    with pytest.raises(ValueError, match="source 'nq' has no rows"):
        mix_datasets({"nq": []}, {"nq": 1.0}, seed=0)


# --- the iterator --------------------------------------------------------------------------


def test_batches_hold_lists_per_field():
    rows = NQ[:8]
    batch = next(make_qa_iterator(rows, batch_size=4, seed=0, shuffle=False, num_threads=0))
    assert batch == collate_rows(rows[:4])
    assert batch["golden_answers"][2] == ("a2", "a2", "a2")
    assert set(batch) == {"id", "question", "golden_answers", "data_source", "prompt"}
    assert batch["prompt"] == [None] * 4  # rows without chat messages of their own


def test_each_epoch_is_a_new_permutation_of_all_rows():
    rows = NQ[:40]
    it = make_qa_iterator(rows, batch_size=8, seed=1, num_epochs=3)
    ids = [i for batch in it for i in batch["id"]]
    epochs = [ids[k * 40:(k + 1) * 40] for k in range(3)]
    assert len(ids) == 120 == 8 * num_batches(40, batch_size=8, num_epochs=3)
    assert all(sorted(e) == sorted(r.id for r in rows) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != [r.id for r in rows]
    again = make_qa_iterator(rows, batch_size=8, seed=1, num_epochs=3, num_threads=0)
    assert [i for batch in again for i in batch["id"]] == ids  # threads do not change the order


def test_resume_from_saved_state_gives_the_same_batches():
    kwargs = dict(batch_size=16, seed=7)  # forever
    it = make_qa_iterator(NQ, **kwargs)
    take(it, 25)  # past the first epoch boundary
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    expected = take(it, 15)
    fresh = make_qa_iterator(NQ, **kwargs)
    fresh.set_state(state)
    assert take(fresh, 15) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(batch_size=64, num_epochs=1), "no batch would be produced"),
        (dict(batch_size=8, num_epochs=0), "num_epochs must be a positive integer or None"),
        (dict(batch_size=8, seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_qa_iterator(NQ[:40], **{"seed": 0, **kwargs})


def test_forever_iterator_keeps_going():
    it = make_qa_iterator(NQ[:10], batch_size=4, seed=0)
    batches = list(itertools.islice(it, 30))
    assert len(batches) == 30
    assert Counter(i for b in batches for i in b["id"]) == {r.id: 12 for r in NQ[:10]}
