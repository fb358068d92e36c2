"""Self-search evaluation with the JAX sampler: prompts → greedy + K samples → scored records.

    model, tokenizer, eos = load_for_eval(path, dtype="bfloat16", mesh=mesh)
    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos, mesh=mesh)
    records, metrics = evaluate_rows(sampler, tokenizer, rows, EvalSettings(num_samples=8))

Each question is decoded once greedily (when ``settings.greedy``) and K times with the
settings' temperature / top-p / top-k, in one generation pass per response (the model writes
its own ``<information>``; SPEC §2). Rows of all questions are packed into batches of
``batch_size``; sample j of the question at file row q draws with the key
``fold_in(fold_in(key(seed), q), j)`` and the sampler folds in each token's position within
its own row, so a question's samples do not depend on which rows share its batch, on the
batch size, or on ``limit``. Scoring is ``ssrl_jax.eval.scoring`` (no JAX).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from ssrl_jax.data.prompts import prompt_source_summary, row_prompt_ids
from ssrl_jax.data.qa import QARow
from ssrl_jax.eval.scoring import (Completion, EvalSettings, aggregate, question_record,
                                   resolve_chat)
from ssrl_jax.sampler import FinishReason, Sampler, SamplingConfig, TokenSource
from ssrl_jax.sampler import row_outputs

__all__ = ["eval_prompt_ids", "evaluate_rows", "generate_completions", "is_hf_dir",
           "load_for_eval", "sample_keys"]

log = logging.getLogger(__name__)

_FINISH = {FinishReason.NONE: "length", FinishReason.EOS: "eos",
           FinishReason.STOP_STRING: "stop_string"}


def is_hf_dir(path: str) -> bool:
    """Whether ``path`` is a Hugging Face model directory (config.json + safetensors)."""
    p = epath.Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def load_for_eval(model_path: str, *, tokenizer_path: str = "", dtype: str = "bfloat16",
                  mesh: jax.sharding.Mesh | None = None) -> tuple[Any, Any, tuple[int, ...]]:
    """(model, tokenizer, eos ids) from an HF directory or a training checkpoint.

    An HF directory loads with ``models.load_pretrained``; anything else is read as a
    checkpoint (a workdir, its ``checkpoints/`` or a step directory) with
    ``checkpoints.load_model``. The tokenizer is ``tokenizer_path`` when given, else the HF
    directory, else the checkpoint's recorded ``meta["tokenizer"]``. EOS ids come from the
    model config, the tokenizer and a ``generation_config.json`` next to the weights (or next
    to the tokenizer, for a checkpoint).
    """
    import transformers

    from ssrl_jax.sampler.text import eos_ids

    if is_hf_dir(model_path):
        from ssrl_jax.models import load_pretrained

        model = load_pretrained(model_path, param_dtype=dtype, dtype=dtype, mesh=mesh)
        tokenizer_dir = tokenizer_path or model_path
        generation_dir = model_path
    else:
        from ssrl_jax.checkpoints import load_model

        model, meta = load_model(model_path, mesh=mesh, param_dtype=dtype, dtype=dtype)
        tokenizer_dir = tokenizer_path or meta.get("tokenizer")
        if not tokenizer_dir:
            raise ValueError(f"tokenizer: the checkpoint at {model_path} records no tokenizer "
                             "directory; pass one (--config.tokenizer=DIR)")
        generation_dir = tokenizer_dir
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    return model, tokenizer, eos_ids(str(generation_dir), model.config, tokenizer)


def sample_keys(seed: int, questions: Sequence[int], samples: Sequence[int]) -> jax.Array:
    """Per-row PRNG keys [B]: row b gets ``fold_in(fold_in(key(seed), questions[b]), samples[b])``."""
    base = jax.random.key(seed)
    fold = jax.vmap(lambda q, j: jax.random.fold_in(jax.random.fold_in(base, q), j))
    return fold(np.asarray(questions, np.uint32), np.asarray(samples, np.uint32))


def _completion(row, tokenizer) -> Completion:
    tokens = row.tokens_from(TokenSource.POLICY)
    return Completion(text=tokenizer.decode(tokens.tolist(), skip_special_tokens=True),
                      num_tokens=int(tokens.size), finish_reason=_FINISH[row.finish_reason])


def generate_completions(sampler: Sampler, tokenizer: Any, prompts: Sequence[Sequence[int]],
                         keys: jax.Array | None, *, sampling: SamplingConfig,
                         settings: EvalSettings, label: str = "") -> list[Completion]:
    """One completion per prompt, decoded in batches of ``settings.batch_size`` rows.

    prompts: N token-id lists; keys: [N] PRNG keys (None for greedy). Every batch has the
    same number of rows (the last is filled with copies of its first row, whose outputs are
    dropped), so one program serves all batches of a prompt bucket.
    """
    n = len(prompts)
    rows_per_call = min(settings.batch_size, n)
    out: list[Completion] = []
    started = time.perf_counter()
    for start in range(0, n, rows_per_call):
        stop = min(start + rows_per_call, n)
        fill = rows_per_call - (stop - start)
        batch = list(prompts[start:stop]) + [prompts[start]] * fill
        batch_keys = None
        if keys is not None:
            index = np.concatenate([np.arange(start, stop), np.full(fill, start)])
            batch_keys = keys[index]
        state = sampler.generate(batch, max_new_tokens=settings.max_new_tokens,
                                 sampling=sampling, seed=settings.seed, keys=batch_keys,
                                 stop_strings=settings.stop_strings)
        out.extend(_completion(row, tokenizer) for row in row_outputs(state)[:stop - start])
        log.info("%s: %d/%d rows (%.1fs)", label, stop, n, time.perf_counter() - started)
    return out


def eval_prompt_ids(rows: Sequence[QARow], settings: EvalSettings, tokenizer: Any, *,
                    label: str = "") -> list[list[int]]:
    """Each row's prompt ids (``prompts.row_prompt_ids`` under the settings); logs which
    prompts were used (the file's chat messages or ours)."""
    chat = resolve_chat(settings.chat, tokenizer)
    log.info("%s: %s", label, prompt_source_summary([r.prompt for r in rows],
                                                    source=settings.prompt_source,
                                                    mode=settings.mode))
    return [row_prompt_ids(row.question, row.prompt, mode=settings.mode,
                           source=settings.prompt_source, tokenizer=tokenizer, chat=chat)
            for row in rows]


def evaluate_rows(sampler: Sampler, tokenizer: Any, rows: Sequence[QARow],
                  settings: EvalSettings, *, row_indices: Sequence[int] | None = None,
                  label: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Samples and scores one benchmark's questions.

    rows: the questions; row_indices: each row's position in its file (default 0..N-1),
      which seeds its samples.
    Returns (records, metrics): one ``scoring.question_record`` per row, in order, and
    ``scoring.aggregate(records)``.
    """
    if not rows:
        raise ValueError("evaluate_rows needs at least one row")
    indices = list(range(len(rows))) if row_indices is None else [int(i) for i in row_indices]
    if len(indices) != len(rows):
        raise ValueError(f"row_indices has {len(indices)} entries for {len(rows)} rows")
    prompts = eval_prompt_ids(rows, settings, tokenizer, label=label)

    greedy: list[Completion | None] = [None] * len(rows)
    if settings.greedy:
        greedy_sampling = SamplingConfig(temperature=0.0,
                                         suppressed_token_ids=settings.suppressed_token_ids)
        greedy = generate_completions(sampler, tokenizer, prompts, None, sampling=greedy_sampling,
                                      settings=settings, label=f"{label} greedy")
    k = settings.num_samples
    samples: list[list[Completion]] = [[] for _ in rows]
    if k:
        sampling = SamplingConfig(temperature=settings.temperature, top_p=settings.top_p,
                                  top_k=settings.top_k,
                                  suppressed_token_ids=settings.suppressed_token_ids)
        questions = np.repeat(indices, k)          # question-major: q0 s0..sK-1, q1 s0.., ...
        sample_ids = np.tile(np.arange(k), len(rows))
        flat = generate_completions(
            sampler, tokenizer, [prompts[i] for i in range(len(rows)) for _ in range(k)],
            sample_keys(settings.seed, questions, sample_ids), sampling=sampling,
            settings=settings, label=f"{label} samples")
        samples = [flat[i * k:(i + 1) * k] for i in range(len(rows))]
    records = [question_record(row, g, s) for row, g, s in zip(rows, greedy, samples)]
    return records, aggregate(records)
