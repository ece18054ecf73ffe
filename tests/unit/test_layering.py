"""The package's layering: runtime imports only go down, and no import circle.

Annotations may name a higher module under ``if TYPE_CHECKING:`` (the
``Server`` that ``Client.server`` holds, the ``Client`` and ``Packet`` that
``Filter.check`` takes): nothing runs those imports. Every other import is
read from the source here, and the graph they draw must have no cycle.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "asyncapy"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(module: str) -> set[str]:
    """The asyncapy modules that ``module`` imports when Python runs it."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:  # from . import x
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asyncapy."):
                found.add((node.module or "").split(".")[1])
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(node.body)  # imports inside functions run too, when called

    visit(tree.body)
    return found & set(MODULES)


def test_runtime_imports_have_no_circle() -> None:
    graph = {module: runtime_imports(module) for module in MODULES}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError on a circle
    assert set(order) == set(MODULES)


def test_the_filter_base_sits_below_core() -> None:
    assert "_filterbase" in runtime_imports("core")
    assert not runtime_imports("_filterbase") & {"core", "filters", "dispatch", "server"}
    assert "filters" not in runtime_imports("core")


@pytest.mark.parametrize(
    "module", ["protocol", "codecs", "errors", "_eager", "_filterbase", "core", "config"]
)
def test_the_lower_modules_import_nothing_of_the_server(module: str) -> None:
    assert not runtime_imports(module) & {"server", "_connection", "_tls", "client"}


def test_the_protocol_engine_imports_no_io() -> None:
    source = (PACKAGE / "protocol.py").read_text(encoding="utf-8")
    for name in ("asyncio", "socket", "ssl", "selectors"):
        assert f"import {name}" not in source


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import asyncapy.{module}"], check=True, timeout=60)
