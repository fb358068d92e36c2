"""Reading a compiled program's HLO text: which collectives run inside a named loop.

The memory plan asks one question of the compiled train step: does the decode loop
gather weights (FSDP all-gathers repeated at every decode step) or were they resharded
once before it? XLA keeps the `jax.named_scope` of each op in its metadata
(`op_name="jit(train_step)/decode_loop/while"`), so the loop's `while` is found by
name, and everything it runs is the set of computations reachable from its body and
condition (nested loops, fusions, calls, async collectives).
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
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
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
        return math.prod(self.shape) * _BYTES.get(self.dtype, 1)


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
        elif line.startswith("}"):
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
