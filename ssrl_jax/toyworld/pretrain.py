r"""Writes the toy world's files and pretrains the tiny Llama that knows part of it.

    python -m ssrl_jax.toyworld.pretrain --out ssrl_jax/assets/toyworld [--steps N --seed S]

Writes into OUT:

    world.json                 entities, facts, which people are held out of pretraining
    corpus.jsonl               one document per entity ({"id", "contents": "Title\ntext"})
    train.jsonl, test.jsonl    GRPO / evaluation questions (FlashRAG rows)
    sft.jsonl                  the questions whose example trajectories the model saw
    sft_trajectories.jsonl     those trajectories ({question, response, style, known, unread})
    benchmarks/toyworld_1hop/test.jsonl    single-hop test questions  } the layout
    benchmarks/toyworld_2hop/test.jsonl    multi-hop test questions   } `evaluate` reads
    model/                     HF directory: float32 safetensors, config, tokenizer
    pretrain_log.json          loss curve and greedy EM

The model is our `Transformer` (Llama family, ~1M parameters) trained from scratch with
AdamW on next-token loss over (a) the documents of the *known* entities (held-out people's
documents are left out; each document in two forms, as the corpus writes it and as a search
shows it), (b) one trajectory per `sft` question in the exact prompt the trainer uses
(`prompt_token_ids(question, mode="self_search", chat=True)`, loss on the response only;
each `<information>` block encoded token for token as a real search injects it) and
(c) the documents of a disjoint *practice world* and one trajectory for each of its questions
(`world.practice_world`): without them the few `sft` trajectories are memorised, and the
model never learns to copy a new question's entity into its search and document title. The
practice trajectories all search (`practice_direct_fraction = 0`): direct answers practised
on ~900 questions teach the model to pull facts out of its weights without writing the
document first, and then self-search no longer pays (docs/toyworld.md, "The model").
`--practice-known-fraction F < 1` holds out the rest of the practice people as *reading
practice*: their documents are left out, and their trajectories show the true document with
no loss on it, so the fact after it can only be read from the context. That teaches the model
to use a real search's documents; with segment packing it costs self-search nothing, and the
shipped model uses F = 0.5 (docs/toyworld.md, "Reading practice").
`--invented-documents read` (the default) does the same to the invented documents that the
`sft` trajectories show about the real world's held-out people (`learn` teaches the model to
write them, the previous shipped model): the model then reads a real document about them
instead of writing back what it was shown. With 70 % of the `sft` trajectories answering
directly (`--direct-fraction 0.7`) it still starts as a reluctant searcher, so GRPO has
searching to teach (docs/toyworld.md, "Reading the invented documents").
Examples are packed into rows of `--seq-len` tokens, each example attending only to itself
with positions from 0 (`--packing segments`); letting an example see the unrelated ones
packed before it (`--packing concat`, the previous model) made a model that searched on
more questions but wrote the wrong fact from its own document more often (docs/toyworld.md,
"Packing"). Everything is deterministic
given `--seed` (the world, the split, the tokenizer, the data order and the initialisation).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import tempfile
import time
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from ssrl_jax.cli_errors import ArgumentParser, cli_main
from ssrl_jax.protocol import INFO_PREFIX, INFO_SUFFIX, SEARCH_OPEN
from ssrl_jax.search.client import format_documents
from ssrl_jax.toyworld.corpus import documents, write_corpus
from ssrl_jax.toyworld.trajectories import sft_examples
from ssrl_jax.toyworld.world import (Question, World, make_questions, make_world, practice_world,
                                     split_questions)

_INFO_TITLE = re.compile(r"Doc 1\(Title: (.*?)\) ")  # format_documents' first line
MODE = "self_search"
CHAT = True  # configs/toyworld.py sets data.chat = "true" to match
DATA_SOURCE = "toyworld"
SINGLE_HOP_BENCHMARK = "toyworld_1hop"   # <out>/benchmarks/toyworld_1hop/test.jsonl
MULTI_HOP_BENCHMARK = "toyworld_2hop"    # <out>/benchmarks/toyworld_2hop/test.jsonl


PACKINGS = ("concat", "segments")
SETTING_CHOICES = {"packing": PACKINGS, "invented_documents": ("learn", "read")}


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    steps: int = 1000
    batch_size: int = 8          # packed rows per step
    seq_len: int = 512
    learning_rate: float = 4e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    # 70 % of the sft trajectories answer directly: a reluctant searcher that GRPO teaches to
    # search (at 0.6 with unlearned invented documents it already searches on 72 % of the
    # test questions and GRPO lowers its EM; docs/toyworld.md, "Reading the invented documents").
    direct_fraction: float = 0.7
    doc_repeats: int = 8          # copies of each known document per pass over the data
    practice_people: int = 128    # people of the practice world (0: none), see practice_world
    practice_direct_fraction: float = 0.0  # practice trajectories search (see module doc)
    # The other half of the practice people are reading practice: a model that both recalls
    # and reads what a real search returns (1.0: none; docs/toyworld.md, "Reading practice").
    practice_known_fraction: float = 0.5
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    eval_max_new_tokens: int = 192
    # How packed examples see each other: "segments" (each attends only to itself and its
    # positions start at 0, as every prompt does at inference; the shipped model) or
    # "concat" (each attends to the examples before it in its row, positions run on; the
    # previous model, a worse searcher: docs/toyworld.md, "Packing").
    packing: str = "segments"
    # What the sft trajectories about held-out people teach of the invented documents they
    # show: "read" (no loss on them, as reading practice; the shipped model, which then reads
    # a real document about a held-out person instead of writing back its invented one) or
    # "learn" (the model writes them back under self-search; the previous shipped model).
    # docs/toyworld.md, "Reading the invented documents".
    invented_documents: str = "read"

    def __post_init__(self):
        for name, allowed in SETTING_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)!r}: must be "
                                 f"one of {allowed}")


# ------------------------------------------------------------------ world files ----

def world_dict(world: World) -> dict[str, Any]:
    return {"seed": world.seed,
            "countries": [dataclasses.asdict(c) for c in world.countries],
            "cities": [dataclasses.asdict(c) for c in world.cities],
            "organisations": [dataclasses.asdict(o) for o in world.organisations],
            "people": [{**dataclasses.asdict(p), "known": p.name in world.known_people}
                       for p in world.people]}


def _write_rows(rows: Sequence[dict], path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_world_files(out: pathlib.Path, world: World, splits: dict[str, list[Question]],
                      sft: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "world.json").write_text(json.dumps(world_dict(world), indent=1) + "\n")
    write_corpus(documents(world), out / "corpus.jsonl")
    for name in ("sft", "train", "test"):
        _write_rows([q.to_flashrag(DATA_SOURCE) for q in splits[name]], out / f"{name}.jsonl")
    _write_rows(sft, out / "sft_trajectories.jsonl")
    test = splits["test"]
    _write_rows([q.to_flashrag(f"{DATA_SOURCE}_1hop") for q in test if q.hops == 1],
                out / "benchmarks" / SINGLE_HOP_BENCHMARK / "test.jsonl")
    _write_rows([q.to_flashrag(f"{DATA_SOURCE}_2hop") for q in test if q.hops == 2],
                out / "benchmarks" / MULTI_HOP_BENCHMARK / "test.jsonl")


# ------------------------------------------------------------------ token data ----

def tokenizer_texts(worlds: Sequence[World], sft: list[dict], tokenizer_prompt) -> list[str]:
    docs = [d for world in worlds for d in documents(world)]
    texts = [d["contents"] for d in docs] + [format_documents([d]) for d in docs]
    texts += [tokenizer_prompt(ex["question"]) + ex["response"] for ex in sft]
    return texts


def text_encoder(tokenizer):
    """text -> token ids without special tokens (the ``encode`` the search rollout takes)."""
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def response_tokens(response: str, encode, unread: Collection[str] = ()
                    ) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of a trajectory.

    Each ``<information>`` block is encoded as a real search injects it:
    ``encode(INFO_PREFIX) + encode(documents) + encode(INFO_SUFFIX)``, the text between
    blocks encoded on its own, so a model trained on these ids writes its own information
    token for token as the retriever's would be appended (Sim2Real). The documents of a
    block whose title is in ``unread`` get loss mask 0: the model is shown them but not
    taught to write them (reading practice). ``encode``: text -> ids without special tokens.
    """
    ids, mask, rest = [], [], response

    def add(part_ids, weight):
        ids.extend(part_ids)
        mask.extend([weight] * len(part_ids))

    while (start := rest.find(INFO_PREFIX)) >= 0:
        end = rest.find(INFO_SUFFIX, start)
        if end < 0:
            raise ValueError(f"an information block is not closed in {response!r}")
        body = rest[start + len(INFO_PREFIX):end]
        title = _INFO_TITLE.match(body)
        add(encode(rest[:start]) + encode(INFO_PREFIX), 1)
        add(encode(body), 0 if title and title.group(1) in unread else 1)
        add(encode(INFO_SUFFIX), 1)
        rest = rest[end + len(INFO_SUFFIX):]
    add(encode(rest), 1)
    return ids, mask


def training_examples(worlds: Sequence[World], sft: list[dict], tokenizer,
                      doc_repeats: int) -> list[tuple[list[int], list[int]]]:
    """(token ids, loss mask) per example: known documents (both forms) and trajectories."""
    from ssrl_jax.data.prompts import prompt_token_ids

    examples = []
    for doc in (d for world in worlds for d in documents(world, known_only=True)):
        for text in (doc["contents"], format_documents([doc])):
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            examples.extend([(ids, [1] * len(ids))] * doc_repeats)
    eos = tokenizer.eos_token_id
    encode = text_encoder(tokenizer)
    for ex in sft:
        prompt = prompt_token_ids(ex["question"], mode=MODE, tokenizer=tokenizer, chat=CHAT)
        response, response_mask = response_tokens(ex["response"], encode, ex["unread"])
        examples.append((prompt + response + [eos],
                         [0] * len(prompt) + response_mask + [1]))
    return examples


def pack(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffles the examples and packs them into rows of seq_len + 1 tokens.

    Returns (tokens, loss mask, segment ids), each [R, seq_len + 1]; segment ids number
    the examples of a row 1, 2, ... and are 0 on padding. An example never spans two rows
    (one longer than a row is cut).
    """
    order = rng.permutation(len(examples))
    rows, masks, segments = [], [], []
    row, mask, segment = [], [], []

    def close_row():
        pad = seq_len + 1 - len(row)
        rows.append(row + [pad_id] * pad)
        masks.append(mask + [0] * pad)
        segments.append(segment + [0] * pad)

    for i in order:
        ids, m = examples[i]
        ids, m = ids[:seq_len + 1], m[:seq_len + 1]
        if len(row) + len(ids) > seq_len + 1:
            close_row()
            row, mask, segment = [], [], []
        number = (segment[-1] if segment else 0) + 1
        row, mask, segment = row + list(ids), mask + list(m), segment + [number] * len(ids)
    if row:
        close_row()
    return (np.asarray(rows, np.int32), np.asarray(masks, np.float32),
            np.asarray(segments, np.int32))


# ------------------------------------------------------------------ training ----

def model_config(settings: PretrainSettings, tokenizer):
    from ssrl_jax.models import ModelConfig

    return ModelConfig(
        family="llama", vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size, num_layers=settings.num_layers,
        num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads,
        head_dim=settings.head_dim, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, param_dtype="float32", dtype="float32")


def train(model, examples, settings: PretrainSettings, *, log_every: int = 50,
          pad_id: int = 0) -> list[dict[str, float]]:
    """Next-token AdamW training of `model` in place; returns the loss curve."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, min(settings.warmup_steps, settings.steps // 10),
        max(settings.steps, 1),
        end_value=settings.learning_rate * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b1=0.9, b2=0.98,
                                 weight_decay=settings.weight_decay))
    graphdef, params = nnx.split(model)
    opt_state = tx.init(params)

    def loss_fn(params, tokens, mask, segments):
        m = nnx.merge(graphdef, params)
        logits = m(tokens[:, :-1],
                   segment_ids=segments[:, :-1] if settings.packing == "segments" else None)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        weights = mask[:, 1:]
        return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    @jax.jit
    def step(params, opt_state, tokens, mask, segments):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, mask, segments)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(settings.seed)
    tokens, masks, segments = pack(examples, settings.seq_len, pad_id, rng)
    cursor, curve, losses = 0, [], []
    start = time.perf_counter()
    for s in range(1, settings.steps + 1):
        if cursor + settings.batch_size > len(tokens):
            tokens, masks, segments = pack(examples, settings.seq_len, pad_id, rng)
            cursor = 0
        batch = slice(cursor, cursor + settings.batch_size)
        cursor += settings.batch_size
        params, opt_state, loss = step(params, opt_state, jnp.asarray(tokens[batch]),
                                       jnp.asarray(masks[batch]), jnp.asarray(segments[batch]))
        losses.append(float(loss))
        if s % log_every == 0 or s == settings.steps:
            mean = float(np.mean(losses))
            losses = []
            curve.append({"step": s, "loss": round(mean, 4),
                          "seconds": round(time.perf_counter() - start, 1)})
            print(f"step {s:5d}  loss {mean:.4f}  ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    nnx.update(model, params)
    return curve


def greedy_em(model, tokenizer, questions: Sequence[Question], world: World,
              max_new_tokens: int) -> dict[str, Any]:
    """Greedy EM overall, by hops and by whether the model could know the facts."""
    from ssrl_jax.data.qa import QARow
    from ssrl_jax.eval.scoring import EvalSettings
    from ssrl_jax.eval.selfsearch import evaluate_rows
    from ssrl_jax.sampler import Sampler

    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=(tokenizer.eos_token_id,))
    rows = [QARow(q.id, q.question, q.golden_answers, DATA_SOURCE) for q in questions]
    settings = EvalSettings(greedy=True, num_samples=0, max_new_tokens=max_new_tokens,
                            batch_size=64, chat="true" if CHAT else "false")
    records, metrics = evaluate_rows(sampler, tokenizer, rows, settings)
    em = np.asarray([r["greedy"]["em"] for r in records])
    searched = np.asarray([SEARCH_OPEN in r["greedy"]["response"] for r in records])
    known = np.asarray([all(world.is_known(e) for e in q.entities) for q in questions])
    hops = np.asarray([q.hops for q in questions])

    def mean(sel):
        return round(float(em[sel].mean()), 4) if sel.any() else None

    return {"em": mean(np.ones_like(em, bool)), "em_1hop": mean(hops == 1),
            "em_2hop": mean(hops == 2), "em_known": mean(known), "em_held_out": mean(~known),
            "em_searched": mean(searched), "em_direct": mean(~searched),
            "search_rate": round(float(searched.mean()), 4),
            "format": round(float(metrics["greedy"]["format_score"]), 4), "n": len(questions)}


def run(out: str | os.PathLike, settings: PretrainSettings, *, eval_splits=("train", "test"),
        log_every: int = 50) -> dict[str, Any]:
    import jax

    from ssrl_jax.data.prompts import build_prompt
    from ssrl_jax.data.tiny_tokenizer import train_tiny_tokenizer
    from ssrl_jax.models import init_model
    from ssrl_jax.models.export import export_hf

    out = pathlib.Path(out)
    world = make_world(settings.seed)
    splits = split_questions(make_questions(world), seed=settings.seed)
    sft = sft_examples(world, splits["sft"], seed=settings.seed,
                       direct_fraction=settings.direct_fraction,
                       learn_invented=settings.invented_documents == "learn")
    write_world_files(out, world, splits, sft)
    worlds = [world]
    if settings.practice_people:
        practice = practice_world(world, num_people=settings.practice_people,
                                  known_fraction=settings.practice_known_fraction)
        worlds.append(practice)
        sft = sft + sft_examples(practice, make_questions(practice), seed=settings.seed,
                                 direct_fraction=settings.practice_direct_fraction,
                                 held_out="read")

    # The chat template needs a tokenizer to render; a throwaway one renders the prompts
    # the real tokenizer is trained on (the rendered text does not depend on the merges).
    bootstrap = train_tiny_tokenizer(["x"], vocab_size=300)
    render = lambda q: build_prompt(q, mode=MODE, tokenizer=bootstrap, chat=CHAT)  # noqa: E731
    tokenizer = train_tiny_tokenizer(tokenizer_texts(worlds, sft, render),
                                     vocab_size=settings.vocab_size)
    examples = training_examples(worlds, sft, tokenizer, settings.doc_repeats)
    config = model_config(settings, tokenizer)
    model = init_model(config, seed=settings.seed)
    n_tokens = sum(len(ids) for ids, _ in examples)
    print(f"world: {len(world.entities)} entities ({len(world.known_people)}/"
          f"{len(world.people)} people known) | questions sft/train/test "
          f"{len(splits['sft'])}/{len(splits['train'])}/{len(splits['test'])} | practice "
          f"world: {sum(len(w.entities) for w in worlds[1:])} entities | "
          f"{len(sft)} trajectories | "
          f"{len(examples)} examples, {n_tokens} tokens per pass | "
          f"model {config.num_params() / 1e6:.2f}M params, vocab {config.vocab_size} | "
          f"{jax.device_count()} device(s)", flush=True)
    curve = train(model, examples, settings, log_every=log_every,
                  pad_id=tokenizer.pad_token_id)

    results = {}
    for name in eval_splits:
        started = time.perf_counter()
        results[name] = greedy_em(model, tokenizer, splits[name], world,
                                  settings.eval_max_new_tokens)
        print(f"greedy {name}: {results[name]} ({time.perf_counter() - started:.0f} s)",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        export_hf(model, config, out / "model", dtype="float32", tokenizer_dir=tmp,
                  overwrite=True)
    log = {"settings": dataclasses.asdict(settings), "num_params": config.num_params(),
           "loss_curve": curve, "greedy": results}
    (out / "pretrain_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"wrote {out}")
    return log


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m ssrl_jax.toyworld.pretrain",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    defaults = PretrainSettings()
    for field in dataclasses.fields(PretrainSettings):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                            default=field.default,
                            choices=SETTING_CHOICES.get(field.name))
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    settings = PretrainSettings(**{f.name: getattr(args, f.name)
                                   for f in dataclasses.fields(PretrainSettings)})
    del defaults
    run(args.out, settings, log_every=args.log_every)


if __name__ == "__main__":
    main()
