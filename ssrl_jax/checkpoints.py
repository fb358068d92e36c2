"""Training checkpoints: an Orbax `CheckpointManager` over `WORKDIR/checkpoints`.

One step directory `WORKDIR/checkpoints/<step>/` holds three items:

    params/   the policy's parameters (`nnx.Param` state as a pure dict): all that
              conversion to Hugging Face or evaluation needs
    train/    {"opt_state": optax state, "step": int32}: absent in a checkpoint made
              by `convert hf-to-orbax`
    meta/     JSON: {"step", "model": {"hf_config", "param_dtype", "dtype"},
              "tokenizer", "seed", "data_iterator", "config"}

The frozen KL reference is not saved: it is the run's initial weights and is loaded
again from the run's model source. The per-step PRNG key is `fold_in(seed, step)`,
so the seed in `meta` is the whole RNG state. Orbax writes every step to a temporary
directory and renames it when complete, so a step interrupted mid-write is never
listed; a listed step that still fails to restore is skipped with a warning in
favour of the one before it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from ssrl_jax.cli_errors import UserError
from ssrl_jax.models.config import ModelConfig
from ssrl_jax.models.init import abstract_model, single_device_mesh, state_shardings
from ssrl_jax.sharding import ShardingRules

__all__ = ["ShardingRules", "single_device_mesh"]  # re-exported for callers of abstract_params

CHECKPOINT_SUBDIR = "checkpoints"
PARAMS, TRAIN, META = "params", "train", "meta"
ITEM_NAMES = (PARAMS, TRAIN, META)
_TMP_MARKER = ".orbax-checkpoint-tmp"

log = logging.getLogger(__name__)


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """No complete checkpoint exists where one was asked for."""


def absolute(path: str | epath.Path) -> epath.Path:
    """`path` with a local relative path made absolute (Orbax refuses relative paths)."""
    text = str(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
    return absolute(workdir) / CHECKPOINT_SUBDIR


def make_manager(directory: str | epath.Path, *, max_to_keep: int | None = 3,
                 save_interval_steps: int = 1, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """A manager for `directory` (usually `checkpoint_dir(workdir)`)."""
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                               save_interval_steps=0,
                                               enable_async_checkpointing=False)
    else:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(absolute(directory), options=options, item_names=ITEM_NAMES)


# ----------------------------------------------------------------- metadata ----

def model_meta(config: ModelConfig) -> dict[str, Any]:
    """The JSON description of a model: its HF config plus our dtype fields."""
    return {"hf_config": config.to_hf_config(), "param_dtype": config.param_dtype,
            "dtype": config.dtype}


def model_config_from_meta(meta: dict[str, Any], *, source: str = "meta",
                           **overrides: Any) -> ModelConfig:
    model = meta["model"]
    fields = {"param_dtype": model["param_dtype"], "dtype": model["dtype"], **overrides}
    return ModelConfig.from_hf_config(model["hf_config"], source=f"{source}: model.hf_config",
                                      **fields)


# -------------------------------------------------------------------- save ----

def params_tree(params: nnx.State) -> dict:
    """The pure-dict tree Orbax stores for `nnx.state(model, nnx.Param)`."""
    return nnx.to_pure_dict(params)


def save(manager: ocp.CheckpointManager, step: int, *, params: nnx.State, meta: dict[str, Any],
         opt_state: Any = None, force: bool = False) -> bool:
    """Saves one step (asynchronously when the manager is async). True if a save started."""
    items = {PARAMS: ocp.args.StandardSave(params_tree(params)),
             META: ocp.args.JsonSave({**meta, "step": int(step)})}
    if opt_state is not None:
        items[TRAIN] = ocp.args.StandardSave({"opt_state": opt_state, "step": jnp.int32(step)})
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def write_params_checkpoint(directory: str | epath.Path, params: nnx.State, config: ModelConfig,
                            *, step: int = 0, extra_meta: dict[str, Any] | None = None
                            ) -> epath.Path:
    """Writes a params-only checkpoint (what `convert hf-to-orbax` produces); returns its path."""
    manager = make_manager(directory, max_to_keep=None, async_save=False)
    save(manager, step, params=params, meta={"model": model_meta(config), **(extra_meta or {})},
         force=True)
    manager.wait_until_finished()
    manager.close()
    return absolute(directory) / str(step)


# ------------------------------------------------------------------ locate ----

def incomplete_steps(directory: epath.Path) -> list[str]:
    """Names of step directories Orbax left unfinished (interrupted writes)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if _TMP_MARKER in p.name)


def locate(path: str | epath.Path) -> tuple[epath.Path, int | None]:
    """Resolves WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/STEP.

    Returns (manager directory, step or None for "the latest complete one").
    """
    path = absolute(path)
    if (path / META).exists() and path.name.isdigit():
        return path.parent, int(path.name)
    if (path / CHECKPOINT_SUBDIR).is_dir():
        return path / CHECKPOINT_SUBDIR, None
    if path.is_dir():
        return path, None
    raise CheckpointNotFoundError(
        f"{path}: not a training workdir, a checkpoints directory or a step directory")


def is_checkpoint_path(path: str | epath.Path) -> bool:
    """Whether `path` is a workdir, checkpoints directory or step directory of ours (and
    not a Hugging Face model directory)."""
    path = absolute(path)
    if (path / "config.json").exists():
        return False
    if (path / META).exists() and path.name.isdigit():
        return True
    directory = path / CHECKPOINT_SUBDIR if (path / CHECKPOINT_SUBDIR).is_dir() else path
    return directory.is_dir() and any(p.name.isdigit() and (p / META).exists()
                                      for p in directory.iterdir())


def candidate_steps(manager: ocp.CheckpointManager, directory: epath.Path) -> list[int]:
    """Listed steps, newest first, after warning about any unfinished ones."""
    for name in incomplete_steps(directory):
        log.warning("%s: skipping incomplete checkpoint %s (interrupted while writing)",
                    directory, name)
    return sorted(manager.all_steps(), reverse=True)


# ----------------------------------------------------------------- restore ----

def abstract_params(config: ModelConfig, mesh: jax.sharding.Mesh,
                    rules: ShardingRules) -> tuple[nnx.GraphDef, nnx.State, dict]:
    """(graphdef, abstract param state, pure-dict restore target with shardings)."""
    graphdef, state = nnx.split(abstract_model(config, rules))
    shardings = state_shardings(state, mesh, rules)
    target = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
        nnx.to_pure_dict(state), nnx.to_pure_dict(shardings))
    return graphdef, state, target


def restore_step(manager: ocp.CheckpointManager, step: int, *, params_target: dict,
                 train_target: Any = None) -> dict[str, Any]:
    """Restores one step: {"params": pure dict, "meta": dict, "train": ... or absent}."""
    items = {PARAMS: ocp.args.StandardRestore(params_target), META: ocp.args.JsonRestore()}
    if train_target is not None:
        items[TRAIN] = ocp.args.StandardRestore(train_target)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return {name: restored[name] for name in items}


def restore_latest(manager: ocp.CheckpointManager, directory: epath.Path, *,
                   params_target: dict, train_target: Any = None,
                   step: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """The newest step that restores (or exactly `step`); None when there is none.

    A step that fails to restore is skipped with a warning naming it and the
    cause, and the one before it is tried.
    """
    steps = [step] if step is not None else candidate_steps(manager, directory)
    for candidate in steps:
        try:
            return candidate, restore_step(manager, candidate, params_target=params_target,
                                           train_target=train_target)
        except Exception as error:  # noqa: BLE001 - any unreadable step is skipped alike
            if step is not None:
                raise
            log.warning("%s: checkpoint step %d is unreadable (%s: %s); trying the previous one",
                        directory, candidate, type(error).__name__, error)
    return None


def read_meta(path: str | epath.Path) -> tuple[int, dict[str, Any]]:
    """(step, meta) of the checkpoint at `path` (a workdir, checkpoints dir or step dir)."""
    directory, step = locate(path)
    manager = make_manager(directory, read_only=True, async_save=False)
    steps = [step] if step is not None else candidate_steps(manager, directory)
    for candidate in steps:
        try:
            meta = manager.restore(candidate, args=ocp.args.Composite(
                **{META: ocp.args.JsonRestore()}))[META]
            return candidate, meta
        except Exception as error:  # noqa: BLE001
            if step is not None:
                raise
            log.warning("%s: checkpoint step %d has no readable metadata (%s); trying the "
                        "previous one", directory, candidate, error)
    raise CheckpointNotFoundError(f"{directory}: no complete checkpoint")


def load_model(path: str | epath.Path, *, mesh: jax.sharding.Mesh | None = None,
               rules: ShardingRules = ShardingRules(), **config_overrides: Any
               ) -> tuple[nnx.Module, dict[str, Any]]:
    """The policy model stored at `path`, placed on `mesh`, and the checkpoint's meta.

    `config_overrides` (e.g. `param_dtype="float32"`) change how it is loaded;
    a different parameter dtype is cast on restore.
    """
    directory, step = locate(path)
    step, meta = read_meta(directory / str(step) if step is not None else directory)
    config = model_config_from_meta(meta, source=str(directory / str(step)), **config_overrides)
    mesh = mesh or single_device_mesh()
    graphdef, state, target = abstract_params(config, mesh, rules)
    manager = make_manager(directory, read_only=True, async_save=False)
    restored = restore_step(manager, step, params_target=target)
    nnx.replace_by_pure_dict(state, restored[PARAMS])
    meta = {**restored[META], "step": step}
    return nnx.merge(graphdef, state), meta
