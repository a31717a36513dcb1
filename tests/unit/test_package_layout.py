"""The layout docs/architecture.md describes: neutral building blocks never import a pipeline, and
a pipeline's package never imports another pipeline's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[2] / "node"
NEUTRAL = ("imaging", "inference", "results", "records.py")
PIPELINES = sorted(p.name for p in (NODE / "pipelines").iterdir() if (p / "__init__.py").is_file())


def imported_modules(path: Path) -> set[str]:
    found = set()
    for statement in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(statement, ast.ImportFrom) and statement.module:
            found.add(statement.module)
            found.update(f"{statement.module}.{alias.name}" for alias in statement.names)
        elif isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names)
    return found


def sources(part: str) -> list[Path]:
    root = NODE / part
    return [root] if root.is_file() else sorted(root.rglob("*.py"))


@pytest.mark.parametrize("part", NEUTRAL)
def test_neutral_building_blocks_import_no_pipeline(part: str) -> None:
    files = sources(part)
    assert files
    for path in files:
        reaching = sorted(m for m in imported_modules(path) if m.startswith("node.pipelines"))
        assert not reaching, f"{path.relative_to(NODE)} imports {reaching}"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_pipeline_imports_no_other_pipeline(pipeline: str) -> None:
    assert {"radiograph", "cspine"} <= set(PIPELINES)
    others = tuple(f"node.pipelines.{name}" for name in PIPELINES if name != pipeline)
    for path in sources(f"pipelines/{pipeline}"):
        reaching = sorted(m for m in imported_modules(path) if m.startswith(others))
        assert not reaching, f"{path.relative_to(NODE)} imports {reaching}"
