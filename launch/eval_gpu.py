r"""Self-search evaluation of an exported Hugging Face directory on a GPU, without JAX.

    python launch/eval_gpu.py --model HF_DIR --data-dir DIR --benchmarks nq,hotpotqa \
        --num-samples 64 --output-dir OUT [--backend auto|vllm|transformers]

Generates with vLLM when it is installed (``--backend auto``), else with ``transformers``
``generate``. Prompts come from ``ssrl_jax.data.prompts`` and scoring, metrics and outputs
from ``ssrl_jax.eval`` (scoring, report), exactly as ``python -m ssrl_jax.evaluate`` does, so
results.json, <benchmark>.jsonl and <benchmark>_passk.png have the same layout (``backend``
names the generator). Options mirror configs/eval_selfsearch.py. Only numpy, etils,
transformers/torch (or vLLM) and, for the plots, matplotlib are needed: no JAX, grain or
ml_collections (a missing matplotlib skips the PNGs with a warning).

Sampling seeds: vLLM seeds each question's request with (seed, row index), so its K samples
do not depend on batching; the transformers fallback seeds torch once per batch, so its
samples depend on the batch layout (its greedy pass does not).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from a checkout: make ssrl_jax importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssrl_jax.cli_errors import ArgumentParser, UserError, cli_main  # noqa: E402
from ssrl_jax.data.prompts import (  # noqa: E402
    PROMPT_MODES, PROMPT_SOURCES, prompt_source_summary, row_prompt_ids)
from ssrl_jax.eval import report  # noqa: E402
from ssrl_jax.eval.benchmarks import (  # noqa: E402
    Benchmark, load_eval_sets, parse_eval_specs, resolve_data_dir)
from ssrl_jax.eval.scoring import (  # noqa: E402
    CHAT_CHOICES, Completion, EvalSettings, aggregate, question_record,
    resolve_chat)

BACKENDS = ("auto", "vllm", "transformers")
ALL_BENCHMARKS = "nq,triviaqa,hotpotqa,2wikimultihopqa,musique,bamboogle"
SHIPPED_BENCHMARKS = {"bundled": "nq,hotpotqa", "toyworld": "toyworld_1hop,toyworld_2hop"}
DTYPES = ("float32", "bfloat16", "float16")
_DEFAULTS = EvalSettings()


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="launch/eval_gpu.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported Hugging Face directory")
    p.add_argument("--tokenizer", default="", help="tokenizer directory (default: --model)")
    p.add_argument("--benchmarks", default=None,
                   help="registry names and/or QA files (*.parquet, *.jsonl: each data_source "
                   "in the file is one benchmark, e.g. Search-R1's test.parquet); default: the "
                   f"two of --data-dir bundled / toyworld, else {ALL_BENCHMARKS}")
    p.add_argument("--data-dir", default="",
                   help="FlashRAG layout directory, 'bundled' for the package's samples or "
                   "'toyworld' for the toy world's test questions, as python -m "
                   "ssrl_jax.evaluate (needed for registry names)")
    p.add_argument("--limit", type=int, default=0,
                   help="N questions per benchmark, sampled with --seed (0 = all)")
    p.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=_DEFAULTS.greedy)
    p.add_argument("--num-samples", type=int, default=_DEFAULTS.num_samples)
    p.add_argument("--temperature", type=float, default=_DEFAULTS.temperature)
    p.add_argument("--top-p", type=float, default=_DEFAULTS.top_p)
    p.add_argument("--top-k", type=int, default=_DEFAULTS.top_k)
    p.add_argument("--max-new-tokens", type=int, default=_DEFAULTS.max_new_tokens)
    p.add_argument("--stop-at-answer", action=argparse.BooleanOptionalAction,
                   default=_DEFAULTS.stop_at_answer)
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size,
                   help="rows per generate call (transformers backend)")
    p.add_argument("--mode", choices=PROMPT_MODES, default=_DEFAULTS.mode)
    p.add_argument("--prompt-source", choices=PROMPT_SOURCES, default=_DEFAULTS.prompt_source,
                   help="dataset: a row's own chat messages when its file has them; rebuild")
    p.add_argument("--chat", choices=CHAT_CHOICES, default=_DEFAULTS.chat)
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    p.add_argument("--suppressed-token-ids", default="", metavar="IDS",
                   help="token ids never generated, comma-separated (HF suppress_tokens, vLLM "
                   "logit_bias -inf)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--output-dir", default="eval_results")
    return p


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalSettings)}
    return EvalSettings(**fields)


def eos_token_ids(model_dir: str, tokenizer: Any) -> list[int]:
    """EOS ids from config.json, generation_config.json and the tokenizer (as the JAX path)."""
    import json

    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path) as f:
                value = json.load(f).get("eos_token_id")
            ids += [value] if isinstance(value, int) else list(value or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids))


# ---------------------------------------------------------------- backends --

class VllmBackend:
    """vLLM offline engine; each question's request carries its own seed."""

    name = "vllm"

    def __init__(self, model_dir: str, tokenizer_dir: str, dtype: str, seed: int,
                 eos_ids: Sequence[int]):
        from vllm import LLM

        self.llm = LLM(model=model_dir, tokenizer=tokenizer_dir, dtype=dtype, seed=seed)
        self.eos_ids = list(eos_ids)

    def generate(self, prompts: list[list[int]], row_indices: Sequence[int], n: int,
                 settings: EvalSettings, greedy: bool) -> list[list[Completion]]:
        from vllm import SamplingParams

        def params(row: int) -> SamplingParams:
            common = dict(n=n, max_tokens=settings.max_new_tokens,
                          stop=list(settings.stop_strings), include_stop_str_in_output=True,
                          stop_token_ids=self.eos_ids)
            if settings.suppressed_token_ids:
                common["logit_bias"] = {i: float("-inf") for i in settings.suppressed_token_ids}
            if greedy:
                return SamplingParams(temperature=0.0, **common)
            return SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                                  top_k=settings.top_k or -1,
                                  seed=(settings.seed * 1_000_003 + row) % (2**31), **common)

        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts],
                                    sampling_params=[params(r) for r in row_indices])
        return [[self._completion(o) for o in out.outputs] for out in outputs]

    @staticmethod
    def _completion(o: Any) -> Completion:
        if o.finish_reason == "length":
            reason = "length"
        else:
            reason = "stop_string" if isinstance(o.stop_reason, str) else "eos"
        return Completion(text=o.text, num_tokens=len(o.token_ids), finish_reason=reason)


class TransformersBackend:
    """``transformers`` generate on left-padded batches (the fallback)."""

    name = "transformers"

    def __init__(self, model_dir: str, tokenizer: Any, dtype: str, eos_ids: Sequence[int],
                 batch_size: int):
        import torch
        import transformers

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(eos_ids), 0))
        self.batch_size = batch_size

    def generate(self, prompts: list[list[int]], row_indices: Sequence[int], n: int,
                 settings: EvalSettings, greedy: bool) -> list[list[Completion]]:
        import transformers

        config = transformers.GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else settings.temperature,
            top_p=None if greedy else settings.top_p, top_k=None if greedy else settings.top_k,
            eos_token_id=sorted(self.eos_ids) or None, pad_token_id=self.pad_id,
            suppress_tokens=list(settings.suppressed_token_ids) or None,
            stop_strings=list(settings.stop_strings) or None)
        flat = [ids for ids in prompts for _ in range(n)]  # question-major, as the JAX path
        out: list[Completion] = []
        for batch_no, start in enumerate(range(0, len(flat), self.batch_size)):
            batch = flat[start:start + self.batch_size]
            if not greedy:
                self.torch.manual_seed(settings.seed * 1_000_003 + batch_no)
            out.extend(self._generate_batch(batch, config))
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, batch: list[list[int]], config: Any) -> list[Completion]:
        torch = self.torch
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        with torch.no_grad():
            generated = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                generation_config=config, tokenizer=self.tokenizer)
        return [self._completion(row[width:].tolist(), config) for row in generated.cpu()]

    def _completion(self, tokens: list[int], config: Any) -> Completion:
        """Cuts one generated row where it ended: first EOS, or the first completed stop
        string, or (rows that finished early are padded) before the trailing pads."""
        end, reason = len(tokens), "length"
        eos_at = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        if eos_at is not None:
            end, reason = eos_at + 1, "eos"
        elif self.pad_id not in self.eos_ids:
            while end and tokens[end - 1] == self.pad_id:
                end -= 1
        decode = self.tokenizer.decode
        for stop in config.stop_strings or ():
            if stop in decode(tokens[:end], skip_special_tokens=True):
                lo, hi = 1, end  # smallest prefix whose text holds the stop string
                while lo < hi:
                    mid = (lo + hi) // 2
                    if stop in decode(tokens[:mid], skip_special_tokens=True):
                        hi = mid
                    else:
                        lo = mid + 1
                end, reason = lo, "stop_string"
        return Completion(text=decode(tokens[:end], skip_special_tokens=True),
                          num_tokens=end, finish_reason=reason)


def make_backend(name: str, model_dir: str, tokenizer_dir: str, tokenizer: Any,
                 dtype: str, settings: EvalSettings):
    eos_ids = eos_token_ids(model_dir, tokenizer)
    if name == "auto":
        name = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if name == "vllm":
        return VllmBackend(model_dir, tokenizer_dir, dtype, settings.seed, eos_ids)
    return TransformersBackend(model_dir, tokenizer, dtype, eos_ids, settings.batch_size)


# -------------------------------------------------------------- evaluation --

def evaluate_rows(backend: Any, tokenizer: Any, rows: Sequence[Any], settings: EvalSettings,
                  row_indices: Sequence[int] | None = None
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(records, metrics) for one benchmark, as ``ssrl_jax.eval.selfsearch.evaluate_rows``."""
    chat = resolve_chat(settings.chat, tokenizer)
    print(prompt_source_summary([r.prompt for r in rows], source=settings.prompt_source,
                                mode=settings.mode), flush=True)
    prompts = [row_prompt_ids(r.question, r.prompt, mode=settings.mode,
                              source=settings.prompt_source, tokenizer=tokenizer, chat=chat)
               for r in rows]
    indices = list(range(len(rows))) if row_indices is None else list(row_indices)
    greedy = [None] * len(rows)
    if settings.greedy:
        greedy = [c[0] for c in backend.generate(prompts, indices, 1, settings, greedy=True)]
    samples: list[list[Completion]] = [[] for _ in rows]
    if settings.num_samples:
        samples = backend.generate(prompts, indices, settings.num_samples, settings,
                                   greedy=False)
    records = [question_record(r, g, s) for r, g, s in zip(rows, greedy, samples)]
    return records, aggregate(records)


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)  # raises ValueError naming the field
        specs: list[Benchmark | str] = parse_eval_specs(
            args.benchmarks or SHIPPED_BENCHMARKS.get(args.data_dir, ALL_BENCHMARKS))
    except ValueError as e:
        parser.error(str(e))
    if args.limit < 0:
        parser.error(f"--limit={args.limit}: must be >= 0 (0 = all)")
    data_dir = resolve_data_dir(args.data_dir) if args.data_dir else None
    benchmarks = load_eval_sets(specs, data_dir, limit=args.limit or None, seed=args.seed)

    import transformers

    tokenizer_dir = args.tokenizer or args.model
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as e:  # not a folder nor a hub id; no tokenizer files
        flag = "--tokenizer" if args.tokenizer else "--model"
        raise UserError(f"cannot load a tokenizer ({str(e).strip().splitlines()[0]})",
                        f"{flag} {tokenizer_dir}", "pass an exported model directory "
                        "(python -m ssrl_jax.convert orbax-to-hf)") from None
    backend = make_backend(args.backend, args.model, tokenizer_dir, tokenizer, args.dtype,
                           settings)
    print(f"backend: {backend.name}", flush=True)
    entries, records = {}, {}
    for b in benchmarks:
        started = time.perf_counter()
        records[b.name], metrics = evaluate_rows(backend, tokenizer, b.rows, settings,
                                                 row_indices=b.indices)
        entries[b.name] = {"display_name": b.display_name, "split": b.split,
                           "category": b.category, "file": b.file, "metrics": metrics}
        if args.limit:
            entries[b.name]["question_indices"] = b.indices
        print(report.format_table(b.name, entries[b.name])
              + f"\n({time.perf_counter() - started:.1f}s)\n", flush=True)
    results = report.results_dict(model=args.model, backend=backend.name,
                                  settings=settings.to_dict(), benchmarks=entries)
    plots = importlib.util.find_spec("matplotlib") is not None
    if not plots:
        print("warning: matplotlib is not installed; skipping the pass@k plots", flush=True)
    written = report.write_outputs(args.output_dir, results, records, plots=plots)
    print(report.format_summary(results))
    print(f"\nwrote {len(written)} files to {args.output_dir}: "
          + ", ".join(sorted(p.name for p in written.values())))
    return results


if __name__ == "__main__":
    main()
