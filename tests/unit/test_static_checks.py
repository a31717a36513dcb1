"""The code's own checks, run with the suite so CI enforces them: ruff on everything, mypy on node/.

STYLE.md asks for typed code (`py.typed`, mypy on `node/`) and ruff-clean code; a check that only
runs on a developer's machine drifts.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing():
    result = _run("ruff", "check", "node", "training", "tests", "bench", "plugins")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_node_and_training():
    result = _run("mypy", "node", "training")
    assert result.returncode == 0, result.stdout + result.stderr
