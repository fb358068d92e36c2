"""Integrity checks on pytrees of arrays: leaf names, finiteness and bit-exact checksums.

The checksum of an array is the sum, modulo 2**32, of its elements' bit patterns read
as unsigned integers. Integer addition is exact and order-free, so the value does not
depend on how the array is sharded or reduced, and any single flipped bit changes it
(by ±2**k, never 0 mod 2**32). It costs one pass over the parameters on device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def leaf_name(path: tuple) -> str:
    """'layers/wq' for the key path of a nested dict leaf."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def named_leaves(tree: Any) -> dict[str, Any]:
    return {leaf_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _checksum(x: jax.Array) -> jax.Array:
    """Scalar uint32: the sum of `x`'s bit patterns modulo 2**32 (any shape)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    bits = jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize])
    return jnp.sum(bits.astype(jnp.uint32), dtype=jnp.uint32)


def _dtype(x: Any) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(_dtype(x), jnp.inexact)


def _all_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


_checksums = jax.jit(lambda leaves: [_checksum(x) for x in leaves])
_finite = jax.jit(lambda leaves: [_all_finite(x) for x in leaves])


def checksums(tree: Any) -> dict[str, list]:
    """{leaf name: [dtype name, checksum]} for every array leaf of `tree`."""
    leaves = named_leaves(tree)
    values = jax.device_get(_checksums(list(leaves.values())))
    return {name: [str(_dtype(leaf)), int(value)]
            for (name, leaf), value in zip(leaves.items(), values)}


def checksum_mismatches(tree: Any, expected: dict[str, list]) -> list[str]:
    """Names of the leaves whose checksum differs from `expected` (same dtype only).

    A leaf missing from `expected`, or stored in another dtype, is not compared.
    """
    got = checksums(tree)
    return [name for name, (dtype, value) in got.items()
            if name in expected and expected[name][0] == dtype and expected[name][1] != value]


def non_finite_leaves(tree: Any) -> list[str]:
    """Names of the floating-point leaves holding a NaN or an infinity."""
    leaves = {name: leaf for name, leaf in named_leaves(tree).items() if _is_float(leaf)}
    flags = jax.device_get(_finite(list(leaves.values())))
    return [name for name, ok in zip(leaves, flags) if not bool(np.asarray(ok))]
