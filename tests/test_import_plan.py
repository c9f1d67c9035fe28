"""The plan of imports: the model, its bundle and the mesh at the bottom, the trainer above them.

Units are manet_jax's sub-packages and top-level modules; an arrow is an import of one unit by
another, read from the source with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "manet_jax"
BELOW_TRAINING = ("errors", "cli", "models", "mesh", "bundle", "forward", "data", "convert", "inference")


def unit(module: str) -> str:
    """'manet_jax.training.loop' -> 'training'; 'manet_jax.bundle' -> 'bundle'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_plan() -> dict[str, set[str]]:
    """unit -> the other units it imports."""
    plan: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = unit(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("manet_jax"):
                names = [node.module] if node.module != "manet_jax" else [f"manet_jax.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("manet_jax")]
            else:
                continue
            plan.setdefault(source, set()).update(unit(name) for name in names if unit(name) != source)
    return plan


def test_nothing_below_the_trainer_imports_it():
    plan = import_plan()
    assert {u for u in BELOW_TRAINING if "training" in plan.get(u, ())} == set()
    assert "training" in plan["train"] and "bundle" in plan["training"]  # the plan is read at all


def test_the_plan_has_no_circles():
    plan = import_plan()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt}))
                   for nxt in plan.get(start, ()))

    assert [u for u in plan if reaches(u, u, {u})] == []
