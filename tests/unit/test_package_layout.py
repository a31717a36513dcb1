"""The layout docs/architecture.md describes, checked against the imports and strings of node/.

- Every module of node/ has a place: neutral, one stage of the flow, or the top that wires them.
- Neutral modules (records, config, store, imaging, ...) import only neutral modules.
- Stages run ingest → incoming → assembly → jobs and pipelines → results → dispatch; a stage
  imports neutral modules, its own stage and the stages after it (it hands work on), never one
  before it (no reaching back), and never the top.
- The top (service, web, CLI, ...) imports what it wires; the web layer never imports the service
  (it gets narrow interfaces, node.web.queries and node.web.commands).
- SQL is written only in node/store/.
- Neutral building blocks never import a pipeline, and a pipeline never imports another one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[2] / "node"
NEUTRAL = (
    "__init__.py",
    "records.py",
    "config",
    "store",
    "imaging",
    "logs.py",
    "retry.py",
    "files.py",
    "owners.py",
    "net.py",
    "tls.py",
    "webclient.py",
    "redact.py",
    "sources.py",
    "audit.py",
    "atna.py",
)
STAGES = (  # in the order of the flow
    ("ingest", ("ingest", "pull")),
    ("incoming", ("incoming.py", "spool.py", "header.py", "part10.py", "scan.py", "walk.py")),
    ("assembly", ("assembly.py", "routing.py", "search.py")),
    ("jobs and pipelines", ("jobs.py", "worker.py", "outcomes.py", "pipelines", "inference")),
    ("results", ("results",)),
    ("dispatch", ("dispatch",)),
)
TOP = (
    "service.py",
    "web",
    "cli.py",
    "cli_state.py",
    "cli_db.py",
    "analyze.py",
    "banner.py",
    "conformance.py",
    "metrics.py",
    "retention.py",
    "roles.py",
)
ORDER = {part: i for i, (_, parts) in enumerate(STAGES) for part in parts}
PLACE = {
    **{p: "neutral" for p in NEUTRAL},
    **{p: name for name, parts in STAGES for p in parts},
    **{p: "top" for p in TOP},
}
PIPELINE_FREE = ("imaging", "inference", "results", "records.py")
PIPELINES = sorted(p.name for p in (NODE / "pipelines").iterdir() if (p / "__init__.py").is_file())
# what SQL looks like in a string: a statement's first words
SQL = re.compile(r"\b(SELECT\b[\s\S]+\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX))\b")


def imported_modules(path: Path) -> set[str]:
    """Every node module `path` imports, TYPE_CHECKING blocks and function bodies included."""
    found = set()
    for statement in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(statement, ast.ImportFrom) and statement.module:
            found.add(statement.module)
            found.update(f"{statement.module}.{alias.name}" for alias in statement.names)
        elif isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names)
    return {m for m in found if m == "node" or m.startswith("node.")}


def part_of(module: str) -> str:
    """The top-level part of node/ a dotted module (or a name in it) belongs to."""
    first = module.split(".")[1] if "." in module else "__init__"
    if (NODE / first).is_dir():
        return first
    if (NODE / f"{first}.py").is_file():
        return f"{first}.py"
    return "__init__.py"  # a name node/__init__.py defines (__version__, UIDs)


def sources(part: str) -> list[Path]:
    root = NODE / part
    return [root] if root.is_file() else sorted(root.rglob("*.py"))


def reaches(parts: tuple[str, ...], allowed: set[str]) -> list[str]:
    """'file imports module' for every import of `parts`' modules outside the parts `allowed`."""
    return [
        f"{path.relative_to(NODE)} imports {module}"
        for part in parts
        for path in sources(part)
        for module in sorted(imported_modules(path))
        if part_of(module) not in allowed
    ]


def test_every_module_of_node_has_a_place() -> None:
    parts = {p.name for p in NODE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert parts - set(PLACE) == set(), "give each new module a place here and in docs/architecture.md"
    assert set(PLACE) - parts == set(), "a module named here is gone"


def test_neutral_modules_import_only_neutral_ones() -> None:
    assert reaches(NEUTRAL, set(NEUTRAL)) == []


@pytest.mark.parametrize("stage", [name for name, _ in STAGES])
def test_a_stage_imports_no_earlier_stage_and_not_the_top(stage: str) -> None:
    index = next(i for i, (name, _) in enumerate(STAGES) if name == stage)
    parts = STAGES[index][1]
    allowed = set(NEUTRAL) | {p for _, later in STAGES[index:] for p in later}
    assert reaches(parts, allowed) == []


def test_the_web_layer_never_imports_the_service() -> None:
    """The service builds the web layer and hands it `Queries` and `Commands`: no cycle."""
    assert reaches(("web",), set(PLACE) - {"service.py"}) == []


def test_no_module_outside_store_writes_sql() -> None:
    found = []
    for path in sorted(NODE.rglob("*.py")):
        if path.is_relative_to(NODE / "store"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{path.relative_to(NODE)}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert found == []


@pytest.mark.parametrize(
    "text",
    [
        "SELECT id FROM jobs",
        "INSERT INTO outbox (id) VALUES (?)",
        "UPDATE jobs SET state = ?",
        "DELETE FROM instances",
        "CREATE TABLE IF NOT EXISTS pulls (id INTEGER)",
        "CREATE INDEX x ON y (z)",
    ],
)
def test_the_sql_check_knows_each_statement(text: str) -> None:
    assert SQL.search(text)


@pytest.mark.parametrize("text", ["select the series", "UPDATE the dashboard", "a deleted study"])
def test_the_sql_check_leaves_prose_alone(text: str) -> None:
    assert not SQL.search(text)


@pytest.mark.parametrize("part", PIPELINE_FREE)
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
