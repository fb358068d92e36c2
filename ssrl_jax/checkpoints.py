"""Training checkpoints: an Orbax `CheckpointManager` over `WORKDIR/checkpoints`.

One step directory `WORKDIR/checkpoints/<step>/` holds three items:

    params/   the policy's parameters (`nnx.Param` state as a pure dict): all that
              conversion to Hugging Face or evaluation needs
    train/    {"opt_state": optax state, "step": int32}: absent in a checkpoint made
              by `convert hf-to-orbax`
    meta/     JSON: {"step", "model": {"hf_config", "param_dtype", "dtype"},
              "tokenizer", "seed", "data_iterator", "config", "identity",
              "checksums": {"params": {leaf: [dtype, sum]}, "train": {...}}}

The frozen KL reference is not saved: it is the run's initial weights and is loaded
again from the run's model source. The per-step PRNG key is `fold_in(seed, step)`,
so the seed in `meta` is the whole RNG state. Orbax writes every step to a temporary
directory and renames it when complete, so a step interrupted mid-write is never
listed; a listed step that still fails to restore is skipped with a warning in
favour of the one before it.

Every restore verifies what it read: parameters must be floating point and finite, and
each array's bit checksum (`ssrl_jax.tree_checks`, stored in `meta` at save time) must
match, so a flipped byte on disk is reported as a corrupt step naming the array instead
of being trained on or evaluated. Saving refuses non-finite parameters.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from ssrl_jax import tree_checks
from ssrl_jax.cli_errors import UserError
from ssrl_jax.models.config import ModelConfig
from ssrl_jax.models.hf import CheckpointError
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


class CorruptCheckpointError(CheckpointError):
    """A listed step restored, but what it holds is not what was saved (or not usable)."""


class NonFiniteParamsError(ValueError):
    """Parameters holding NaN or infinity were about to be saved."""


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
    """Saves one step (asynchronously when the manager is async). True if a save started.

    Raises NonFiniteParamsError, saving nothing, when a parameter holds NaN or infinity.
    """
    tree = params_tree(params)
    bad = tree_checks.non_finite_leaves(tree)
    if bad:
        raise NonFiniteParamsError(f"step {step}: parameters {', '.join(bad)} hold NaN or "
                                   "infinity; not saved")
    sums = {PARAMS: tree_checks.checksums(tree)}
    items = {PARAMS: ocp.args.StandardSave(tree)}
    if opt_state is not None:
        train = {"opt_state": opt_state, "step": jnp.int32(step)}
        sums[TRAIN] = tree_checks.checksums(train)
        items[TRAIN] = ocp.args.StandardSave(train)
    items[META] = ocp.args.JsonSave({**meta, "step": int(step), "checksums": sums})
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


def read_step_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The JSON metadata of one step (nothing else is read)."""
    return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


def stored_dtypes(manager: ocp.CheckpointManager, step: int) -> dict[str, str]:
    """{leaf name: dtype} of the parameters as written on disk (read from Orbax's metadata)."""
    metadata = ocp.StandardCheckpointHandler().metadata(manager.directory / str(step) / PARAMS)
    tree = getattr(metadata, "tree", metadata)
    return {name: str(leaf.dtype) for name, leaf in tree_checks.named_leaves(tree).items()}


def verify(step_dir: epath.Path, restored: dict[str, Any]) -> None:
    """Raises CorruptCheckpointError naming the arrays that are not what `save` wrote."""
    expected = restored[META].get("checksums") or {}
    for item in (PARAMS, TRAIN):
        if item not in restored:
            continue
        bad = tree_checks.non_finite_leaves(restored[item])
        if bad:
            raise CorruptCheckpointError(f"{step_dir}: {item} {', '.join(bad)} hold NaN or "
                                         "infinity")
        if item in expected:
            bad = tree_checks.checksum_mismatches(restored[item], expected[item])
            if bad:
                raise CorruptCheckpointError(
                    f"{step_dir}: {item} {', '.join(bad)} differ from what was saved "
                    "(checksum mismatch: the files were modified or damaged)")


def restore_step(manager: ocp.CheckpointManager, step: int, *, params_target: dict,
                 train_target: Any = None) -> dict[str, Any]:
    """Restores and verifies one step: {"params": pure dict, "meta": dict, "train": ...}.

    Raises CorruptCheckpointError when the stored parameters are not floating point
    (e.g. quantised integers), hold NaN / infinity, or fail their saved checksums.
    """
    step_dir = manager.directory / str(step)
    not_float = {name: dtype for name, dtype in stored_dtypes(manager, step).items()
                 if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating)}
    if not_float:
        raise CorruptCheckpointError(
            f"{step_dir}: parameters must be floating point; stored as "
            + ", ".join(f"{name} {dtype}" for name, dtype in sorted(not_float.items())))
    items = {PARAMS: ocp.args.StandardRestore(params_target), META: ocp.args.JsonRestore()}
    if train_target is not None:
        items[TRAIN] = ocp.args.StandardRestore(train_target)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    restored = {name: restored[name] for name in items}
    verify(step_dir, restored)
    return restored


def restore_latest(manager: ocp.CheckpointManager, directory: epath.Path, *,
                   params_target: dict, train_target: Any = None,
                   step: int | None = None,
                   check_meta: Callable[[int, dict[str, Any]], None] | None = None
                   ) -> tuple[int, dict[str, Any]] | None:
    """The newest step that restores (or exactly `step`); None when there is none.

    A step that fails to restore is skipped with a warning naming it and the
    cause, and the one before it is tried. `check_meta(step, meta)` runs on each
    step's metadata before its arrays are read; what it raises is not caught.
    """
    steps = [step] if step is not None else candidate_steps(manager, directory)
    for candidate in steps:
        try:
            meta = read_step_meta(manager, candidate)
        except Exception as error:  # noqa: BLE001 - any unreadable step is skipped alike
            if step is not None:
                raise
            log.warning("%s: checkpoint step %d has unreadable metadata (%s: %s); trying the "
                        "previous one", directory, candidate, type(error).__name__, error)
            continue
        if check_meta is not None:
            check_meta(candidate, meta)
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
            return candidate, read_step_meta(manager, candidate)
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

    `path` without a step: the newest step that restores and verifies; an unreadable
    or corrupt newer one is skipped with a warning naming it. `config_overrides`
    (e.g. `param_dtype="float32"`) change how it is loaded; the parameters are read
    and verified in their stored dtype, then cast.
    """
    directory, step = locate(path)
    mesh = mesh or single_device_mesh()
    manager = make_manager(directory, read_only=True, async_save=False)
    steps = [step] if step is not None else candidate_steps(manager, directory)
    skipped = []
    for candidate in steps:
        source = str(directory / str(candidate))
        try:
            meta = read_step_meta(manager, candidate)
            stored = model_config_from_meta(meta, source=source)
            restored = restore_step(manager, candidate,
                                    params_target=abstract_params(stored, mesh, rules)[2])
        except Exception as error:  # noqa: BLE001 - any unreadable step is skipped alike
            if step is not None:
                raise
            log.warning("%s: checkpoint step %d is unreadable (%s: %s); trying the previous one",
                        directory, candidate, type(error).__name__, error)
            skipped.append(f"step {candidate} ({type(error).__name__}: {error})")
            continue
        config = model_config_from_meta(meta, source=source, **config_overrides)
        graphdef, state, target = abstract_params(config, mesh, rules)
        params = jax.tree.map(lambda x, t: x.astype(t.dtype), restored[PARAMS], target)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state), {**restored[META], "step": candidate}
    if skipped:
        raise CorruptCheckpointError(f"{directory}: no readable checkpoint: "
                                     + "; ".join(skipped))
    raise CheckpointNotFoundError(f"{directory}: no complete checkpoint")
