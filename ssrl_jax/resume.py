"""Resuming a run from its workdir, safely (docs/training.md, "Resume and safety").

Every checkpoint stores the run's identity (`ssrl_jax.run_identity`); a workdir whose
checkpoints belong to another run (model shape, tokenizer, seed, batch or group size, data) is
refused, naming each field, and nothing in it is touched. A checkpoint step newer than the one
resumed from that cannot be read or fails verification is moved to WORKDIR/quarantine/ (never
deleted), so it is neither recomputed over nor left to make the manager drop good steps.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from ssrl_jax import checkpoints, run_identity
from ssrl_jax import train_config as tc

QUARANTINE_SUBDIR = "quarantine"


class RunMismatchError(tc.ConfigFieldError):
    """The workdir's checkpoints belong to a different run than the config describes."""


class UnreadableCheckpointsError(tc.ConfigFieldError):
    """The workdir lists checkpoints, but none of them can be restored."""


def mismatch_check(identity: dict[str, Any], workdir: epath.Path):
    def check(step: int, meta: dict[str, Any]) -> None:
        diffs = run_identity.differences(run_identity.identity_of_meta(meta), identity)
        if diffs:
            raise RunMismatchError(
                f"{workdir}: its checkpoints (step {step}) belong to a different run: "
                f"{run_identity.describe(diffs)} (old → new). Nothing was changed in the "
                f"workdir. Resume with the old settings, or start a fresh run with "
                f"--workdir NEW_DIR")
    return check


def refuse_another_run(directory: epath.Path, identity: dict[str, Any],
                       workdir: epath.Path) -> None:
    """Raises RunMismatchError when the newest step with readable metadata belongs to another
    run: before the model is built and the step compiled (minutes on a pod), from the JSON
    metadata alone. `resume` checks every step it tries again."""
    # A barrier on every host, as in `resume`; it creates the directory a fresh run needs.
    manager = checkpoints.make_manager(directory, max_to_keep=None, async_save=False)
    try:
        check = mismatch_check(identity, workdir)
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                meta = checkpoints.read_step_meta(manager, step)
            except Exception:  # noqa: BLE001 - `resume` names it and tries the one before
                continue
            check(step, meta)
            return
    finally:
        manager.close()


def quarantine(directory: epath.Path, steps: list[int], workdir: epath.Path) -> None:
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


def resume(directory: epath.Path, state: Any, iterator: Any, identity: dict[str, Any],
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
        check_meta=mismatch_check(identity, workdir))
    manager.close()
    if restored is None:
        raise UnreadableCheckpointsError(
            f"{directory}: none of the checkpoint steps {listed} can be read (the warnings "
            "above name each cause); nothing was changed. Move the workdir's checkpoints "
            "aside to start over in it, or start a fresh run with --workdir NEW_DIR")
    step, items = restored
    quarantine(directory, [s for s in listed if s > step], workdir)
    nnx.replace_by_pure_dict(state.params, items[checkpoints.PARAMS])
    state.opt_state = items[checkpoints.TRAIN]["opt_state"]
    state.step = items[checkpoints.TRAIN]["step"]
    iterator.set_state(items[checkpoints.META]["data_iterator"])
    return step
