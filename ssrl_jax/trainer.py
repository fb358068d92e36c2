"""The SSRL-GRPO training loop behind `python -m ssrl_jax.train`.

    config (validated) -> mesh, tokenizer, model, rows -> compiled train step
    -> resume from the workdir's latest readable checkpoint of the same run, if any
    -> for each step: batch -> train_step -> metrics / samples -> checkpoint
    -> SIGTERM (TPU preemption): save the step just finished and return

With `rollout.mode = "self"` and `grpo.reward = "ssrl"` each step is the one compiled
`train_step`. Real search (`real`, `first_k_real`, `entropy_guided`) and TTRL rewards run
the host-driven step of `ssrl_jax.search.training` instead (jitted sampler segments with the
retriever between them, host scoring, one jitted learn program; see docs/search.md).

Every process runs this same function (multi-host: one per TPU VM); each feeds its
own rows, and only process 0 writes metrics. Step s uses the PRNG key
`fold_in(key(seed), s)` and the data iterator's saved position, so a resumed run
repeats exactly what an uninterrupted one would have done.

Resume safety (docs/training.md, "Resume and safety"): every checkpoint stores the run's
identity (`ssrl_jax.run_identity`); a workdir whose checkpoints belong to another run
(model shape, tokenizer, seed, batch or group size, data) is refused, naming each field,
and nothing in it is touched. A checkpoint step newer than the one resumed from that
cannot be read or fails verification is moved to WORKDIR/quarantine/ (never deleted),
so it is neither recomputed over nor left to make the manager drop good steps. A step
whose loss or gradient norm is not finite stops the run before anything is saved.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import tempfile
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from ssrl_jax import checkpoints, run_identity
from ssrl_jax.cli_errors import read_json_file
from ssrl_jax.data import train_batches
from ssrl_jax.data.pipeline import make_qa_iterator, num_batches
from ssrl_jax.models import ModelConfig, Transformer, init_model, load_pretrained
from ssrl_jax.models.remote import local_model_dir
from ssrl_jax.rl.rewards import ssrl_reward
from ssrl_jax.rl.optimizer import make_optimizer
from ssrl_jax.rl.step import StepConfig, init_train_state, make_train_step
from ssrl_jax.run_log import RunLog
from ssrl_jax.sampler.sampling import SamplingConfig
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.sampler.token_text import token_bytes
from ssrl_jax.sharding import ShardingRules, make_mesh
from ssrl_jax import train_config as tc

TOKENIZER_SUBDIR = "tokenizer"
QUARANTINE_SUBDIR = "quarantine"
# Step metrics that must be finite for the step's update to be kept.
FINITE_METRICS = ("loss", "grad_norm", "kl")


class RunMismatchError(tc.ConfigFieldError):
    """The workdir's checkpoints belong to a different run than the config describes."""


class UnreadableCheckpointsError(tc.ConfigFieldError):
    """The workdir lists checkpoints, but none of them can be restored."""


class TrainingDivergedError(tc.ConfigFieldError):
    """A step produced a non-finite loss or gradient norm; nothing was saved for it."""


@dataclasses.dataclass
class RunResult:
    workdir: str
    start_step: int
    last_step: int
    total_steps: int
    preempted: bool
    history: list[dict[str, float]]


# ------------------------------------------------------------ building blocks ----

def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """config.mesh laid out on this run's devices (config.mesh_layout)."""
    try:
        return make_mesh(dict(config.mesh), num_slices=config.mesh_layout.num_slices,
                         allow_split_physical_axes=config.mesh_layout.allow_split_physical_axes)
    except ValueError as error:
        raise tc.ConfigFieldError(f"config.mesh={dict(config.mesh)}: {error}") from error


def load_tokenizer(config: ml_collections.ConfigDict, model_dir: str | None) -> tuple[Any, str]:
    """(tokenizer, the local directory it was read from)."""
    from transformers import AutoTokenizer

    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path

    name = config.model.tokenizer or model_dir
    if name == tc.QUICKSTART_TOKENIZER:
        path = quickstart_tokenizer_path()
    else:
        path = local_model_dir(name, config.model.cache_dir)
    try:
        return AutoTokenizer.from_pretrained(path), path
    except (OSError, ValueError) as error:
        raise tc.ConfigFieldError(f"config.model.tokenizer / model.path: cannot load a "
                                  f"tokenizer from {path}: {error}") from error


def use_chat(setting: str, tokenizer: Any) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if setting == "true" and not has_template:
        raise tc.ConfigFieldError("config.data.chat='true' but the tokenizer has no chat "
                                  "template")
    return has_template if setting == "auto" else setting == "true"


def model_checkpoint_meta(config: ml_collections.ConfigDict) -> dict | None:
    """The meta of the Orbax checkpoint `config.model.path` names, else None.

    A checkpoint (`convert hf-to-orbax` output, or a run's workdir) is how a pod loads a
    model: each host restores only its own shards, with no copy of the whole directory.
    """
    path = config.model.path
    if not path or not checkpoints.is_checkpoint_path(path):
        return None
    try:
        return checkpoints.read_meta(path)[1]
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is reported alike
        raise tc.ConfigFieldError(f"config.model.path={path!r}: cannot read the checkpoint "
                                  f"({type(error).__name__}: {error})") from error


def model_builder(config: ml_collections.ConfigDict, model_dir: str | None, tokenizer: Any,
                  mesh: jax.sharding.Mesh, rules: ShardingRules,
                  checkpoint_meta: dict | None = None
                  ) -> tuple[ModelConfig, Callable[[], Transformer]]:
    """(model config, a function that builds the initial model on `mesh`)."""
    m = config.model
    if checkpoint_meta is not None:
        overrides = dict(param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
                         attention=m.attention)
        model_config = checkpoints.model_config_from_meta(checkpoint_meta, source=m.path,
                                                          **overrides)
        return model_config, lambda: checkpoints.load_model(m.path, mesh=mesh, rules=rules,
                                                            **overrides)[0]
    if model_dir:
        from ssrl_jax.models.hf import read_hf_config

        model_config = ModelConfig.from_hf_config(
            read_hf_config(model_dir), source=os.path.join(model_dir, "config.json"),
            param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, attention=m.attention)
        return model_config, functools.partial(
            load_pretrained, model_dir, param_dtype=m.param_dtype, dtype=m.dtype, mesh=mesh,
            rules=rules, remat=m.remat, attention=m.attention)
    model_config = ModelConfig(
        **m.random.to_dict(), vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, attention=m.attention)
    return model_config, functools.partial(init_model, model_config, seed=config.seed,
                                           mesh=mesh, rules=rules)


def eos_and_pad(model_dir: str | None, model_config: ModelConfig, tokenizer: Any,
                generation_config: dict | None = None) -> tuple[tuple[int, ...], int]:
    from ssrl_jax.sampler.text import eos_ids

    ids = eos_ids(model_dir, model_config, tokenizer) if model_dir else tuple(
        i for i in (tokenizer.eos_token_id,) if i is not None)
    extra = (generation_config or {}).get("eos_token_id")
    extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
    ids = tuple(dict.fromkeys([*ids, *(i for i in extra if 0 <= i < model_config.vocab_size)]))
    if not ids:
        raise tc.ConfigFieldError("config.model: neither the model nor the tokenizer names an "
                                  "end-of-sequence token")
    pad = tokenizer.pad_token_id
    return ids, ids[0] if pad is None else pad


def step_config(config: ml_collections.ConfigDict, eos_ids: tuple[int, ...],
                pad_id: int) -> StepConfig:
    r, g = config.rollout, config.grpo
    return StepConfig(
        group_size=r.group_size, max_new_tokens=r.max_new_tokens,
        sampling=SamplingConfig(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                suppressed_token_ids=r.suppressed_token_ids),
        eos_ids=eos_ids, pad_id=pad_id, num_mini_batches=g.num_mini_batches,
        num_micro_batches=g.num_micro_batches, ppo_epochs=g.ppo_epochs, clip_low=g.clip_low,
        clip_high=g.clip_high, dual_clip=g.dual_clip or None,
        max_log_ratio=float(g.max_log_ratio), kl_coef=g.kl_coef,
        kl_estimator=g.kl_estimator, entropy_coef=g.entropy_coef, aggregation=g.aggregation,
        advantage_estimator=g.advantage_estimator, mask_information=g.mask_information,
        logprob_chunk=g.logprob_chunk, length_buckets=g.length_buckets,
        weight_layout=r.weight_layout, kv_windows=r.kv_windows,
        sample_rows=min(config.log.num_samples, config.batch_size)
        if config.log.samples_every_steps else 0)


def uses_host_step(config: ml_collections.ConfigDict) -> bool:
    """Real search or TTRL: the host-driven step (`ssrl_jax.search.training`)."""
    return config.rollout.mode != "self" or config.grpo.reward != "ssrl"


def search_policy(config: ml_collections.ConfigDict):
    from ssrl_jax.search.rollout import SearchPolicy

    s = config.search
    return SearchPolicy(mode=config.rollout.mode, max_turns=s.max_turns, first_k=s.first_k,
                        entropy_rule=s.entropy_rule,
                        entropy_threshold=float(s.entropy_threshold),
                        max_info_tokens=s.max_info_tokens, protocol=s.protocol,
                        turn_tokens=s.turn_tokens)


def search_client(config: ml_collections.ConfigDict):
    """The `SearchClient` of config.search (None in self mode)."""
    if config.rollout.mode == "self":
        return None
    from ssrl_jax.search.client import SearchClient

    s = config.search
    try:
        return SearchClient(s.url, topk=s.topk, timeout_s=s.timeout_s, max_retries=s.max_retries,
                            on_failure=s.on_failure, batch_size=s.batch_size,
                            max_concurrency=s.max_concurrency,
                            max_consecutive_failures=s.max_consecutive_failures)
    except Exception as error:  # noqa: BLE001 - a bad URL is reported as a config error
        raise tc.ConfigFieldError(f"config.search.url={s.url!r}: {error}") from error


def make_host_step(config, graphdef, state, eos_ids, pad_id, tokenizer, vocab_size, optimizer,
                   mesh, rules, state_sharding, *, prompt_len: int):
    """The host-driven train step for real search / TTRL (single controller)."""
    from ssrl_jax.search.training import HostStep

    if jax.process_count() > 1:
        raise tc.ConfigFieldError(
            f"config.rollout.mode={config.rollout.mode!r} / config.grpo.reward="
            f"{config.grpo.reward!r}: the host-driven step runs on one host; multi-host runs "
            "support rollout.mode='self' with grpo.reward='ssrl' only")
    from ssrl_jax.search.memory import MemoryPlanError

    step = HostStep(graphdef=graphdef, config=step_config(config, eos_ids, pad_id),
                    token_bytes=token_bytes(tokenizer, vocab_size), optimizer=optimizer,
                    policy=search_policy(config), client=search_client(config),
                    tokenizer=tokenizer, params=state.params, prompt_len=prompt_len, mesh=mesh,
                    reward=config.grpo.reward, format_weight=config.grpo.format_weight,
                    format_rule=config.grpo.format_rule, rules=rules, state_sharding=state_sharding)
    try:  # compiles the learn program now and refuses a step that cannot fit in memory
        step.prepare(state, config.batch_size * config.rollout.group_size)
    except MemoryPlanError as error:
        if step.client is not None:
            step.client.close()
        raise tc.ConfigFieldError(str(error)) from error
    return step


def save_tokenizer(tokenizer: Any, workdir: epath.Path) -> epath.Path:
    """Copies the tokenizer into WORKDIR/tokenizer (what checkpoints point to)."""
    target = workdir / TOKENIZER_SUBDIR
    if jax.process_index() == 0:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            target.mkdir(parents=True, exist_ok=True)
            for name in sorted(os.listdir(tmp)):
                epath.Path(tmp, name).copy(target / name, overwrite=True)
    return target


def source_generation_config(model_dir: str | None) -> dict | None:
    """The source model's generation_config.json (kept so an export carries its defaults)."""
    from ssrl_jax.sampler.text import GENERATION_CONFIG_FILE

    path = os.path.join(model_dir, GENERATION_CONFIG_FILE) if model_dir else None
    if path is None or not os.path.isfile(path):
        return None
    return read_json_file(path)


def decode_samples(samples: dict[str, np.ndarray], tokenizer: Any) -> list[dict[str, Any]]:
    out = []
    for tokens, sources, reward in zip(samples["tokens"], samples["sources"], samples["reward"]):
        prompt = tokens[sources == TokenSource.PROMPT]
        response = tokens[(sources == TokenSource.POLICY) | (sources == TokenSource.INJECTED)]
        out.append({"prompt": tokenizer.decode(prompt.tolist(), skip_special_tokens=True),
                    "response": tokenizer.decode(response.tolist(), skip_special_tokens=True),
                    "reward": float(reward)})
    return out


class PreemptionWatch:
    """Notices SIGTERM (single host) or JAX's preemption sync point (multi-host)."""

    def __init__(self):
        self._signalled = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self._signalled = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled


# ------------------------------------------------------------------ the run ----

def run(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None,
        rules: ShardingRules = ShardingRules()) -> RunResult:
    """Trains until `total_steps` (or `stop_after` steps, for tests), resuming if it can."""
    tc.validate(config)
    workdir_path = epath.Path(workdir)
    mesh = build_mesh(config)
    checkpoint_meta = model_checkpoint_meta(config)
    try:
        model_dir = (local_model_dir(config.model.path, config.model.cache_dir)
                     if config.model.path and checkpoint_meta is None else None)
    except Exception as error:  # noqa: BLE001 - any filesystem's "cannot read" is reported alike
        raise tc.ConfigFieldError(f"config.model.path={config.model.path!r}: cannot read the "
                                  f"model directory ({type(error).__name__}: {error})") from error
    generation_config = (source_generation_config(model_dir) if checkpoint_meta is None
                         else checkpoint_meta.get("generation_config"))
    tokenizer, _ = load_tokenizer(config, model_dir or (checkpoint_meta or {}).get("tokenizer"))
    chat = use_chat(config.data.chat, tokenizer)
    model_config, build_model = model_builder(config, model_dir, tokenizer, mesh, rules,
                                              checkpoint_meta)
    eos_ids, pad_id = eos_and_pad(model_dir, model_config, tokenizer, generation_config)
    tc.check_suppressed_token_ids(config, model_config.vocab_size)
    rows = train_batches.read_training_rows(tc.train_files(config),
                                            tc.parse_weights(config.data.weights),
                                            seed=config.seed)
    train_batches.check_golds(rows, max_golds=config.data.max_golds,
                              max_gold_bytes=config.data.max_gold_bytes)
    identity = run_identity.run_identity(config, checkpoints.model_meta(model_config),
                                         tokenizer, rows)
    rows, prompts = train_batches.tokenize_prompts(
        rows, tokenizer, mode=config.data.prompt_mode, chat=chat,
        max_prompt_tokens=config.data.max_prompt_tokens, source=config.data.prompt_source)
    total_steps = config.total_steps or num_batches(
        len(rows), batch_size=config.batch_size, num_epochs=config.num_epochs)
    if total_steps < 1:
        raise tc.ConfigFieldError(f"config.batch_size={config.batch_size}: the {len(rows)} "
                                  "training rows do not fill one batch")
    # Every host walks the same global batches and keeps the rows its devices hold
    # (train_batches.step_batch), so the run does not depend on the number of hosts.
    iterator = make_qa_iterator(rows, batch_size=config.batch_size, seed=config.seed,
                                shuffle=config.data.shuffle, num_epochs=None)

    optimizer = make_optimizer(config.optim.learning_rate,
                               round(config.optim.warmup_ratio * total_steps),
                               max_grad_norm=config.optim.max_grad_norm,
                               weight_decay=config.optim.weight_decay,
                               b1=config.optim.b1, b2=config.optim.b2,
                               schedule=config.optim.schedule, total_steps=total_steps,
                               final_lr_ratio=config.optim.final_lr_ratio)
    with jax.set_mesh(mesh):
        model = build_model()
        graphdef = nnx.graphdef(model)
        state = init_train_state(model, optimizer)
        del model
    reward_fn = functools.partial(ssrl_reward, format_weight=config.grpo.format_weight,
                                  format_rule=config.grpo.format_rule)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    host_step = None
    if uses_host_step(config):
        host_step = make_host_step(config, graphdef, state, eos_ids, pad_id, tokenizer,
                                   model_config.vocab_size, optimizer, mesh, rules,
                                   state_sharding, prompt_len=prompts.length)
    else:
        train_step = make_train_step(graphdef, step_config(config, eos_ids, pad_id),
                                     token_bytes=token_bytes(tokenizer, model_config.vocab_size),
                                     reward_fn=reward_fn, optimizer=optimizer, rules=rules,
                                     state_sharding=state_sharding)

    directory = checkpoints.checkpoint_dir(workdir_path)
    start_step = _resume(directory, state, iterator, identity, workdir_path)
    # Created only now: a refused workdir is left exactly as it was.
    runlog = RunLog(workdir_path, total_steps=total_steps, tensorboard=config.log.tensorboard,
                    enabled=jax.process_index() == 0)
    runlog.drop_records_after(start_step)
    runlog.message(prompts.summary)
    manager = checkpoints.make_manager(directory, max_to_keep=config.checkpoint.max_to_keep,
                                       async_save=config.checkpoint.async_save)
    tokenizer_dir = save_tokenizer(tokenizer, workdir_path)
    meta_base = {"model": checkpoints.model_meta(model_config), "tokenizer": str(tokenizer_dir),
                 "seed": config.seed, "config": config.to_dict(), "identity": identity,
                 "generation_config": generation_config}
    runlog.message(f"{model_config.family} model, {model_config.num_params() / 1e6:.1f}M "
                   f"params | {len(rows)} training rows, prompts padded to {prompts.length} "
                   f"tokens | mesh {dict(mesh.shape)} | steps {start_step}→{total_steps} | "
                   f"workdir {workdir_path}")

    base_key = jax.random.key(config.seed)
    history: list[dict[str, float]] = []
    end = total_steps if stop_after is None else min(total_steps, start_step + stop_after)
    last, preempted = start_step, False
    responses = config.batch_size * config.rollout.group_size
    with jax.set_mesh(mesh), PreemptionWatch() as watch, _closing(manager):
        for step in range(start_step, end):
            qa = next(iterator)
            key = jax.random.fold_in(base_key, step)
            if host_step is not None:
                if step == start_step:
                    runlog.start_timer()
                state, metrics = host_step(state, prompts.row_ids(qa),
                                           [list(g) for g in qa["golden_answers"]], key)
            else:
                batch = train_batches.step_batch(
                    qa, prompts, pad_id=pad_id, max_golds=config.data.max_golds,
                    max_gold_bytes=config.data.max_gold_bytes, mesh=mesh, rules=rules)
                if step == start_step:
                    compile_start = time.perf_counter()
                    train_step = train_step.lower(state, batch, key).compile()
                    runlog.message(f"compiled the train step in "
                                   f"{time.perf_counter() - compile_start:.1f} s")
                    runlog.start_timer()
                state, metrics = train_step(state, batch, key)
                metrics = jax.device_get(metrics)
            samples = metrics.pop("samples", None)
            last = step + 1
            record = runlog.step(last, metrics,
                                 tokens=float(metrics["response_length"]) * responses)
            history.append({"step": last, **record})
            if last % config.log.every_steps == 0 or last == end:
                runlog.progress(last, record)
            if samples is not None and last % config.log.samples_every_steps == 0:
                runlog.samples(last, decode_samples(samples, tokenizer))
            _check_finite(last, metrics, manager, directory)
            preempted = watch.reached(last)
            if preempted or last % config.checkpoint.every_steps == 0 or last == end:
                try:
                    checkpoints.save(manager, last, params=state.params,
                                     opt_state=state.opt_state,
                                     meta={**meta_base, "data_iterator": iterator.get_state()},
                                     force=True)
                except checkpoints.NonFiniteParamsError as error:
                    raise TrainingDivergedError(
                        f"{error}; {_kept(manager, directory)}") from error
            if preempted:
                runlog.message(f"preempted: saved step {last}, exiting")
                break
    if host_step is not None and host_step.client is not None:
        host_step.client.close()
    runlog.close()
    return RunResult(str(workdir_path), start_step, last, total_steps, preempted, history)


class _closing:
    """Waits for pending saves and closes the manager on leaving, also on an error."""

    def __init__(self, manager: ocp.CheckpointManager):
        self.manager = manager

    def __enter__(self):
        return self.manager

    def __exit__(self, *exc):
        self.manager.wait_until_finished()
        self.manager.close()


def _kept(manager: ocp.CheckpointManager, directory: epath.Path) -> str:
    manager.wait_until_finished()
    latest = manager.latest_step()
    if latest is None:
        return f"no checkpoint was saved in {directory}"
    return (f"the latest checkpoint, step {latest} in {directory}, is unchanged and a rerun "
            "resumes from it")


def _check_finite(step: int, metrics: dict[str, Any], manager: ocp.CheckpointManager,
                  directory: epath.Path) -> None:
    """Raises TrainingDivergedError when the step's loss / gradient norm is NaN or infinite."""
    bad = {name: float(metrics[name]) for name in FINITE_METRICS
           if name in metrics and not np.isfinite(float(metrics[name]))}
    if bad:
        values = ", ".join(f"{name}={value}" for name, value in bad.items())
        raise TrainingDivergedError(
            f"step {step}: {values} (not finite): training stopped without saving this step; "
            f"{_kept(manager, directory)}. Lower config.optim.learning_rate or "
            "config.optim.max_grad_norm, or check the model weights and data")


def _mismatch_check(identity: dict[str, Any], workdir: epath.Path):
    def check(step: int, meta: dict[str, Any]) -> None:
        diffs = run_identity.differences(run_identity.identity_of_meta(meta), identity)
        if diffs:
            raise RunMismatchError(
                f"{workdir}: its checkpoints (step {step}) belong to a different run: "
                f"{run_identity.describe(diffs)} (old → new). Nothing was changed in the "
                f"workdir. Resume with the old settings, or start a fresh run with "
                f"--workdir NEW_DIR")
    return check


def _quarantine(directory: epath.Path, steps: list[int], workdir: epath.Path) -> None:
    """Moves unreadable step directories to WORKDIR/quarantine/ (process 0; never deletes)."""
    if not steps:
        return
    if jax.process_index() == 0:
        target = workdir / QUARANTINE_SUBDIR
        target.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for step in steps:
            moved = target / f"step-{step}-{stamp}"
            try:
                (directory / str(step)).rename(moved)
            except Exception as error:  # noqa: BLE001 - e.g. a store without directory renames
                raise UnreadableCheckpointsError(
                    f"{directory / str(step)}: this checkpoint step cannot be read, and moving "
                    f"it to {moved} failed ({type(error).__name__}: {error}); move it out of "
                    f"{directory} yourself and rerun") from error
            print(f"warning: checkpoint step {step} could not be read; moved it to {moved} "
                  "(inspect or delete it yourself)", flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("ssrl_jax quarantine")


def _resume(directory: epath.Path, state: Any, iterator: Any, identity: dict[str, Any],
            workdir: epath.Path) -> int:
    """Loads the latest readable checkpoint of this run into `state` / `iterator`.

    Returns its step (0 when the workdir has no checkpoint). Refuses checkpoints of
    another run (RunMismatchError) and a workdir whose listed steps are all unreadable
    (UnreadableCheckpointsError); steps newer than the one resumed are quarantined.
    """
    # Never saves, so never deletes (max_to_keep=None); read_only=True would log a warning.
    # Made on every host whether or not the directory exists yet: creating a manager is a
    # multi-host barrier, so no host may skip it on what its own view of the disk says.
    manager = checkpoints.make_manager(directory, max_to_keep=None, async_save=False)
    listed = sorted(manager.all_steps())
    if not listed:
        manager.close()
        return 0
    abstract = functools.partial(jax.tree.map, ocp.utils.to_shape_dtype_struct)
    restored = checkpoints.restore_latest(
        manager, directory, params_target=abstract(nnx.to_pure_dict(state.params)),
        train_target=abstract({"opt_state": state.opt_state, "step": state.step}),
        check_meta=_mismatch_check(identity, workdir))
    manager.close()
    if restored is None:
        raise UnreadableCheckpointsError(
            f"{directory}: none of the checkpoint steps {listed} can be read (the warnings "
            "above name each cause); nothing was changed. Move the workdir's checkpoints "
            "aside to start over in it, or start a fresh run with --workdir NEW_DIR")
    step, items = restored
    _quarantine(directory, [s for s in listed if s > step], workdir)
    nnx.replace_by_pure_dict(state.params, items[checkpoints.PARAMS])
    state.opt_state = items[checkpoints.TRAIN]["opt_state"]
    state.step = items[checkpoints.TRAIN]["step"]
    iterator.set_state(items[checkpoints.META]["data_iterator"])
    return step
