"""The plan of imports, in layers: the model, the mesh, the data and the model bundle at the
bottom; conversion, inference, training and the tools above them.

Units are manet_jax's sub-packages and top-level modules (`manet_jax` is the package's own
`__init__.py`); an arrow is an import of one unit by another, read from the source with `ast`,
lazy imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

PACKAGE = Path(__file__).resolve().parents[1] / "manet_jax"

# The layers, bottom first: a unit imports only units of lower layers. Libraries sit as low as
# their imports allow; the tools (`python -m manet_jax.<tool>`) sit on top.
LAYERS: list[tuple[str, ...]] = [
    ("manet_jax", "errors", "accelerators"),  # the version, the errors users can fix, the chips' data sheet
    ("storage",),  # local paths and gs:// buckets: epath on gcsfs, a bucket's conditional writes, whole outputs
    ("cli", "mesh", "models"),  # the tools' command line, the device mesh, the Flax model
    ("data",),  # datasets, their canonical labels and the host input pipeline
    ("bundle",),  # a model on disk: its variables and header (its classes in data.labels' order)
    ("forward", "convert"),  # the one forward pass; PyTorch <-> Flax weights
    ("inference", "reference_model", "training"),  # prediction and export; the official model; the trainer
    ("tpu",),  # Cloud TPU slices and the trainer's steps compiled for them
    ("train", "evaluate", "predict", "serve", "export", "compare", "benchmark", "report", "tpu_plan",
     "input_benchmark", "face_template"),  # the tools
]


class Import(NamedTuple):
    path: Path  # the importing file
    line: int
    source: str  # the importing unit
    name: str  # the imported module
    target: str  # its unit

    def __str__(self) -> str:
        where = f"manet_jax/{self.path.relative_to(PACKAGE)}:{self.line}"
        return f"{where} ({self.source}) imports {self.name} ({self.target})"


def module_of(path: Path) -> str:
    """manet_jax/training/loop.py -> 'manet_jax.training.loop'; manet_jax/data/__init__.py -> 'manet_jax.data'."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """'manet_jax.training.loop' -> 'training'; 'manet_jax.bundle' -> 'bundle'; 'manet_jax' -> 'manet_jax'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def units() -> set[str]:
    """Every unit of the package."""
    return {unit(module_of(path)) for path in PACKAGE.rglob("*.py")}


def imports() -> list[Import]:
    """Every import of one unit by another."""
    found, known = [], units()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_of(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: level 1 is the importing module's package, 2 its parent
                    anchor = package.rsplit(".", node.level - 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                names = [f"{base}.{a.name}" for a in node.names] if base == "manet_jax" else [base]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] != "manet_jax":
                    continue
                target = unit(name) if unit(name) in known else "manet_jax"  # `from manet_jax import __version__`
                if target != unit(module):
                    found.append(Import(path, node.lineno, unit(module), name, target))
    return found


def test_every_unit_is_in_exactly_one_layer():
    placed = [u for layer in LAYERS for u in layer]
    assert sorted(u for u in set(placed) if placed.count(u) > 1) == [], "in more than one layer"
    assert sorted(units() - set(placed)) == [], "in no layer of LAYERS: place it"
    assert sorted(set(placed) - units()) == [], "in LAYERS but not in the package"


def test_every_import_goes_down_the_layers():
    layer = {u: i for i, names in enumerate(LAYERS) for u in names}
    found = imports()
    assert ("train", "training") in {(i.source, i.target) for i in found}  # the imports are read at all
    upward = [f"{i}: layer {layer[i.source]} -> {layer.get(i.target)}" for i in found
              if i.source in layer and layer.get(i.target, len(LAYERS)) >= layer[i.source]]
    assert upward == [], "imports at or above the importing unit's layer:\n" + "\n".join(upward)


def test_the_plan_has_no_circles():
    plan: dict[str, set[str]] = {}
    for i in imports():
        plan.setdefault(i.source, set()).add(i.target)

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt}))
                   for nxt in plan.get(start, ()))

    assert [u for u in plan if reaches(u, u, {u})] == []
