"""The SSRL-GRPO training loop behind `python -m ssrl_jax.train`.

    run = build_run(config, workdir)      # run_setup.py: mesh, model, data, step, resume
    for each step: qa batch -> step(state, qa, key) -> metrics / samples -> checkpoint
    SIGTERM (TPU preemption): save the step just finished and return

The loop is the same for every training mode: `run.step` (train_steps.py) is the one
compiled step, whose rollout searches or not and whose reward is SSRL's or TTRL's.

Every process runs this same function (multi-host: one per TPU VM); each feeds its
own rows, and only process 0 writes metrics. Step s uses the PRNG key
`fold_in(key(seed), s)` and the data iterator's saved position, so a resumed run
repeats exactly what an uninterrupted one would have done. A step whose loss or gradient
norm is not finite stops the run before anything is saved (resume.py says how a resumed
workdir is checked).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ssrl_jax import checkpoints
from ssrl_jax import train_config as tc
from ssrl_jax.model_source import save_tokenizer
from ssrl_jax.run_log import RunLog
from ssrl_jax.run_setup import Run, build_run
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.sharding import ShardingRules

# Step metrics that must be finite for the step's update to be kept.
FINITE_METRICS = ("loss", "grad_norm", "kl")


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


def run(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None,
        rules: ShardingRules = ShardingRules()) -> RunResult:
    """Trains until `total_steps` (or `stop_after` steps, for tests), resuming if it can."""
    r = build_run(config, workdir, rules)
    try:
        return _train(r, stop_after)
    finally:
        r.step.close()


def _train(r: Run, stop_after: int | None) -> RunResult:
    config, state, start_step = r.config, r.state, r.start_step
    directory = checkpoints.checkpoint_dir(r.workdir)
    # Created only now: a refused workdir is left exactly as it was.
    runlog = RunLog(r.workdir, total_steps=r.total_steps, tensorboard=config.log.tensorboard,
                    enabled=jax.process_index() == 0)
    runlog.drop_records_after(start_step)
    runlog.message(r.prompts.summary)
    manager = checkpoints.make_manager(directory, max_to_keep=config.checkpoint.max_to_keep,
                                       async_save=config.checkpoint.async_save)
    meta_base = {"model": checkpoints.model_meta(r.model_config),
                 "tokenizer": str(save_tokenizer(r.tokenizer, r.workdir)), "seed": config.seed,
                 "config": config.to_dict(), "identity": r.identity,
                 "generation_config": r.generation_config}
    runlog.message(f"{r.model_config.family} model, {r.model_config.num_params() / 1e6:.1f}M "
                   f"params | {r.num_rows} training rows, prompts padded to {r.prompts.length} "
                   f"tokens | mesh {dict(r.mesh.shape)} | steps {start_step}→{r.total_steps} | "
                   f"workdir {r.workdir}")

    base_key = jax.random.key(config.seed)
    history: list[dict[str, float]] = []
    end = r.total_steps if stop_after is None else min(r.total_steps, start_step + stop_after)
    last, preempted = start_step, False
    responses = config.batch_size * config.rollout.group_size
    with jax.set_mesh(r.mesh), PreemptionWatch() as watch, _closing(manager):
        for step in range(start_step, end):
            qa = next(r.iterator)
            key = jax.random.fold_in(base_key, step)
            if step == start_step:
                runlog.message(r.step.prepare(state, qa, key))
                runlog.start_timer()
            state, metrics = r.step(state, qa, key)
            samples = metrics.pop("samples", None)
            last = step + 1
            record = runlog.step(last, metrics,
                                 tokens=float(metrics["response_length"]) * responses)
            history.append({"step": last, **record})
            if last % config.log.every_steps == 0 or last == end:
                runlog.progress(last, record)
            if samples is not None and last % config.log.samples_every_steps == 0:
                runlog.samples(last, decode_samples(samples, r.tokenizer))
            _check_finite(last, metrics, manager, directory)
            preempted = watch.reached(last)
            if preempted or last % config.checkpoint.every_steps == 0 or last == end:
                try:
                    checkpoints.save(manager, last, params=state.params,
                                     opt_state=state.opt_state,
                                     meta={**meta_base, "data_iterator": r.iterator.get_state()},
                                     force=True)
                except checkpoints.NonFiniteParamsError as error:
                    raise TrainingDivergedError(
                        f"{error}; {_kept(manager, directory)}") from error
            if preempted:
                runlog.message(f"preempted: saved step {last}, exiting")
                break
    runlog.close()
    return RunResult(str(r.workdir), start_step, last, r.total_steps, preempted, history)


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
