"""Reading a compiled program's HLO text: collectives, the loops they run in, splash kernels.

The memory plan asks one question of the compiled train step: does the decode loop
gather weights (FSDP all-gathers repeated at every decode step) or were they resharded
once before it? XLA keeps the `jax.named_scope` of each op in its metadata
(`op_name="jit(train_step)/decode_loop/while"`), so the loop's `while` is found by
name, and everything it runs is the set of computations reachable from its body and
condition (nested loops, fusions, calls, async collectives).

The roofline plan asks two more: how many bytes a chip sends over ICI in a program's
collectives (`transfers`), and how many FLOPs the splash attention kernels do, which XLA's
cost analysis cannot see inside a Mosaic custom call (`splash_flops`); and whether the
decode loop reads the cache through the paged attention kernel (`kernel_calls`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Iterable, Sequence

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_CALLED = re.compile(r"\b(?:body|condition|calls|to_apply|true_computation|false_computation)"
                     r"=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|f8\w*)\[([\d,]*)\]")
_OPCODE = re.compile(r"=\s*(?:\([^=]*?\)|\S+)\s+([\w\-]+)\(")
GATHER_OPCODES = ("all-gather", "all-gather-start")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


@dataclasses.dataclass(frozen=True)
class Collective:
    computation: str
    opcode: str
    dtype: str
    shape: tuple[int, ...]
    op_name: str

    @property
    def bytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES.get(self.dtype, 1)


def computations(hlo_text: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines."""
    out: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if current is None:
            found = _HEADER.match(line)
            if found and not line.startswith(" "):
                current = found.group(1)
                out[current] = []
        elif line.rstrip() == "}":
            # Only a bare brace closes a computation: a custom call's backend_config can
            # span lines, one of which starts with "}}, metadata=...".
            current = None
        else:
            out[current].append(line)
    return out


def _called(line: str) -> list[str]:
    names = _CALLED.findall(line)
    for group in _BRANCHES.findall(line):
        names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
    return names


def loop_computations(comps: dict[str, list[str]], scope: str) -> set[str]:
    """Every computation a `while` whose op_name ends in `{scope}/while` runs."""
    roots = []
    for lines in comps.values():
        for line in lines:
            name = _OP_NAME.search(line)
            if " while(" in line and name and name.group(1).endswith(f"{scope}/while"):
                roots += _called(line)
    seen: set[str] = set()
    stack = [r for r in roots if r in comps]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack += [c for line in comps[name] for c in _called(line) if c in comps]
    return seen


def kernel_calls(comps: dict[str, list[str]], names: Iterable[str], kernel: str) -> int:
    """How many Mosaic custom calls of the Pallas kernel traced as `jit(kernel)` (the
    name JAX's kernel wrapper is jitted under, kept in the op_name) these computations hold."""
    scope = f"jit({kernel})/"
    return sum(1 for name in names for line in comps.get(name, ())
               if 'custom_call_target="tpu_custom_call"' in line and scope in line)


def gathers_in(comps: dict[str, list[str]], names: Iterable[str]) -> list[Collective]:
    """The all-gathers (sync, or the start of an async one) in these computations; the shape
    is the gathered (output) array's."""
    found = []
    for name in sorted(names):
        for line in comps[name]:
            opcode = _OPCODE.search(line)
            if not opcode or opcode.group(1) not in GATHER_OPCODES:
                continue
            result = line.split("=", 1)[1].split(opcode.group(1) + "(", 1)[0]
            arrays = _ARRAY.findall(result)
            if not arrays:
                continue
            dtype, dims = arrays[-1]  # an async start's result is (operand, output, ...)
            op_name = _OP_NAME.search(line)
            found.append(Collective(name, opcode.group(1), dtype,
                                    tuple(int(d) for d in dims.split(",") if d),
                                    op_name.group(1) if op_name else ""))
    return found


def weight_shapes(shapes: Iterable[Sequence[int]], axis_sizes: Sequence[int]) -> set[tuple]:
    """Every shape a piece of these weights can take, squeezed of 1s: whole, one layer of a
    stacked array, and each dimension divided by any product of mesh axis sizes."""
    factors = sorted({math.prod(c) for r in range(len(axis_sizes) + 1)
                      for c in itertools.combinations(axis_sizes, r)})
    out = set()
    for shape in shapes:
        for variant in (tuple(shape), tuple(shape[1:])):
            options = [[d // f for f in factors if d % f == 0] for d in variant]
            for combo in itertools.product(*options):
                out.add(tuple(d for d in combo if d != 1))
    return out


def is_weight(collective: Collective, shapes: set[tuple]) -> bool:
    """Whether a gathered array has the shape of (a piece of) a weight matrix. Vectors are
    not counted: a norm scale and one row's hidden state can have the same shape."""
    squeezed = tuple(d for d in collective.shape if d != 1)
    return len(squeezed) >= 2 and squeezed in shapes


# Collectives a chip takes part in, and the bytes it moves over ICI for each (ring
# algorithms, group size g): an all-gather of an output of X bytes receives X (g-1)/g; a
# reduce-scatter to X bytes sends X (g-1); an all-reduce of X bytes sends 2 X (g-1)/g (a
# reduce-scatter then an all-gather); an all-to-all of X bytes sends X (g-1)/g; a
# collective-permute sends X.
COLLECTIVE_OPCODES = ("all-gather", "all-gather-start", "all-reduce", "all-reduce-start",
                      "reduce-scatter", "all-to-all", "collective-permute",
                      "collective-permute-start")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=")
_LISTED_GROUPS = re.compile(r"replica_groups=\{\{([\d,]*)\}")


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One collective of a compiled program: its (largest) result array and group size."""

    opcode: str
    dtype: str
    shape: tuple[int, ...]
    group_size: int

    @property
    def ici_bytes(self) -> float:
        size, g = math.prod(self.shape) * DTYPE_BYTES.get(self.dtype, 1), self.group_size
        kind = self.opcode.removesuffix("-start")
        if kind == "collective-permute":
            return float(size)
        if g <= 1:
            return 0.0
        if kind == "reduce-scatter":
            return float(size * (g - 1))
        if kind == "all-reduce":
            return 2.0 * size * (g - 1) / g
        return size * (g - 1) / g


def _group_size(line: str, num_devices: int) -> int:
    iota = _IOTA_GROUPS.search(line)
    if iota:
        return int(iota.group(2))
    listed = _LISTED_GROUPS.search(line)
    if listed:
        return len([d for d in listed.group(1).split(",") if d])
    return num_devices  # `replica_groups={}`: every device


def transfers(comps: dict[str, list[str]], num_devices: int) -> list[Transfer]:
    """Every collective in these computations, each op once (a loop body's once, like XLA's
    cost analysis); the async `-done` halves are not counted again."""
    found = []
    for name in sorted(comps):
        for line in comps[name]:
            opcode = _OPCODE.search(line)
            if not opcode or opcode.group(1) not in COLLECTIVE_OPCODES:
                continue
            result = line.split("=", 1)[1].split(opcode.group(1) + "(", 1)[0]
            arrays = [(dtype, tuple(int(d) for d in dims.split(",") if d))
                      for dtype, dims in _ARRAY.findall(result)]
            if not arrays:
                continue
            dtype, shape = max(arrays, key=lambda a: math.prod(a[1]) * DTYPE_BYTES.get(a[0], 1))
            found.append(Transfer(opcode.group(1), dtype, shape, _group_size(line, num_devices)))
    return found


# Splash attention's Mosaic kernels, by the name JAX gives their custom call, and the FLOPs
# of one call per element of its [..., T, Dh] output (times T): causal attention computes
# half of the T x T score matrix. Forward: QK^T and PV (2 matmuls, 2 FLOPs each per
# multiply-add) -> 2 T; dq: QK^T, dO V^T, dS K -> 3 T; dkv (output per KV head, q_per_kv
# query heads each): QK^T, dO V^T, P^T dO, dS^T Q -> 4 T q_per_kv.
_SPLASH_KERNELS = (("splash_mha_fwd", 2), ("splash_mha_dq", 3), ("splash_mha_dkv", 4))
_INSTRUCTION_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")


def splash_flops(comps: dict[str, list[str]], q_per_kv: int, head_dim: int) -> float:
    """FLOPs of the splash attention kernels in these computations, which XLA's cost
    analysis does not see (a custom call is opaque to it). A kernel's output is its
    result of rank >= 3 ending in head_dim (not the scratch or the softmax statistics)."""
    total = 0.0
    for lines in comps.values():
        for line in lines:
            if 'custom_call_target="tpu_custom_call"' not in line:
                continue
            name = _INSTRUCTION_NAME.match(line)
            factor = next((f for prefix, f in _SPLASH_KERNELS
                           if name and name.group(1).startswith(prefix)), None)
            if factor is None:
                continue
            result = line.split("=", 1)[1].split("custom-call(", 1)[0]
            outputs = [shape for shape in (tuple(int(d) for d in dims.split(",") if d)
                                           for _, dims in _ARRAY.findall(result))
                       if len(shape) >= 3 and shape[-1] == head_dim]
            if not outputs:
                raise ValueError(f"splash kernel {name.group(1)}: no [..., T, {head_dim}] "
                                 f"output in {result.strip()[:200]}")
            out = outputs[0]
            total += factor * math.prod(out) * out[-2] * (q_per_kv if factor == 4 else 1)
    return total
