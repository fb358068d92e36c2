"""The training configuration: defaults (SPEC §5) and start-up validation.

`configs/*.py` start from `default_config()` and change what their run needs;
`validate(config)` checks every field before anything is loaded and raises a
`ConfigFieldError` that names the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import ml_collections

from ssrl_jax.cli_errors import UserError
from ssrl_jax.data.prompts import PROMPT_MODES, PROMPT_SOURCES
from ssrl_jax.data.qa import SAMPLE_DATA
from ssrl_jax.distributed import DISTRIBUTED_MODES
from ssrl_jax.eval.scoring import CHAT_CHOICES
from ssrl_jax.models.config import (ATTENTION_IMPLS, DECODE_ATTENTION_IMPLS, DTYPES, FAMILIES,
                                     KV_CACHE_DTYPES, REMAT_POLICIES)
from ssrl_jax.rl.format_rules import FORMAT_RULES
from ssrl_jax.rl.grpo import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS
from ssrl_jax.rl.optimizer import LR_SCHEDULES
from ssrl_jax.rl.rewards import REWARDS
from ssrl_jax.rl.step_config import WEIGHT_LAYOUTS
from ssrl_jax.search.client import FAILURE_POLICIES
from ssrl_jax.search.rollout import ENTROPY_RULES, MODES, PROTOCOLS
from ssrl_jax.sharding import MESH_AXES
from ssrl_jax.token_ids import parse_token_ids

QUICKSTART_TOKENIZER = "quickstart"


class ConfigFieldError(UserError, ValueError):
    """A config field has a value the trainer cannot use."""


def default_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with the papers' settings where they give one."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 256            # prompts per step (global); × group_size responses
    c.num_epochs = 5
    c.total_steps = 0             # 0: num_epochs passes over the training rows
    c.distributed = "auto"        # jax.distributed.initialize() on multi-host TPU

    c.model = ml_collections.ConfigDict()
    c.model.path = ""             # Hugging Face directory (local or gs://): weights + tokenizer
    c.model.tokenizer = ""        # default: model.path; "quickstart": the tokenizer we ship
    # Mixed precision: fp32 master weights and Adam state, bf16 compute (the rollout's
    # weights and the frozen reference are bf16 copies). bf16 masters would lose updates
    # at lr 1e-6 (docs/training.md, "Precision").
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    # einsum (exact on every backend) or splash (JAX's Pallas TPU kernel for the training
    # forward and backward: no [T, T] scores in memory; interpreted, slowly, off TPU).
    c.model.attention = "einsum"
    # The rollout's and the sampler's KV cache: "" the compute dtype, or "int8" (one scale
    # per slot and KV head; half the bytes of bf16 to hold and to read while decoding).
    c.model.kv_cache_dtype = ""
    # A decode step's attention: "einsum" over the KV window, or "paged" (TPU: JAX's paged
    # attention kernel over each row's own filled slots; a bf16 cache, head_dim a multiple of
    # 128; opt-in: docs/performance.md has its roofline).
    c.model.decode_attention = "einsum"
    c.model.cache_dir = "/tmp/ssrl_jax_models"  # local copy of a gs:// model.path
    # A randomly initialised model when model.path is empty (CPU runs and tests).
    c.model.random = ml_collections.ConfigDict(dict(
        family="llama", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=10000.0, tie_word_embeddings=True))

    c.data = ml_collections.ConfigDict()
    c.data.train_files = SAMPLE_DATA  # comma-separated jsonl/parquet paths, hf:NAME:SPLIT, sample
    c.data.weights = ""           # "nq=1,hotpotqa=1" by data_source; empty: natural proportions
    c.data.prompt_mode = "self_search"  # wording of prompts we build: self_search, search_r1
    # dataset: a row's own `prompt` chat messages (verl parquets) verbatim when it has them,
    # else build one with prompt_mode; rebuild: always build with prompt_mode.
    c.data.prompt_source = "dataset"
    c.data.chat = "auto"          # chat template when the tokenizer has one
    c.data.max_prompt_tokens = 1024
    c.data.max_golds = 32
    c.data.max_gold_bytes = 256
    c.data.shuffle = True

    c.rollout = ml_collections.ConfigDict()
    c.rollout.group_size = 5
    c.rollout.max_new_tokens = 4096
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    # Token ids never sampled, e.g. "151643" (Qwen's <|endoftext|> when <|im_end|> must end
    # turns); comma-separated, "" = none. Log-probs stay the model's own.
    c.rollout.suppressed_token_ids = ""
    # self: SSRL, one decoding pass. real (Search-R1), first_k_real, entropy_guided: a
    # retriever at config.search.url answers searches, called from inside the compiled step
    # between decode segments (docs/search.md).
    c.rollout.mode = "self"
    # decode: the rollout's bf16 weight copy is gathered over fsdp once per step (split over
    # tensor only), so the decode loop gathers no weights; train: it keeps the training
    # layout (less memory, a weight all-gather per layer per decode step). docs/performance.md.
    c.rollout.weight_layout = "decode"
    # Decode steps attend over the filled part of the KV cache, in up to this many windows
    # (each one more compiled loop body); 1: every step reads all slots. docs/performance.md.
    c.rollout.kv_windows = 4

    c.grpo = ml_collections.ConfigDict()
    c.grpo.reward = "ssrl"        # ssrl: EM vs golds + format; ttrl: agreement with group majority
    c.grpo.format_weight = 0.1
    c.grpo.format_rule = "ssrl"   # ssrl: SSRL's released format_reward; strict: a tag grammar
    c.grpo.mask_information = True
    c.grpo.advantage_estimator = "grpo"
    c.grpo.clip_low = 0.2
    c.grpo.clip_high = 0.2
    c.grpo.dual_clip = 0.0        # 0: off
    c.grpo.max_log_ratio = 20.0   # |log π/π_old| clamped before exp (verl, Tunix: 20)
    c.grpo.kl_coef = 0.001
    c.grpo.kl_estimator = "low_var_kl"
    c.grpo.entropy_coef = 0.0     # entropy bonus (verl entropy_coeff; SSRL 0, Search-R1 0.001)
    c.grpo.aggregation = "token-mean"
    c.grpo.num_mini_batches = 1
    c.grpo.num_micro_batches = 1
    c.grpo.ppo_epochs = 1
    c.grpo.logprob_chunk = 256
    # The update runs each micro-batch over its filled slots only, at one of up to this many
    # widths, rows sorted by length into micro-batches (rl/length_buckets.py); 1: all slots.
    c.grpo.length_buckets = 4

    # The retriever for rollout.mode != self (Search-R1's /retrieve API; ssrl_jax.search.server).
    c.search = ml_collections.ConfigDict()
    c.search.url = ""             # e.g. http://127.0.0.1:8000/retrieve
    c.search.topk = 3
    c.search.max_turns = 2        # real searches per response at most
    c.search.first_k = 1          # first_k_real: the first K searches are real
    c.search.entropy_rule = "rise"  # entropy_guided: "rise" or "threshold"
    c.search.entropy_threshold = 0.0
    c.search.max_info_tokens = 500  # document tokens injected per search (Search-R1: 500)
    # free: a row writes on to EOS and only real searches stop it; search_r1: Search-R1's
    # agent loop (turns end at </search> / </answer> / EOS / turn_tokens, invalid actions get
    # its feedback text, one last turn after max_turns). docs/search.md.
    c.search.protocol = "free"
    c.search.turn_tokens = 0      # search_r1: policy tokens per turn (0: no cap; Search-R1 500)
    c.search.timeout_s = 10.0
    c.search.max_retries = 3
    c.search.on_failure = "fail"  # fail: the step fails; fallback: the model writes the info
    c.search.batch_size = 32      # queries per request
    c.search.max_concurrency = 4
    # fallback only: this many failed request batches in a row stop the run (0: never)
    c.search.max_consecutive_failures = 32

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-6
    c.optim.warmup_ratio = 0.02
    c.optim.schedule = "constant"  # after warm-up: constant (the papers) or cosine
    c.optim.final_lr_ratio = 0.1   # cosine: the rate at the last step, as a share of the peak
    c.optim.max_grad_norm = 1.0
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # How the mesh is laid out on the devices (sharding.make_mesh): several TPU slices
    # split `data` over DCN; splitting a physical torus axis must be asked for.
    c.mesh_layout = ml_collections.ConfigDict(dict(num_slices=1,
                                                   allow_split_physical_axes=False))

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50
    c.checkpoint.max_to_keep = 3
    c.checkpoint.async_save = True

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 1
    c.log.samples_every_steps = 10
    c.log.num_samples = 2
    c.log.tensorboard = True
    return c


# ---------------------------------------------------------------- validation ----

Check = Callable[[Any], str | None]  # None when fine, else what is allowed


def _one_of(choices: Sequence[Any]) -> Check:
    return lambda v: None if v in choices else f"one of {tuple(choices)}"


def _int(low: int, high: int | None = None) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None
                                                                       and v > high):
            return f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        return None
    return check


def _number(low: float, high: float | None = None, *, open_low: bool = False,
            open_high: bool = False) -> Check:
    """A finite number in [low, high] (either end open when asked; no upper bound if None)."""
    def check(v):
        bound = f"> {low}" if open_low else f">= {low}"
        if high is not None:
            bound += f" and < {high}" if open_high else f" and <= {high}"
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                or (v <= low if open_low else v < low)
                or (high is not None and (v >= high if open_high else v > high))):
            return f"a finite number {bound}"
        return None
    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string"


def _token_ids(v: Any) -> str | None:
    try:
        parse_token_ids(v)
    except ValueError:
        return "comma-separated token ids (integers >= 0), e.g. '151643', or ''"
    return None


def _weights(v: Any) -> str | None:
    if not isinstance(v, str):
        return "a string like 'nq=1,hotpotqa=1'"
    try:
        parse_weights(v)
    except ValueError as error:
        return f"a string like 'nq=1,hotpotqa=1' ({error})"
    return None


_CHECKS: dict[str, Check] = {
    "seed": _int(0),
    "batch_size": _int(1),
    "num_epochs": _int(1),
    "total_steps": _int(0),
    "distributed": _one_of(DISTRIBUTED_MODES),
    "model.path": _string,
    "model.tokenizer": _string,
    "model.param_dtype": _one_of(DTYPES),
    "model.dtype": _one_of(DTYPES),
    "model.remat": _one_of(REMAT_POLICIES),
    "model.attention": _one_of(ATTENTION_IMPLS),
    "model.kv_cache_dtype": _one_of(KV_CACHE_DTYPES),
    "model.decode_attention": _one_of(DECODE_ATTENTION_IMPLS),
    "model.cache_dir": _string,
    "model.random.family": _one_of(FAMILIES),
    "data.train_files": lambda v: None if isinstance(v, str) and v.strip() else
    "a non-empty comma-separated list of files, hf:NAME:SPLIT specs or 'sample'",
    "data.weights": _weights,
    "data.prompt_mode": _one_of(PROMPT_MODES),
    "data.prompt_source": _one_of(PROMPT_SOURCES),
    "data.chat": _one_of(CHAT_CHOICES),
    "data.max_prompt_tokens": _int(8),
    "data.max_golds": _int(1),
    "data.max_gold_bytes": _int(1),
    "data.shuffle": _bool,
    "rollout.group_size": _int(2),
    "rollout.max_new_tokens": _int(1),
    "rollout.temperature": _number(0.0, open_low=True),
    "rollout.top_p": _number(0.0, 1.0, open_low=True),
    "rollout.top_k": _int(0),
    "rollout.mode": _one_of(MODES),
    "rollout.weight_layout": _one_of(WEIGHT_LAYOUTS),
    "rollout.kv_windows": _int(1),
    "rollout.suppressed_token_ids": _token_ids,
    "grpo.reward": _one_of(REWARDS),
    "grpo.format_weight": _number(0.0, 1.0),
    "grpo.format_rule": _one_of(FORMAT_RULES),
    "grpo.mask_information": _bool,
    "grpo.advantage_estimator": _one_of(ADVANTAGE_ESTIMATORS),
    "grpo.clip_low": _number(0.0, 1.0),
    "grpo.clip_high": _number(0.0),
    "grpo.dual_clip": lambda v: None if v == 0 or (_number(1.0, open_low=True)(v) is None)
    else "0 (off) or a finite number > 1",
    "grpo.max_log_ratio": lambda v: None if _number(0.0, open_low=True)(v) is None and
    math.isfinite(v) else "a finite number > 0",
    "grpo.kl_coef": _number(0.0),
    "grpo.kl_estimator": _one_of(KL_ESTIMATORS),
    "grpo.entropy_coef": _number(0.0),
    "grpo.aggregation": _one_of(AGGREGATIONS),
    "grpo.num_mini_batches": _int(1),
    "grpo.num_micro_batches": _int(1),
    "grpo.ppo_epochs": _int(1),
    "grpo.logprob_chunk": _int(1),
    "grpo.length_buckets": _int(1),
    "search.url": _string,
    "search.topk": _int(1),
    "search.max_turns": _int(1),
    "search.first_k": _int(1),
    "search.entropy_rule": _one_of(ENTROPY_RULES),
    "search.entropy_threshold": lambda v: None if isinstance(v, (int, float)) and not
    isinstance(v, bool) and math.isfinite(v) else "a finite number",
    "search.max_info_tokens": _int(1),
    "search.protocol": _one_of(PROTOCOLS),
    "search.turn_tokens": _int(0),
    "search.timeout_s": _number(0.0, open_low=True),
    "search.max_retries": _int(0),
    "search.on_failure": _one_of(FAILURE_POLICIES),
    "search.batch_size": _int(1),
    "search.max_concurrency": _int(1),
    "search.max_consecutive_failures": _int(0),
    "optim.learning_rate": _number(0.0, open_low=True),
    "optim.warmup_ratio": _number(0.0, 1.0),
    "optim.schedule": _one_of(LR_SCHEDULES),
    "optim.final_lr_ratio": _number(0.0, 1.0),
    "optim.max_grad_norm": _number(0.0, open_low=True),
    "optim.weight_decay": _number(0.0),
    "optim.b1": _number(0.0, 1.0, open_high=True),
    "optim.b2": _number(0.0, 1.0, open_high=True),
    "mesh_layout.num_slices": _int(1),
    "mesh_layout.allow_split_physical_axes": _bool,
    "checkpoint.every_steps": _int(1),
    "checkpoint.max_to_keep": _int(1),
    "checkpoint.async_save": _bool,
    "log.every_steps": _int(1),
    "log.samples_every_steps": _int(0),
    "log.num_samples": _int(0),
    "log.tensorboard": _bool,
}
for _axis in MESH_AXES:
    _CHECKS[f"mesh.{_axis}"] = lambda v: None if v == -1 or _int(1)(v) is None else \
        "a positive integer or -1 (all remaining devices)"
for _name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
              "head_dim"):
    _CHECKS[f"model.random.{_name}"] = _int(1)
_CHECKS["model.random.rope_theta"] = _number(0.0, open_low=True)
_CHECKS["model.random.tie_word_embeddings"] = _bool


def _numeric_leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted name, value) of every int / float field, nested ones included."""
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _numeric_leaves(value, f"{prefix}{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{name}", value


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        if part not in value:
            raise ConfigFieldError(f"config.{dotted}: missing (start from "
                                   "ssrl_jax.train_config.default_config())")
        value = value[part]
    return value


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigFieldError naming the first bad field; checks cross-field rules too."""
    for field, check in _CHECKS.items():
        value = _get(config, field)
        allowed = check(value)
        if allowed is not None:
            raise ConfigFieldError(f"config.{field}={value!r} is not allowed: expected {allowed}")
    # A field added without a check above still may not be NaN or infinite.
    for field, value in _numeric_leaves(config):
        if not math.isfinite(value):
            raise ConfigFieldError(f"config.{field}={value!r} is not allowed: expected a "
                                   "finite number")
    if sum(config.mesh[a] == -1 for a in MESH_AXES) > 1:
        raise ConfigFieldError(f"config.mesh={dict(config.mesh)}: at most one axis may be -1")
    if config.mesh.data != -1 and config.mesh.data % config.mesh_layout.num_slices:
        raise ConfigFieldError(
            f"config.mesh.data={config.mesh.data} must be a multiple of "
            f"config.mesh_layout.num_slices={config.mesh_layout.num_slices} (data parallelism "
            "is the axis split across slices)")
    responses = config.batch_size * config.rollout.group_size
    per_mini, rem = divmod(responses, config.grpo.num_mini_batches)
    if rem:
        raise ConfigFieldError(
            f"config.grpo.num_mini_batches={config.grpo.num_mini_batches} must divide "
            f"batch_size × rollout.group_size = {responses}")
    if per_mini % config.grpo.num_micro_batches:
        raise ConfigFieldError(
            f"config.grpo.num_micro_batches={config.grpo.num_micro_batches} must divide the "
            f"{per_mini} responses of a mini-batch")
    if not config.model.path and not config.model.tokenizer:
        raise ConfigFieldError("config.model.tokenizer: needed when config.model.path is empty "
                               f"(a random model); e.g. {QUICKSTART_TOKENIZER!r}")
    if config.search.protocol != "free" and config.rollout.mode == "self":
        raise ConfigFieldError(f"config.search.protocol={config.search.protocol!r} applies to "
                               "real-search rollouts; set config.rollout.mode to 'real', "
                               "'first_k_real' or 'entropy_guided'")
    if config.rollout.mode != "self" and not config.search.url.strip():
        raise ConfigFieldError(f"config.search.url: needed when config.rollout.mode="
                               f"{config.rollout.mode!r} (the retriever's /retrieve endpoint)")
    random = config.model.random
    if not config.model.path and random.num_heads % random.num_kv_heads:
        raise ConfigFieldError(f"config.model.random.num_kv_heads={random.num_kv_heads} must "
                               f"divide num_heads={random.num_heads}")


def parse_weights(text: str) -> dict[str, float]:
    """'nq=1,hotpotqa=0.5' -> {'nq': 1.0, 'hotpotqa': 0.5}; '' -> {}."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{part!r} is not NAME=WEIGHT")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"weight of {name.strip()!r} is not a number: {value!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of {name.strip()!r} must be a finite number >= 0, "
                             f"not {value.strip()!r}")
        weights[name.strip()] = weight
    return weights


def train_files(config: ml_collections.ConfigDict) -> list[str]:
    return [f.strip() for f in config.data.train_files.split(",") if f.strip()]


def check_suppressed_token_ids(config: ml_collections.ConfigDict, vocab_size: int) -> None:
    """Raises ConfigFieldError when rollout.suppressed_token_ids names an id >= vocab_size."""
    ids = parse_token_ids(config.rollout.suppressed_token_ids)
    outside = [i for i in ids if i >= vocab_size]
    if outside:
        raise ConfigFieldError(f"config.rollout.suppressed_token_ids: {outside} outside the "
                               f"model's vocabulary (size {vocab_size})")
