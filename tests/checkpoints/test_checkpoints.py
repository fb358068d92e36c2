"""Orbax checkpoints: params round trip, dtype cast on load, skipping unreadable steps."""

import logging
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssrl_jax import checkpoints
from ssrl_jax.models import ModelConfig, init_model
from ssrl_jax.sharding import make_mesh
from tests.helpers_checkpoint_faults import flip_byte, params_data_file

CONFIG = ModelConfig(family="qwen3", vocab_size=96, hidden_size=32, intermediate_size=48,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qk_norm=True,
                     eos_token_id=1)


def _leaves(state):
    return jax.tree.leaves(nnx.to_pure_dict(state))


@pytest.fixture(scope="module")
def model():
    return init_model(CONFIG, seed=3)


def test_params_round_trip_with_optimizer_state(model, tmp_path):
    params = nnx.state(model, nnx.Param)
    opt_state = optax.adam(1e-3).init(params)
    manager = checkpoints.make_manager(checkpoints.checkpoint_dir(tmp_path), async_save=False)
    meta = {"model": checkpoints.model_meta(CONFIG), "seed": 7, "data_iterator": {"pos": 3}}
    assert checkpoints.save(manager, 5, params=params, opt_state=opt_state, meta=meta)
    manager.wait_until_finished()

    loaded, loaded_meta = checkpoints.load_model(tmp_path)
    assert loaded_meta["step"] == 5 and loaded_meta["seed"] == 7
    assert loaded_meta["data_iterator"] == {"pos": 3}
    assert loaded.config == CONFIG
    for a, b in zip(_leaves(params), _leaves(nnx.state(loaded, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    _, target = checkpoints.abstract_params(CONFIG, checkpoints.single_device_mesh(),
                                            checkpoints.ShardingRules())[1:]
    train_target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                {"opt_state": opt_state, "step": jnp.int32(5)})
    step, restored = checkpoints.restore_latest(
        manager, checkpoints.checkpoint_dir(tmp_path), params_target=target,
        train_target=train_target)
    assert step == 5
    for a, b in zip(jax.tree.leaves(opt_state), jax.tree.leaves(restored["train"]["opt_state"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_params_only_checkpoint_loads_sharded_and_cast(model, tmp_path, eight_devices):
    params = nnx.state(model, nnx.Param)
    path = checkpoints.write_params_checkpoint(tmp_path / "ckpt", params, CONFIG,
                                               extra_meta={"tokenizer": None})
    assert path.name == "0"
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    loaded, meta = checkpoints.load_model(path, mesh=mesh, param_dtype="bfloat16")
    leaves = _leaves(nnx.state(loaded, nnx.Param))
    assert all(x.dtype == jnp.bfloat16 for x in leaves)
    assert any(len(x.sharding.device_set) == 8 for x in leaves)
    for a, b in zip(_leaves(params), leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(b))


def test_unreadable_latest_step_is_skipped_with_a_warning(model, tmp_path, caplog):
    params = nnx.state(model, nnx.Param)
    directory = checkpoints.checkpoint_dir(tmp_path)
    manager = checkpoints.make_manager(directory, async_save=False)
    meta = {"model": checkpoints.model_meta(CONFIG)}
    for step in (1, 2):
        checkpoints.save(manager, step, params=params, meta=meta)
    manager.wait_until_finished()
    # Step 2 loses its parameter data (e.g. a partial copy); a write Orbax never finished
    # leaves a temporary directory behind.
    params_dir = pathlib.Path(directory / "2" / checkpoints.PARAMS)
    shutil.rmtree(params_dir)
    params_dir.mkdir()
    (directory / f"3{checkpoints._TMP_MARKER}-123").mkdir()
    target = checkpoints.abstract_params(CONFIG, checkpoints.single_device_mesh(),
                                         checkpoints.ShardingRules())[2]
    manager = checkpoints.make_manager(directory, async_save=False)
    with caplog.at_level(logging.WARNING):
        step, restored = checkpoints.restore_latest(manager, directory, params_target=target)
    assert step == 1
    assert "step 2 is unreadable" in caplog.text
    assert "skipping incomplete checkpoint 3" in caplog.text


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="no complete checkpoint"):
        checkpoints.read_meta(tmp_path)
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="not a training workdir"):
        checkpoints.read_meta(tmp_path / "absent")


def test_relative_paths_work(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = nnx.state(model, nnx.Param)
    manager = checkpoints.make_manager(checkpoints.checkpoint_dir("runs/rel"), async_save=False)
    checkpoints.save(manager, 3, params=params, meta={"model": checkpoints.model_meta(CONFIG)})
    manager.wait_until_finished()
    step, _ = checkpoints.read_meta("runs/rel")
    assert step == 3
    loaded, _ = checkpoints.load_model("runs/rel/checkpoints/3")
    assert loaded.config == CONFIG


def _saved(model, directory, steps=(1, 2)):
    params = nnx.state(model, nnx.Param)
    manager = checkpoints.make_manager(directory, async_save=False)
    for step in steps:
        checkpoints.save(manager, step, params=params,
                         meta={"model": checkpoints.model_meta(CONFIG)})
    manager.wait_until_finished()
    return params


def test_every_flipped_byte_is_refused_never_loaded(model, tmp_path):
    """Orbax itself loads most single-byte flips with silently changed values; the checksums
    saved in meta turn each into an error naming the array."""
    import orbax.checkpoint as ocp

    directory = checkpoints.checkpoint_dir(tmp_path)
    params = _saved(model, directory, steps=(1,))
    data = params_data_file(directory / "1")
    original = data.read_bytes()
    target = checkpoints.abstract_params(CONFIG, checkpoints.single_device_mesh(),
                                         checkpoints.ShardingRules())[2]
    silent = detected = 0
    for offset in range(len(original) // 20, len(original), len(original) // 12):
        flip_byte(data, offset)
        manager = checkpoints.make_manager(directory, read_only=True)
        try:  # what Orbax alone returns
            raw = manager.restore(1, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target)))["params"]
            changed = any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                          zip(jax.tree.leaves(raw), _leaves(params), strict=True))
        except Exception:  # noqa: BLE001 - Orbax noticed this one itself
            changed = False
        with pytest.raises(Exception) as error:
            checkpoints.load_model(directory / "1")
        if changed:
            silent += 1
            assert isinstance(error.value, checkpoints.CorruptCheckpointError)
            assert re.search(r"params \S+ .*(checksum mismatch|NaN or infinity)",
                             str(error.value))
            detected += 1
        data.write_bytes(original)
    assert silent >= 3 and detected == silent


def test_corrupt_latest_step_falls_back_with_a_warning(model, tmp_path, caplog):
    directory = checkpoints.checkpoint_dir(tmp_path)
    _saved(model, directory)
    flip_byte(params_data_file(directory / "2"))
    with caplog.at_level(logging.WARNING):
        loaded, meta = checkpoints.load_model(tmp_path)
    assert meta["step"] == 1
    assert "checkpoint step 2 is unreadable (CorruptCheckpointError" in caplog.text
    flip_byte(params_data_file(directory / "1"))
    with pytest.raises(checkpoints.CorruptCheckpointError, match="no readable checkpoint: step 2"):
        checkpoints.load_model(tmp_path)


def test_integer_parameters_on_disk_are_refused_by_name(model, tmp_path):
    import orbax.checkpoint as ocp

    tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tree["embed"] = jnp.ones(tree["embed"].shape, jnp.int8)  # e.g. a quantised export
    manager = checkpoints.make_manager(checkpoints.checkpoint_dir(tmp_path), async_save=False)
    manager.save(0, args=ocp.args.Composite(
        params=ocp.args.StandardSave(tree),
        meta=ocp.args.JsonSave({"model": checkpoints.model_meta(CONFIG), "step": 0})))
    manager.wait_until_finished()
    with pytest.raises(checkpoints.CorruptCheckpointError,
                       match=r"must be floating point; stored as embed int8"):
        checkpoints.load_model(checkpoints.checkpoint_dir(tmp_path) / "0")


def test_non_finite_parameters_are_never_saved(model, tmp_path):
    broken = nnx.clone(model)
    broken.final_norm[...] = broken.final_norm[...].at[0].set(jnp.nan)
    params = nnx.state(broken, nnx.Param)
    manager = checkpoints.make_manager(checkpoints.checkpoint_dir(tmp_path), async_save=False)
    with pytest.raises(checkpoints.NonFiniteParamsError, match="parameters final_norm hold NaN"):
        checkpoints.save(manager, 1, params=params,
                         meta={"model": checkpoints.model_meta(CONFIG)})
    assert manager.all_steps() == []
