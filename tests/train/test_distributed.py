"""Bring-up decisions of `ssrl_jax.distributed` (the cluster itself: test_multihost.py)."""

import pytest

from ssrl_jax import distributed


def test_explicit_contract_reads_the_three_variables():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "16",
           "JAX_PROCESS_ID": "3"}
    assert distributed.explicit_cluster(env) == {
        "coordinator_address": "10.0.0.2:1234", "num_processes": 16, "process_id": 3}
    assert distributed.explicit_cluster({}) is None


@pytest.mark.parametrize("env, match", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES must be"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "x"},
     "JAX_PROCESS_ID must be an integer; got 'x'"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"JAX_PROCESS_ID=2 must lie in \[0, JAX_NUM_PROCESSES=2\)"),
])
def test_a_half_set_contract_names_the_variable(env, match):
    with pytest.raises(distributed.DistributedSetupError, match=match):
        distributed.explicit_cluster(env)


def test_one_process_without_a_cluster_or_tpu_is_left_alone(monkeypatch):
    monkeypatch.setattr(distributed, "tpu_chips_visible", lambda: False)
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kwargs: calls.append(kwargs))
    assert distributed.initialize("auto", env={}) is False
    assert distributed.initialize("off", env={"JAX_COORDINATOR_ADDRESS": "h:1"}) is False
    assert calls == []


def test_a_tpu_vm_always_initialises_and_lets_jax_find_the_hosts(monkeypatch):
    monkeypatch.setattr(distributed, "tpu_chips_visible", lambda: True)
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kwargs: calls.append(kwargs))
    assert distributed.initialize("auto", env={}) is True
    assert calls == [{}]
