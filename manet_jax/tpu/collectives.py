"""The collectives of a compiled program, read from its HLO text (`compiled.as_text()`).

XLA prints the optimised, scheduled program of one device. A collective is an instruction such as
`%all-reduce.3 = (bf16[512,1024]{...}, f32[10]{...}) all-reduce(%fusion, %fusion.4), replica_groups=...`:
many gradients are combined into one tuple, operands are named, not shaped, and async pairs are
printed as `-start` and `-done`. Across slices (multi-slice) the data-center network's part of an
all-reduce is not a collective but `send`/`recv` host transfers tagged for the megascale runtime.
Each instruction counts once, also inside a loop body (MA-Net's steps have no loops).
"""

from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DCN = "dcn-all-reduce"  # the megascale sends of a multi-slice all-reduce
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}

_SENT = {"all-reduce": lambda n: 2 * (n - 1) / n, "all-gather": lambda n: (n - 1) / n,
         "reduce-scatter": lambda n: (n - 1) / n, "all-to-all": lambda n: (n - 1) / n}  # of a buffer
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z\d\-]*)\((.*)$")


@dataclasses.dataclass
class Collective:
    """The instructions of one kind: how many, the bytes of the buffers they reduce or gather
    (for each, the larger of its operands and its result), the bytes each device sends for them
    at best (all-reduce: 2 (n - 1) / n of the buffer; gather, scatter, all-to-all: (n - 1) / n;
    across slices: its share), and their group sizes (none across slices)."""

    count: int = 0
    bytes: int = 0
    sent_bytes: float = 0.0
    group_sizes: dict[int, int] = dataclasses.field(default_factory=dict)  # devices per group -> instructions


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape, an array `bf16[8,128]{1,0:T(8,128)}` or a tuple of them."""
    return sum(DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
               for dtype, dims in _ARRAY.findall(shape))


def group_size(attributes: str, num_devices: int) -> int:
    """Devices per replica group, from `replica_groups=` in any of XLA's spellings: the mesh form
    `mesh['axis_0'=16,'axis_1'=1] {'axis_0'}`, iota `[2,8]<=[16]`, explicit `{{0,1,2,3},...}`, or
    `{}` (all devices)."""
    if match := re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes):
        sizes = {key.strip("' "): int(value) for key, value in (p.split("=") for p in match.group(1).split(","))}
        return math.prod(sizes[axis.strip("' ")] for axis in match.group(2).split(",") if axis.strip())
    if match := re.search(r"replica_groups=\[\d+,(\d+)\]<=", attributes):
        return int(match.group(1))
    if match := re.search(r"replica_groups=\{\{([^}]*)\}", attributes):
        return len(match.group(1).split(","))
    return num_devices


def collectives(hlo_text: str, num_devices: int) -> dict[str, Collective]:
    """Kind (KINDS, and DCN for multi-slice programs) -> its Collective, for the kinds present."""
    shapes: dict[str, str] = {}
    instructions = []
    for line in hlo_text.splitlines():
        if match := _INSTRUCTION.match(line):
            name, shape, opcode, rest = match.groups()
            shapes[name] = shape
            instructions.append((shape, opcode, rest))
    found: dict[str, Collective] = {}
    for shape, opcode, rest in instructions:
        operands = [shape_bytes(shapes.get(name, "")) for name in _operand_names(rest)]
        if opcode == "send" and '_xla_megascale_transfer_type="ALL_REDUCE"' in rest:
            kind, size, group = DCN, operands[0], None
        elif opcode.removesuffix("-start") in KINDS:
            kind, result = opcode.removesuffix("-start"), shape_bytes(shape)
            if opcode.endswith("-start") and shape.startswith("(("):  # (operands, results, ...): keep the results
                result -= sum(operands)
            size, group = max(result, sum(operands)), group_size(rest, num_devices)
        else:
            continue
        entry = found.setdefault(kind, Collective())
        entry.count += 1
        entry.bytes += size
        entry.sent_bytes += size * _SENT.get(kind, lambda n: 1.0)(group)
        if group is not None:
            entry.group_sizes[group] = entry.group_sizes.get(group, 0) + 1
    return found


def _operand_names(rest: str) -> list[str]:
    """The operands' names in the text after an instruction's opening parenthesis."""
    depth, end = 0, len(rest)
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            end = index
            break
    return re.findall(r"%([\w.\-]+)", re.sub(r"/\*.*?\*/", "", rest[:end]))
