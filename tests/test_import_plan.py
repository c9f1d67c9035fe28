"""The plan of imports, in layers: the model, the mesh, the data and the model bundle at the
bottom; conversion, inference, training and the tools above them; and inside each sub-package,
its modules in layers too.

Units are manet_jax's sub-packages and top-level modules (`manet_jax` is the package's own
`__init__.py`); an arrow is an import of one unit by another, read from the source with `ast`,
lazy imports inside functions included. Inside a sub-package the units are its modules.
"""

from __future__ import annotations

import ast
import re
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
    ("tpu", "reporting"),  # Cloud TPU slices and the trainer's steps compiled for them; several runs' reports
    ("train", "evaluate", "predict", "serve", "export", "compare", "benchmark", "report", "tpu_plan",
     "input_benchmark", "face_template"),  # the tools
]


# Each sub-package's modules in layers, bottom first (`__init__` and `__main__` by those names).
MODULE_LAYERS: dict[str, list[tuple[str, ...]]] = {
    "models": [("layers",), ("blocks",), ("manet",), ("__init__",)],
    "convert": [("mapping", "wiring"), ("core",), ("files",), ("__init__", "__main__")],
    "data": [
        ("errors", "options"),  # what a user can get wrong; the input options
        ("labels", "image_files", "locations", "augment", "sampling"),  # classes, image files, where data lives
        ("builder_base", "face_renderer"),  # the TFDS builders' base; the synthetic faces' drawing
        ("affectnet", "caer_s", "fed_ro", "fer2013", "image_folder", "raf_db", "sfew", "synthetic_faces"),
        ("ferplus",),  # FERPlus reuses FER2013's images
        ("registry",),  # every dataset by name
        ("pipeline", "prepare", "__init__"),  # the host input pipeline; preparing datasets
    ],
    "inference": [
        ("faces", "predictor", "images", "preprocess"),  # a face and its box; the predictor's protocol; images
        ("alignment", "boxes", "detectors", "records", "tracking", "quantize", "stablehlo"),
        ("face_options", "visualize", "video", "savedmodel", "onnx_runtime"),
        ("photos", "onnx_export"),  # predict on photos; the ONNX export
        ("clips", "server", "__init__"),  # predict on videos; over HTTP
    ],
    "training": [
        ("config", "steps", "official", "workdir"),  # the config; state, optimizer, metrics, steps; curves; workdir
        ("evaluation",),  # eval sets and the evaluator that computes on them
        ("build",),  # a run set up from its config
        ("checkpoints", "record"),  # the checkpoint store; what a run leaves on record
        ("run", "__init__"),  # training and evaluation runs
    ],
    "tpu": [("collectives", "slices"), ("compiled_steps", "__init__")],
}


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
    """manet_jax/training/run.py -> 'manet_jax.training.run'; manet_jax/data/__init__.py -> 'manet_jax.data'."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """'manet_jax.training.run' -> 'training'; 'manet_jax.bundle' -> 'bundle'; 'manet_jax' -> 'manet_jax'."""
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


def module_imports(package: str) -> list[tuple[Path, int, str, str]]:
    """Every import of one module of `package` by another: (file, line, importer, imported)."""
    root = PACKAGE / package
    names = {path.stem for path in root.glob("*.py")}
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                base = f"manet_jax.{package}." + node.module if node.level == 1 else node.module
                if base == f"manet_jax.{package}":
                    targets = [a.name for a in node.names if a.name in names]
                elif base.startswith(f"manet_jax.{package}."):
                    targets = [base.split(".")[2]]
            elif isinstance(node, ast.ImportFrom) and node.level == 1:  # from . import x
                targets = [a.name for a in node.names if a.name in names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[2] for a in node.names if a.name.startswith(f"manet_jax.{package}.")]
            found += [(path, node.lineno, path.stem, t) for t in targets if t != path.stem]
    return found


def test_every_module_of_a_package_is_in_exactly_one_of_its_layers():
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert sorted(packages - set(MODULE_LAYERS)) == [], "packages without MODULE_LAYERS: place their modules"
    for package, layers in MODULE_LAYERS.items():
        placed = [m for layer in layers for m in layer]
        modules = {path.stem for path in (PACKAGE / package).glob("*.py")}
        assert sorted(m for m in set(placed) if placed.count(m) > 1) == [], f"{package}: in more than one layer"
        assert sorted(modules - set(placed)) == [], f"{package}: in no layer of MODULE_LAYERS: place it"
        assert sorted(set(placed) - modules) == [], f"{package}: in MODULE_LAYERS but not in the package"


def test_every_import_inside_a_package_goes_down_its_layers():
    upward = []
    for package, layers in MODULE_LAYERS.items():
        layer = {m: i for i, names in enumerate(layers) for m in names}
        found = module_imports(package)
        assert found, f"{package}: no imports read"
        upward += [f"manet_jax/{package}/{path.name}:{line} ({source}) imports {target}: layer "
                   f"{layer[source]} -> {layer[target]}"
                   for path, line, source, target in found if layer[target] >= layer[source]]
    assert upward == [], "imports at or above the importing module's layer:\n" + "\n".join(upward)


def contributing_table(heading: str) -> list[tuple[str, ...]]:
    """The units of each row of the first table under `heading` in CONTRIBUTING.md, bottom row first."""
    text = (PACKAGE.parent / "CONTRIBUTING.md").read_text()
    section = text[text.index(heading):]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    rows = rows[:next((i for i, r in enumerate(rows) if r.startswith("| 0 |")), len(rows)) + 1]
    return [tuple(re.findall(r"`([\w.]+)`", row.split("|")[2])) for row in reversed(rows)]


def test_contributing_shows_the_layers_as_the_plan_has_them():
    assert contributing_table("## Layers") == LAYERS
    assert contributing_table("### Inside the packages") == [
        tuple(m for m in layer if m != "__init__") for layer in MODULE_LAYERS["training"]]


def test_the_modules_contributing_names_exist():
    text = (PACKAGE.parent / "CONTRIBUTING.md").read_text()
    layout = text[text.index("## Layout"):text.index("## Layers")]
    named = set(re.findall(r"`(?:manet_jax/)?([\w/]+\.py)`", layout))
    files = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")}
    names = {path.name for path in PACKAGE.rglob("*.py")}
    missing = sorted(n for n in named if n not in files and n not in names
                     and not (PACKAGE.parent / n).exists())
    assert len(named) > 30 and missing == []
