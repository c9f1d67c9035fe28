"""manet_jax uses its dependencies' public APIs only (CONTRIBUTING: no `_private` attributes or
modules, no replaced interpreter hooks, no log filtering by file path), read from the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "manet_jax"
HOOKS = {"unraisablehook", "excepthook", "displayhook", "breakpointhook"}  # of sys and threading
LOG_FILTERS = {"addFilter", "pathname"}  # a log filter, a record's source file
DOCUMENTED = {"os._exit"}  # public, documented, despite the underscore


def private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def violations(source: str, where: str) -> list[str]:
    """What in `source` reaches past a dependency's public API: an import of a private module or
    name of another package, a private attribute of an imported module or of anything but a plain
    name (`self.manager._checkpointer`; `self._x` and `obj._x` of manet_jax's own objects pass), a
    private name passed to getattr/setattr/hasattr, an interpreter hook, a log filter."""
    tree, found = ast.parse(source), []
    dependencies = set()  # names bound by imports of other packages
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            external = isinstance(node, ast.Import) or (node.level == 0 and module.split(".")[0] != "manet_jax")
            for alias in node.names:
                dotted = f"{module}.{alias.name}" if module else alias.name
                if external:
                    dependencies.add(alias.asname or alias.name.split(".")[0])
                    if any(private(part) for part in dotted.split(".")):
                        found.append(f"{where}:{node.lineno}: imports {dotted}")
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}: {ast.unparse(node)}" if isinstance(node, ast.expr) else ""
        if isinstance(node, ast.Attribute) and private(node.attr) and ast.unparse(node) not in DOCUMENTED and (
                not isinstance(node.value, ast.Name) or node.value.id in dependencies):
            found.append(line)
        elif isinstance(node, ast.Attribute) and node.attr in HOOKS | LOG_FILTERS:
            found.append(line)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and private(str(node.args[1].value))):
            found.append(line)
    return found


def test_the_check_finds_each_kind_of_violation():
    source = """
import jax._src.hardware_utils
from orbax.checkpoint._src import future
from jax import _src
import os, sys, logging, orbax.checkpoint as ocp
from manet_jax.cli import _pci_vendor
x = getattr(getattr(manager, "_checkpointer", None), "_async_manager", None)
y = self.manager._checkpointer
z = ocp._src
sys.unraisablehook = print
logging.getLogger("absl").addFilter(lambda record: "orbax" not in record.pathname)
ok = self._saving, lease._refresher, cli._pci_vendor, os._exit
"""
    assert sorted(v.split(": ", 1)[1] for v in violations(source, "x.py")) == sorted([
        "imports jax._src.hardware_utils", "imports orbax.checkpoint._src.future", "imports jax._src",
        "getattr(getattr(manager, '_checkpointer', None), '_async_manager', None)",
        "getattr(manager, '_checkpointer', None)", "self.manager._checkpointer", "ocp._src", "sys.unraisablehook",
        "logging.getLogger('absl').addFilter", "record.pathname"])


def test_manet_jax_uses_public_apis_only():
    found = [v for path in sorted(PACKAGE.rglob("*.py"))
             for v in violations(path.read_text(), f"manet_jax/{path.relative_to(PACKAGE)}")]
    assert found == [], "private APIs, interpreter hooks or log filters:\n" + "\n".join(found)
