"""Train a search agent with SSRL-GRPO.

    python -m ssrl_jax.train --config configs/tiny.py [--config.field=value ...] [--workdir DIR]

Every process of a multi-host TPU slice runs this same command; a workdir that
already holds checkpoints is resumed from its latest readable step.
"""

from __future__ import annotations

import datetime
import os

from absl import app, flags, logging
from ml_collections import config_flags

from ssrl_jax.cli_errors import UserError, cli_main, exit_user_error, parse_config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/tiny.py (fields: see "
    "ssrl_jax/train_config.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard events and samples go "
    "(local or gs://). Default: runs/<config name>-<time>. An existing workdir is resumed.")


def default_workdir(config_path: str) -> str:
    name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    return os.path.join("runs", f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


_FIELDS_HINT = "configs/tiny.py (every field: ssrl_jax/train_config.py)"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with our error line (exit 2) for bad flags and config fields."""
    try:
        return parse_config_flags(flags.FLAGS, argv, fields_hint=_FIELDS_HINT)
    except UserError as error:
        exit_user_error(str(error))


@cli_main
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}", "on the command line",
                        "pass config fields as --config.FIELD=VALUE")
    if _CONFIG.value is None:
        raise UserError("--config is missing", "on the command line",
                        "pass one, e.g. --config configs/tiny.py")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    from ssrl_jax import distributed, trainer  # after flag parsing: `--help` stays fast

    distributed.initialize(_CONFIG.value.distributed)
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    result = trainer.run(_CONFIG.value, workdir)
    status = "preempted" if result.preempted else "finished"
    print(f"{status} at step {result.last_step}/{result.total_steps}; outputs in {workdir}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
