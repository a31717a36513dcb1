"""A pipeline is one folder registered through `pipeline_modules`: the test suite's own pipelines
are such a folder (tests/support/pipelines/) and use the node's public interfaces only."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from node import pipelines
from node.config import Config
from node.records import PipelineInput, SeriesAttributes, SeriesInput
from tests.support import dicomgen

FOLDER = Path(__file__).resolve().parents[1] / "support" / "pipelines"
MODULE = "tests.support.pipelines"
# what a pipeline outside node/ may import: the registry, the stage records, the configuration,
# and the names a built-in pipeline package exports (its findings records)
PUBLIC = {"node.pipelines", "node.records", "node.config", "node.pipelines.radiograph", "node.pipelines.cspine"}


def node_imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    found = []
    for statement in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(statement, ast.ImportFrom) and (statement.module or "").split(".")[0] == "node":
            found.append((statement.module or "", tuple(alias.name for alias in statement.names)))
        elif isinstance(statement, ast.Import):
            found += [(alias.name, ()) for alias in statement.names if alias.name.split(".")[0] == "node"]
    return found


def test_the_test_pipelines_are_one_folder_that_imports_only_public_interfaces() -> None:
    files = sorted(FOLDER.glob("*.py"))
    assert (FOLDER / "__init__.py") in files and len(files) > 1
    imports = [(path.name, module, names) for path in files for module, names in node_imports(path)]
    assert imports  # the check looks at something
    for name, module, names in imports:
        assert module in PUBLIC, f"{name} imports {module}, which is not a public interface"
        exported = getattr(importlib.import_module(module), "__all__", None)
        if module.startswith("node.pipelines.") and exported is not None:
            assert set(names) <= set(exported), f"{name} imports {set(names) - set(exported)} from {module}"


def test_the_folder_registers_its_pipelines_through_pipeline_modules(tmp_path: Path) -> None:
    config = Config(pipeline_modules=[MODULE])
    pipelines.load_modules(config.pipeline_modules)
    assert {"test-kos", "test-flaky", "test-decline", "test-regions", "test-vertebrae"} <= set(pipelines.known())
    assert pipelines.check(config) == []
    image = dicomgen.cr_image()
    (path,) = dicomgen.write([image], tmp_path)
    series = SeriesInput(SeriesAttributes(str(image.SeriesInstanceUID), modality="CR"), (path,))
    outcome = pipelines.create("test-regions", config).run(PipelineInput(str(image.StudyInstanceUID), 1, "", (series,)))
    assert len(outcome.datasets) == 1 and outcome.findings is not None
    (row,) = outcome.findings.rows()  # the findings protocol, as the built-in pipelines give it
    assert (row.sop_instance_uid, row.category, row.regions) == (str(image.SOPInstanceUID), "fracture", 1)
