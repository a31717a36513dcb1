"""dicom3tools' `dciodvfy` as a test oracle: the IOD validator every produced object must pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines `dciodvfy` reports as errors for the file at `path` (empty: the object is valid)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not installed; `make test` installs the Debian package dicom3tools")
    check = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, timeout=120)
    return [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
