"""Everything a training run needs before its first step, built from its config:

    config (validated) -> mesh, tokenizer, model, training rows and prompts, data iterator,
    optimizer, TrainState, the train step -> resumed from the workdir's latest readable
    checkpoint of the same run, if any

Nothing in the workdir is written here: a refused workdir (another run's checkpoints) or a
step that cannot fit in memory is reported with the workdir exactly as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from etils import epath
from flax import nnx

from ssrl_jax import checkpoints, model_source, resume, run_identity
from ssrl_jax import train_config as tc
from ssrl_jax.data import train_batches
from ssrl_jax.data.pipeline import make_qa_iterator, num_batches
from ssrl_jax.models import ModelConfig
from ssrl_jax.models.remote import local_model_dir
from ssrl_jax.rl.optimizer import optimizer_from_config
from ssrl_jax.rl.train_state import TrainState, init_train_state
from ssrl_jax.sampler.token_text import token_bytes
from ssrl_jax.sharding import ShardingRules, make_mesh
from ssrl_jax.train_steps import CompiledStep, make_step


@dataclasses.dataclass
class Run:
    """A built run: `state` and `iterator` are at `start_step` (0, or the step resumed)."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    mesh: jax.sharding.Mesh
    tokenizer: Any
    model_config: ModelConfig
    generation_config: dict | None
    identity: dict[str, Any]
    num_rows: int
    prompts: train_batches.PromptTable
    iterator: Any
    total_steps: int
    state: TrainState
    step: CompiledStep
    start_step: int


def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """config.mesh laid out on this run's devices (config.mesh_layout)."""
    try:
        return make_mesh(dict(config.mesh), num_slices=config.mesh_layout.num_slices,
                         allow_split_physical_axes=config.mesh_layout.allow_split_physical_axes)
    except ValueError as error:
        raise tc.ConfigFieldError(f"config.mesh={dict(config.mesh)}: {error}") from error


def model_directory(config: ml_collections.ConfigDict, checkpoint_meta: dict | None) -> str | None:
    """The local Hugging Face directory of config.model.path (copied from GCS if need be);
    None for a random model or an Orbax checkpoint."""
    if not config.model.path or checkpoint_meta is not None:
        return None
    try:
        return local_model_dir(config.model.path, config.model.cache_dir)
    except Exception as error:  # noqa: BLE001 - any filesystem's "cannot read" is reported alike
        raise tc.ConfigFieldError(f"config.model.path={config.model.path!r}: cannot read the "
                                  f"model directory ({type(error).__name__}: {error})") from error


def build_run(config: ml_collections.ConfigDict, workdir: str,
              rules: ShardingRules = ShardingRules()) -> Run:
    """The run of `config` in `workdir` (module docstring)."""
    tc.validate(config)
    workdir_path = epath.Path(workdir)
    mesh = build_mesh(config)
    checkpoint_meta = model_source.model_checkpoint_meta(config)
    model_dir = model_directory(config, checkpoint_meta)
    generation_config = (model_source.source_generation_config(model_dir)
                         if checkpoint_meta is None else checkpoint_meta.get("generation_config"))
    tokenizer, _ = model_source.load_tokenizer(
        config, model_dir or (checkpoint_meta or {}).get("tokenizer"))
    chat = model_source.use_chat(config.data.chat, tokenizer)
    model_config, build_model = model_source.model_builder(config, model_dir, tokenizer, mesh,
                                                           rules, checkpoint_meta)
    eos_ids, pad_id = model_source.eos_and_pad(model_dir, model_config, tokenizer,
                                               generation_config)
    tc.check_suppressed_token_ids(config, model_config.vocab_size)

    rows = train_batches.read_training_rows(tc.train_files(config),
                                            tc.parse_weights(config.data.weights),
                                            seed=config.seed)
    train_batches.check_golds(rows, max_golds=config.data.max_golds,
                              max_gold_bytes=config.data.max_gold_bytes)
    identity = run_identity.run_identity(config, checkpoints.model_meta(model_config),
                                         tokenizer, rows)
    resume.refuse_another_run(checkpoints.checkpoint_dir(workdir_path), identity, workdir_path)
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

    optimizer = optimizer_from_config(config.optim, total_steps)
    with jax.set_mesh(mesh):
        model = build_model()
        graphdef = nnx.graphdef(model)
        state = init_train_state(model, optimizer)
        del model
    step = make_step(config, graphdef=graphdef, state=state, optimizer=optimizer,
                     token_bytes=token_bytes(tokenizer, model_config.vocab_size),
                     tokenizer=tokenizer, eos_ids=eos_ids, pad_id=pad_id, prompts=prompts,
                     mesh=mesh, rules=rules)
    try:
        start_step = resume.resume(checkpoints.checkpoint_dir(workdir_path), state, iterator,
                                   identity, workdir_path)
    except BaseException:
        step.close()
        raise
    return Run(config=config, workdir=workdir_path, mesh=mesh, tokenizer=tokenizer,
               model_config=model_config, generation_config=generation_config,
               identity=identity, num_rows=len(rows), prompts=prompts, iterator=iterator,
               total_steps=total_steps, state=state, step=step, start_step=start_step)
