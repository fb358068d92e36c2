"""Per-host input on real TPU topologies, compiled-for with libtpu and no chip.

`jax.experimental.topologies` gives the devices of a real slice (v5p-64, v5p-128,
v6e-64, two v5p slices) with their hosts and physical coordinates. On them the
project's mesh puts a tensor group on two hosts, so a host holds separate blocks of
the batch: the rows each host feeds must be read off the sharding. Needs the `tpu`
extra (libtpu); CI installs it, elsewhere the module is skipped with the reason.
"""

import importlib.util
import os

import numpy as np
import pytest

if importlib.util.find_spec("libtpu") is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI must install libtpu (pip install -e '.[tpu]') for the TPU "
                           "topology tests")
    pytest.skip("libtpu is not installed (pip install -e '.[tpu]')", allow_module_level=True)
# Compiling for a topology uses no chip: other processes (a parallel test worker, a
# `bench memory --topology` run) may hold libtpu at the same time.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from ssrl_jax import train_config  # noqa: E402
from ssrl_jax.data.train_batches import process_rows  # noqa: E402
from ssrl_jax.rl.scoring import scoring_spec  # noqa: E402
from ssrl_jax.sharding import ShardingRules, make_mesh  # noqa: E402

RULES = ShardingRules()
# (topology, slices, mesh, layout): the shipped configs' meshes on the chips they name.
CASES = {
    "v5p-64": ("v5p:2x4x4", 1, {"fsdp": 8, "tensor": 4}, {}),
    "v5p-128": ("v5p:4x4x4", 1, {"fsdp": 16, "tensor": 4}, {}),
    "v6e-64": ("v6e:8x8", 1, {"fsdp": 8, "tensor": 8}, {}),
    "v6e-64 split": ("v6e:8x8", 1, {"fsdp": 16, "tensor": 4},
                     {"allow_split_physical_axes": True}),
    "2 x v5p-16": ("v5p:2x2x2", 2, {"data": 2, "fsdp": 2, "tensor": 4}, {}),
}


def _mesh(case):
    name, slices, axes, layout = CASES[case]
    devices = topologies.get_topology_desc(platform="tpu", topology_name=name,
                                           num_slices=slices).devices
    return make_mesh(axes, devices, num_slices=slices, **layout)


def _rows_by_formula(mesh, num_rows):
    """Independent of the sharding machinery: device at mesh position (d, f, t) holds
    block d * F + f of the batch (batch is split over data then fsdp)."""
    blocks = mesh.shape["data"] * mesh.shape["fsdp"]
    size = num_rows // blocks
    held: dict[int, set[int]] = {}
    for (d, f, _), device in np.ndenumerate(mesh.devices):
        block = d * mesh.shape["fsdp"] + f
        held.setdefault(device.process_index, set()).update(range(block * size,
                                                                  (block + 1) * size))
    return held


@pytest.fixture(scope="module", params=sorted(CASES))
def mesh(request):
    return _mesh(request.param)


def test_each_host_feeds_exactly_the_rows_its_devices_hold(mesh):
    num_rows = train_config.default_config().batch_size  # the papers' 256 prompts
    sharding = RULES.sharding(("batch", None), (num_rows, 8), mesh)
    expected = _rows_by_formula(mesh, num_rows)
    hosts = sorted({d.process_index for d in mesh.devices.flat})
    assert hosts == sorted(expected)
    for host in hosts:
        assert process_rows(sharding, num_rows, host).tolist() == sorted(expected[host])
    assert set().union(*expected.values()) == set(range(num_rows))


def test_each_response_is_scored_by_exactly_one_host_and_one_that_holds_it(mesh):
    prompts, group = 256, 5
    responses = prompts * group
    spec = scoring_spec(responses, mesh, RULES)
    scored_by = NamedSharding(mesh, PartitionSpec(spec)).devices_indices_map((responses,))
    owners = np.zeros(responses, np.int64)
    host_of = {}
    for device, index in scored_by.items():
        rows = np.arange(responses)[index[0]]
        owners[rows] += 1
        host_of.update({int(r): device.process_index for r in rows})
    assert (owners == 1).all()
    held = RULES.sharding(("batch", None), (responses, 8), mesh)
    for host in {d.process_index for d in mesh.devices.flat}:
        mine = {r for r, h in host_of.items() if h == host}
        assert mine <= set(process_rows(held, responses, host).tolist())


def test_v5p_64_tensor_groups_span_two_hosts():
    """What the per-host input has to cope with: host 0 holds fsdp blocks 0 and 4."""
    mesh = _mesh("v5p-64")
    sharding = RULES.sharding(("batch", None), (256, 8), mesh)
    rows = process_rows(sharding, 256, 0)
    assert rows.tolist() == list(range(0, 32)) + list(range(128, 160))


def test_a_mesh_that_does_not_fit_the_torus_names_the_axis_and_topology():
    devices = topologies.get_topology_desc(platform="tpu", topology_name="v6e:8x8").devices
    with pytest.raises(ValueError, match=r"axis 'tensor' cannot be laid out on 64 .*8x8"):
        make_mesh({"fsdp": 16, "tensor": 4}, devices)
