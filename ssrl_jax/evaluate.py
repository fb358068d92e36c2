r"""Self-search evaluation: greedy EM and pass@k / maj@k over K samples per question (SPEC §6).

    python -m ssrl_jax.evaluate --config configs/eval_selfsearch.py \
        --config.model=HF_DIR_OR_CHECKPOINT --config.benchmarks=nq,hotpotqa \
        --config.data_dir=DIR --config.num_samples=16 --config.output_dir=OUT

``--config.benchmarks`` may also name QA files, e.g. Search-R1's ``test.parquet`` (verl
layout): each ``data_source`` in the file is evaluated as one benchmark, and ``data_dir`` is
only needed for registry names. SSRL's protocol is the default: greedy and sampled responses
run to EOS (``stop_at_answer=False``) and the last ``<answer>`` is scored; prompts are the
file's own chat messages when it has them (``prompt_source=dataset``); ``limit`` keeps a
seeded sample of each benchmark's questions.

Prints a table per benchmark and a summary, and writes OUT/results.json,
OUT/<benchmark>.jsonl (trajectories) and OUT/<benchmark>_passk.png. Fields: see
configs/eval_selfsearch.py and docs/evaluation.md.

Sim2Real: ``--config.search_modes=self,real,first_k_real,entropy_guided
--config.search_url=http://127.0.0.1:8000/retrieve`` adds one table per benchmark with a
column per mode (EM, real searches per question), ``results.json`` entries
``benchmarks[name]["search_modes"]`` and OUT/<benchmark>.<mode>.jsonl.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

from etils import epath

from ssrl_jax.cli_errors import UserError, cli_main, parse_config_flags
from ssrl_jax.eval.benchmarks import (Benchmark, load_eval_sets, parse_eval_specs,
                                     resolve_data_dir)
from ssrl_jax.eval.scoring import EvalSettings

BUNDLED = "bundled"
TOYWORLD = "toyworld"
_SETTINGS_FIELDS = tuple(f for f in EvalSettings.__dataclass_fields__)


class ConfigError(UserError, ValueError):
    """A config field with a bad value; the message names the field and what is allowed."""


def parse_config(argv: Sequence[str]):
    """The ConfigDict of ``--config FILE`` plus its ``--config.FIELD=VALUE`` overrides.

    argv[0] is the program name, as in ``sys.argv``.
    """
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", default=None, flag_values=flag_values, lock_config=True,
        sys_argv=list(argv), help_string="evaluation config file, e.g. configs/eval_selfsearch.py")
    rest = parse_config_flags(flag_values, argv, fields_hint="configs/eval_selfsearch.py")
    if holder.value is None:
        raise ConfigError("--config: required, e.g. --config configs/eval_selfsearch.py")
    if len(rest) > 1:
        raise ConfigError(f"unexpected arguments {rest[1:]}", "on the command line",
                          "pass config fields as --config.FIELD=VALUE")
    return holder.value


def _need(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}={value!r}: must be {allowed}")


def check_config(config) -> tuple[EvalSettings, list[Benchmark | str], str | None]:
    """Validates every field; returns (settings, benchmarks, data_dir). Nothing is loaded.

    ``benchmarks`` holds registry entries and QA file paths; ``data_dir`` is None when only
    files are named and no data_dir is set.
    """
    from ssrl_jax.models.config import DTYPES
    from ssrl_jax.sharding import MESH_AXES

    _need(isinstance(config.model, str) and bool(config.model), "model", config.model,
          "a Hugging Face directory or a training checkpoint (workdir, checkpoints/ or step)")
    _need(os.path.exists(config.model), "model", config.model, "an existing path")
    _need(isinstance(config.tokenizer, str), "tokenizer", config.tokenizer,
          "a tokenizer directory or '' (from the model)")
    _need(not config.tokenizer or os.path.isdir(config.tokenizer), "tokenizer",
          config.tokenizer, "an existing directory or ''")
    _need(config.dtype in DTYPES, "dtype", config.dtype, f"one of {DTYPES}")
    try:
        benchmarks = parse_eval_specs(config.benchmarks)
    except (ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"config.benchmarks={config.benchmarks!r}: {e}") from None
    for spec in benchmarks:
        _need(isinstance(spec, Benchmark) or epath.Path(spec).is_file(), "benchmarks",
              config.benchmarks, f"registry names or existing QA files ({spec} is no file)")
    data_dir = resolve_data_dir(config.data_dir) if isinstance(config.data_dir, str) else None
    if not data_dir and all(isinstance(spec, str) for spec in benchmarks):
        data_dir = None
    else:
        _need(isinstance(data_dir, str) and bool(data_dir), "data_dir", config.data_dir,
              f"a directory with the benchmark files (FlashRAG layout), '{BUNDLED}' or "
              f"'{TOYWORLD}'")
        _need(os.path.isdir(data_dir), "data_dir", config.data_dir, "an existing directory")
    _need(isinstance(config.limit, int) and not isinstance(config.limit, bool)
          and config.limit >= 0, "limit", config.limit, "an integer >= 0 (0 = all questions)")
    _need(isinstance(config.output_dir, str) and bool(config.output_dir), "output_dir",
          config.output_dir, "a directory path")
    mesh = dict(config.mesh)
    _need(set(mesh) <= set(MESH_AXES), "mesh", mesh, f"a dict over the axes {MESH_AXES}")
    _need(all(isinstance(v, int) and (v >= 1 or v == -1) for v in mesh.values()), "mesh", mesh,
          "axis sizes >= 1 or -1 (the remaining devices)")
    try:
        settings = EvalSettings(**{f: config[f] for f in _SETTINGS_FIELDS if f in config})
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    search_settings(config)
    return settings, benchmarks, data_dir


def search_settings(config):
    """(modes, SearchPolicy or None) of the Sim2Real fields; ConfigError names the field."""
    from ssrl_jax.eval.sim2real import parse_modes
    from ssrl_jax.search.client import FAILURE_POLICIES
    from ssrl_jax.search.rollout import SearchPolicy

    if "search_modes" not in config:
        return [], None
    try:
        modes = parse_modes(config.search_modes)
    except ValueError as e:
        raise ConfigError(f"config.search_modes={config.search_modes!r}: {e}") from None
    if not modes:
        return [], None
    _need(isinstance(config.search_url, str), "search_url", config.search_url, "a URL string")
    _need(modes == ["self"] or bool(config.search_url.strip()), "search_url", config.search_url,
          "the retriever's /retrieve URL (needed for the real search modes)")
    _need(isinstance(config.search_topk, int) and config.search_topk >= 1, "search_topk",
          config.search_topk, "an integer >= 1")
    _need(config.search_on_failure in FAILURE_POLICIES, "search_on_failure",
          config.search_on_failure, f"one of {FAILURE_POLICIES}")
    fields = {"max_turns": "max_turns", "first_k": "first_k", "entropy_rule": "entropy_rule",
              "entropy_threshold": "entropy_threshold", "max_info_tokens": "max_info_tokens"}
    try:
        policy = SearchPolicy(**{k: config[v] for k, v in fields.items()})
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    return modes, policy


def run(config) -> dict[str, Any]:
    """Checks the config, loads data then model, evaluates, writes and prints; returns results."""
    settings, specs, data_dir = check_config(config)
    benchmarks = load_eval_sets(specs, data_dir, limit=config.limit or None, seed=config.seed)
    rows = {b.name: b.rows for b in benchmarks}

    from ssrl_jax.eval import report, selfsearch
    from ssrl_jax.sampler import Sampler
    from ssrl_jax.sharding import make_mesh

    mesh = make_mesh(dict(config.mesh))
    model, tokenizer, eos_ids = selfsearch.load_for_eval(
        config.model, tokenizer_path=config.tokenizer, dtype=config.dtype, mesh=mesh)
    outside = [i for i in settings.suppressed_token_ids if i >= model.config.vocab_size]
    if outside:
        raise ConfigError(f"config.suppressed_token_ids: {outside} outside the model's "
                          f"vocabulary (size {model.config.vocab_size})")
    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids, mesh=mesh)
    entries, records = {}, {}
    for b in benchmarks:
        records[b.name], metrics = selfsearch.evaluate_rows(
            sampler, tokenizer, rows[b.name], settings, row_indices=b.indices, label=b.name)
        entries[b.name] = {"display_name": b.display_name, "split": b.split,
                           "category": b.category, "file": b.file, "metrics": metrics}
        if config.limit:  # which questions the seeded sample kept (positions in the file)
            entries[b.name]["question_indices"] = b.indices
        print(report.format_table(b.name, entries[b.name]) + "\n", flush=True)
    modes, policy = search_settings(config)
    mode_records = {}
    if modes:
        mode_records = _evaluate_search_modes(config, sampler, tokenizer, benchmarks, rows,
                                              settings, entries, modes, policy)
    results = report.results_dict(model=config.model, backend="jax",
                                  settings=settings.to_dict(), benchmarks=entries)
    results["config"] = config.to_dict()
    written = report.write_outputs(config.output_dir, results, records)
    for (name, mode), mode_rows in mode_records.items():
        path = os.path.join(config.output_dir, f"{name}.{mode}.jsonl")
        written[f"{name}.{mode}.jsonl"] = report.write_trajectories(path, mode_rows)
    print(report.format_summary(results))
    print(f"\nwrote {len(written)} files to {config.output_dir}: "
          + ", ".join(sorted(p.name for p in written.values())))
    return results


def _evaluate_search_modes(config, sampler, tokenizer, benchmarks, rows, settings, entries,
                           modes, policy) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Adds entries[name]["search_modes"] = {mode: metrics}; prints a table per benchmark."""
    from ssrl_jax.eval import sim2real
    from ssrl_jax.search.client import SearchClient

    client = None
    if modes != ["self"]:
        client = SearchClient(config.search_url, topk=config.search_topk,
                              on_failure=config.search_on_failure)
    out = {}
    try:
        for b in benchmarks:
            results = sim2real.evaluate_modes(sampler, tokenizer, rows[b.name], settings,
                                              modes=modes, policy=policy, client=client,
                                              row_indices=b.indices, label=b.name)
            metrics = {mode: r.metrics for mode, r in results.items()}
            entries[b.name]["search_modes"] = metrics
            out.update({(b.name, mode): r.records for mode, r in results.items()})
            labels = {m: sim2real.mode_label(m, policy) for m in modes}
            print(sim2real.format_modes_table(entries[b.name]["display_name"], metrics, labels)
                  + "\n", flush=True)
    finally:
        if client is not None:
            client.close()
    return out


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(parse_config(argv))


if __name__ == "__main__":
    main()
