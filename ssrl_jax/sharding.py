"""Device mesh and the one table that maps logical axis names to mesh axes.

Every parameter and activation names its axes logically (`"embed"`, `"q_heads"`,
`"batch"`, ...). `ShardingRules` maps each logical name to zero or more mesh axes
(`data`, `fsdp`, `tensor`), so changing a run's parallelism is a config edit. Every name
must be listed (`()` to replicate it); an unknown name is an error, not a silent
replication. `None` in a logical-axes tuple means replicated.
A mesh axis that does not divide a dimension is dropped for that array (the
dimension is replicated instead), so e.g. 2 KV heads still work with tensor=4.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
LogicalAxes = tuple[str | None, ...]

# Logical axis -> mesh axes. Parameters are sharded over fsdp (ZeRO-3 style) on
# their model dimension and over tensor on heads / mlp / vocab; activations are
# sharded over data and fsdp on batch and over tensor on heads.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("q_heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("act_heads", ("tensor",)),
    ("act_kv_heads", ("tensor",)),
    ("act_mlp", ("tensor",)),
    ("act_vocab", ("tensor",)),
    # Replicated: the scanned layer axis, head_dim and norm scales stay whole.
    ("layers", ()),
    ("head_dim", ()),
    ("norm", ()),
)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Maps logical axis names to mesh axis names; `None` axes are replicated."""

    rules: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_RULES

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Sequence[str] | str | None]) -> "ShardingRules":
        rules = []
        for logical, mesh_axes in mapping.items():
            if mesh_axes is None:
                mesh_axes = ()
            elif isinstance(mesh_axes, str):
                mesh_axes = (mesh_axes,)
            unknown = [a for a in mesh_axes if a not in MESH_AXES]
            if unknown:
                raise ValueError(f"sharding rule {logical!r}: unknown mesh axes {unknown}; "
                                 f"expected a subset of {MESH_AXES}")
            rules.append((logical, tuple(mesh_axes)))
        return cls(tuple(rules))

    def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
        if logical is None:
            return ()
        for name, axes in self.rules:
            if name == logical:
                return axes
        raise ValueError(f"sharding rules: unknown logical axis {logical!r}; known: "
                         f"{tuple(name for name, _ in self.rules)} (map it to () to replicate it)")

    def spec(self, logical_axes: LogicalAxes, shape: Sequence[int] | None = None,
             mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None) -> PartitionSpec:
        """The PartitionSpec of an array with these logical axes.

        With `shape` and `mesh`, mesh axes of size 1, or that do not divide the
        dimension, are left out; a mesh axis is used at most once per array.
        """
        used: set[str] = set()
        entries = []
        for dim, logical in enumerate(logical_axes):
            axes = []
            size = 1
            for axis in self.mesh_axes(logical):
                if axis in used:
                    continue
                if mesh is not None:
                    if axis not in mesh.shape:
                        continue
                    axis_size = mesh.shape[axis]
                    if axis_size == 1:
                        continue
                    if shape is not None and shape[dim] % (size * axis_size):
                        continue
                    size *= axis_size
                axes.append(axis)
                used.add(axis)
            entries.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
        return PartitionSpec(*entries)

    def sharding(self, logical_axes: LogicalAxes, shape: Sequence[int],
                 mesh: jax.sharding.Mesh) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical_axes, shape, mesh))

    def decode_layout(self) -> "ShardingRules":
        """The rules of the rollout's weight copy: parameter dimensions keep their `tensor`
        sharding only (replicated over data and fsdp), so the decode loop multiplies by
        weights every device already holds and gathers none; activations (`batch`,
        `act_*`) are laid out as in training, rows over data × fsdp."""
        return ShardingRules(tuple(
            (name, axes if _is_activation(name) else tuple(a for a in axes if a == "tensor"))
            for name, axes in self.rules))


def _is_activation(logical: str) -> bool:
    return logical == "batch" or logical.startswith("act_")


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None, *,
              num_slices: int = 1, allow_split_physical_axes: bool = False
              ) -> jax.sharding.Mesh:
    """A topology-aware mesh over `data`, `fsdp`, `tensor` (missing axes 1; one may be -1).

    Devices are laid out by JAX's mesh utilities, so on a TPU slice each axis follows the
    physical torus (an axis may span hosts: inside a slice every chip is on ICI). With
    `num_slices > 1` the run spans several slices and the `data` axis is split across
    them over DCN (a hybrid mesh); the other axes stay inside a slice. A mesh that cannot
    be laid out is refused with the axis and the topology named.

    Axis types are Auto: shardings propagate through the program from the parameters,
    inputs and the constraints placed on activations.
    """
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
        raise ValueError(f"mesh: unknown axes {unknown}; expected {MESH_AXES}")
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(axes.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(axes)}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(axes)}")
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices cannot be split as {dict(axes)}")
        sizes[sizes.index(-1)] = len(devices) // known
    shape = dict(zip(MESH_AXES, sizes))
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh: {shape} needs {math.prod(sizes)} devices, have {len(devices)}")
    if num_slices < 1 or sizes[0] % num_slices:
        raise ValueError(f"mesh: data={sizes[0]} must be a multiple of num_slices={num_slices} "
                         "(the data axis is the one split across slices)")
    try:
        if num_slices > 1:
            ici = (sizes[0] // num_slices, *sizes[1:])
            grid = mesh_utils.create_hybrid_device_mesh(
                ici, (num_slices, 1, 1), devices,
                allow_split_physical_axes=allow_split_physical_axes)
        else:
            grid = mesh_utils.create_device_mesh(
                sizes, devices, allow_split_physical_axes=allow_split_physical_axes)
    except (NotImplementedError, ValueError, AssertionError) as error:
        raise ValueError(_layout_error(shape, devices, num_slices, error)) from error
    return jax.sharding.Mesh(grid, MESH_AXES,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def describe_topology(devices: Sequence[jax.Device]) -> str:
    """E.g. '64 TPU v5p devices, physical 4x4x4, 16 hosts, 1 slice'."""
    first = devices[0]
    words = [f"{len(devices)} {first.device_kind} devices"]
    coords = [getattr(d, "coords", None) for d in devices]
    if all(c is not None for c in coords):
        words.append("physical " + "x".join(str(max(c[i] for c in coords) + 1)
                                            for i in range(len(coords[0]))))
    words.append(f"{len({d.process_index for d in devices})} hosts")
    words.append(f"{len({getattr(d, 'slice_index', 0) for d in devices})} slice(s)")
    return ", ".join(words)


def _layout_error(shape: dict[str, int], devices: Sequence[jax.Device], num_slices: int,
                  error: Exception) -> str:
    found = re.search(r"logical_axis_index (\d+)", str(error))
    axis = f"axis {MESH_AXES[int(found.group(1))]!r}" if found else "an axis"
    return (f"mesh {shape} (num_slices={num_slices}): {axis} cannot be laid out on "
            f"{describe_topology(devices)}. Each axis inside a slice must be a product of "
            f"physical axis sizes; change config.mesh, or set "
            f"config.mesh_layout.allow_split_physical_axes=True. ({error})")


def constrain(x: jax.Array, logical_axes: LogicalAxes, rules: ShardingRules | None) -> jax.Array:
    """Pins an activation's sharding inside a jitted function when a mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if rules is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, rules.spec(logical_axes, x.shape, mesh))
