"""The code's own checks, run with the suite so CI enforces them: ruff lint and format, mypy.

STYLE.md asks for typed code (`py.typed`, mypy on `node/` and `training/`), ruff-clean and
ruff-formatted code; a check that only runs on a developer's machine drifts. The rule set and the
line length are in pyproject.toml ([tool.ruff]); docs/architecture.md says how to run them.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every folder of Python the project owns; models/*/scripts are the bundles' network definitions.
PYTHON_PATHS = (
    "node",
    "training",
    "tests",
    "bench",
    "plugins",
    *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("models/*/scripts")),
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_the_bundle_scripts_are_among_the_checked_paths():
    assert "models/radiograph_fracture/scripts" in PYTHON_PATHS


def test_ruff_finds_nothing():
    result = _run("ruff", "check", *PYTHON_PATHS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_would_change_nothing():
    result = _run("ruff", "format", "--check", *PYTHON_PATHS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_node_and_training():
    result = _run("mypy", "node", "training")
    assert result.returncode == 0, result.stdout + result.stderr
