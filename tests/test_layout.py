"""The house's rules, read from the code: imports run down a floor, and rooms stay small.

Floors, top to bottom (README "Layout"): ``banditflow`` (CLI, demo, simulator, report,
local-stack supervisor); ``flows`` and ``rollout``; ``tasks`` (below ``flows`` only);
``contract`` on the ground. ``rollout`` meets the pipeline only through ``contract``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "tasks", "flows", "rollout", "banditflow")

# What each package may import of the project (besides itself).
MAY_IMPORT: dict[str, set[str]] = {
    "contract": set(),
    "tasks": {"contract"},
    "flows": {"contract", "tasks"},
    "rollout": {"contract"},
    "banditflow": {"contract", "tasks", "flows", "rollout"},
}
# Libraries the rollout service never imports at module level (start-up time, DESIGN.md).
ROLLOUT_NEVER = {"prefect", "ax", "hyperopt", "feast", "torch"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(tree: ast.AST, *, top_level_only: bool = False) -> set[str]:
    """Return the first component of every module a tree imports."""
    found: set[str] = set()
    nodes = tree.body if top_level_only and isinstance(tree, ast.Module) else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _lines(node: ast.AST) -> int:
    end = getattr(node, "end_lineno", None) or node.lineno  # type: ignore[attr-defined]
    return end - node.lineno + 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_down_a_floor(package: str) -> None:
    allowed = MAY_IMPORT[package] | {package}
    wrong = []
    for path in _modules(package):
        tree = ast.parse(path.read_text(), str(path))
        for imported in _imports(tree) & set(PACKAGES):
            if imported not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not wrong, "imports that run up or across a floor:\n" + "\n".join(wrong)


def test_rollout_imports_no_heavy_library_at_module_level() -> None:
    wrong = []
    for path in _modules("rollout"):
        tree = ast.parse(path.read_text(), str(path))
        for imported in _imports(tree, top_level_only=True) & ROLLOUT_NEVER:
            wrong.append(f"{path.relative_to(ROOT)} imports {imported} at module level")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_and_functions_stay_small(package: str) -> None:
    too_long = []
    for path in _modules(package):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {n} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if (n := _lines(node)) > MAX_FUNCTION_LINES:
                too_long.append(
                    f"{rel}:{node.lineno} {node.name}: {n} lines (at most {MAX_FUNCTION_LINES})"
                )
    assert not too_long, "split these by job:\n" + "\n".join(too_long)


def test_the_layout_rules_see_a_violation(tmp_path: Path) -> None:
    """The readers above find an upward import and a long function (they can fail)."""
    source = "import banditflow\n\n\ndef long():\n" + "    x = 1\n" * 70
    tree = ast.parse(source)
    assert "banditflow" in _imports(tree) - MAY_IMPORT["tasks"]
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert _lines(functions[0]) == 71
