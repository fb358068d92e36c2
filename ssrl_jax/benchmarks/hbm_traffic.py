"""HBM bytes a compiled TPU program moves, read from its HLO text.

XLA's `cost_analysis()["bytes accessed"]` counts every operand and result of every op,
whichever memory holds it. On TPU, XLA's memory-space assignment prefetches weights and
other buffers into on-chip memory (`copy-start` into memory space S(1)) and the consumers
then read them there, so a weight read once from HBM is counted three times (read, written
to S(1), read from S(1)). A decode step, which streams every weight once per token, is
bound by HBM, so that count would triple its cost. Here, instead, per op outside fusion
bodies:

* only buffers in HBM count (a layout with no `S(n)`, n >= 1);
* a `dynamic-update-slice` or a `scatter`, alone or as a fusion's root (or an element of
  a root tuple) over a fusion parameter, updates its buffer in place: only the update is
  written (the KV cache's new slot of each row), and a scatter reads its indices;
* a fusion parameter that the fusion only slices (`dynamic-slice`, `slice`, `gather`:
  one layer of stacked weights, the embedding rows of the batch's tokens) costs its
  slices, not the whole array;
* `copy-start` reads its source (the destination is the on-chip copy); `slice-start`
  reads its slice (a chunk of a weight streamed on chip);
* bookkeeping ops (parameters, tuples, bitcasts, the `-done` halves of async ops) and
  control flow (`while`, `conditional`, `call`: their computations are counted instead)
  move nothing.

Like XLA's cost analysis, each computation is counted once, so a `while` body counts once
whatever its trip count (the roofline multiplies). Checked against the one quantity known
exactly, weight streaming (tests/benchmarks/test_hbm_traffic.py).
"""

from __future__ import annotations

import dataclasses
import math
import re

from ssrl_jax.benchmarks.hlo import DTYPE_BYTES, computations

_ARRAY = re.compile(r"\b(pred|[su](?:8|16|32|64)|f16|bf16|f32|f64)\[([\d,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_FUSED = re.compile(r"calls=%?([\w.\-]+)")
_APPLIED = re.compile(r"to_apply=%?([\w.\-]+)")
MOVES_NOTHING = frozenset((
    "parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
    "opt-barrier", "partition-id", "replica-id", "iota", "while", "conditional", "call",
    "copy-done", "all-gather-done", "all-reduce-done", "collective-permute-done",
    "async-done", "send-done", "recv-done", "slice-done"))
SLICES = frozenset(("dynamic-slice", "slice", "gather"))
# In-place updates: opcode -> the operand index of the update.
IN_PLACE = {"dynamic-update-slice": 1, "scatter": 2}


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    result: str          # the result's type text: "bf16[8,128]{1,0:T(8,128)}" or a tuple
    opcode: str
    operands: tuple[str, ...]
    operand_text: str    # what is between the parentheses: a parameter's number
    attributes: str
    is_root: bool


def hbm_size(type_text: str) -> int:
    """Bytes of the arrays in a type text that live in HBM."""
    return sum(_size(dtype, dims) for dtype, dims, layout in _ARRAY.findall(type_text)
               if not (layout and _ON_CHIP.search(layout)))


def _size(dtype: str, dims: str) -> int:
    return math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BYTES[dtype]


def _tuple_elements(type_text: str) -> list[str]:
    """The top-level elements of a tuple type text."""
    depth, start, out = 0, 1, []
    for i, char in enumerate(type_text):
        depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(char, 0)
        if (char == "," and depth == 1) or (char == ")" and depth == 0):
            out.append(type_text[start:i].strip())
            start = i + 1
    return out


def parse(lines: list[str]) -> list[Instruction]:
    found = []
    for line in lines:
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        root, name, result, opcode, rest = match.groups()
        depth, end = 1, 0
        while end < len(rest) and depth:  # the operand list ends at its closing paren
            depth += {"(": 1, ")": -1}.get(rest[end], 0)
            end += 1
        operand_text = rest[:end - 1]
        found.append(Instruction(name, result, opcode,
                                 tuple(re.findall(r"%([\w.\-]+)", operand_text)),
                                 operand_text, rest[end:], bool(root)))
    return found


def _fusion_traffic(body: list[Instruction], operand_sizes: list[int], result_size: int
                    ) -> int:
    """HBM bytes of one fusion: its operands as read (whole, sliced, or updated in place)
    plus its results (only the update of each in-place dynamic-update-slice output)."""
    by_name = {i.name: i for i in body}
    root = next(i for i in body if i.is_root)
    users: dict[str, list[Instruction]] = {}
    for instruction in body:
        for operand in instruction.operands:
            users.setdefault(operand, []).append(instruction)
    outputs = [by_name[o] for o in root.operands] if root.opcode == "tuple" else [root]
    updated = {o.operands[0]: o for o in outputs
               if o.opcode in IN_PLACE and len(o.operands) > IN_PLACE[o.opcode]}
    reads = list(operand_sizes)
    for instruction in body:
        if instruction.opcode != "parameter":
            continue
        index = int(instruction.operand_text)
        used_by = users.get(instruction.name, [])
        if index >= len(reads):
            continue
        if used_by and all(u.opcode in SLICES and u.operands[0] == instruction.name
                           for u in used_by):
            reads[index] = sum(hbm_size(u.result) for u in used_by)
        elif instruction.name in updated and len(used_by) == 1:
            reads[index] = 0
    written = 0
    for output in outputs:
        if output in updated.values() and output.operands[0] in by_name and \
                by_name[output.operands[0]].opcode == "parameter":
            written += hbm_size(by_name[output.operands[IN_PLACE[output.opcode]]].result)
        else:
            written += hbm_size(output.result)
    return sum(reads) + (written if updated else result_size)


def hbm_bytes(hlo_text: str) -> float:
    """The HBM bytes a compiled program moves (see the module docstring), each computation
    counted once."""
    comps = {name: parse(lines) for name, lines in computations(hlo_text).items()}
    result_of = {i.name: i.result for body in comps.values() for i in body}
    inner = set()
    for body in comps.values():
        for instruction in body:
            if instruction.opcode == "fusion":
                inner.update(_FUSED.findall(instruction.attributes))
            inner.update(_APPLIED.findall(instruction.attributes))
    total = 0
    for name, body in comps.items():
        if name in inner:
            continue
        for instruction in body:
            if instruction.opcode in MOVES_NOTHING:
                continue
            operands = [hbm_size(result_of.get(o, "")) for o in instruction.operands]
            result = hbm_size(instruction.result)
            if instruction.opcode == "fusion":
                fused = comps[_FUSED.search(instruction.attributes).group(1)]
                total += _fusion_traffic(fused, operands, result)
            elif instruction.opcode == "dynamic-update-slice":
                total += 2 * (operands[1] if len(operands) > 1 else 0)
            elif instruction.opcode == "scatter":
                total += sum(operands[1:2]) + 2 * sum(operands[2:3])
            elif instruction.opcode == "copy-start":
                destination = _tuple_elements(instruction.result)[0]
                total += operands[0] + hbm_size(destination)
            elif instruction.opcode == "slice-start":
                chunk = _tuple_elements(instruction.result)[1]
                total += sum(_size(d, s) for d, s, _ in _ARRAY.findall(chunk)) + hbm_size(chunk)
            elif instruction.opcode in SLICES:
                total += 2 * result + sum(operands[1:])
            else:
                total += sum(operands) + result
    return float(total)
