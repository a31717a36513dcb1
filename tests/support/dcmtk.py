"""DCMTK's command-line tools ahead of pynetdicom's namesakes on PATH.

pynetdicom installs its own `storescu`, `echoscu`, `findscu`, `storescp` ... into the virtual
environment's `bin/`; with the environment activated they shadow DCMTK's, which the tests and
benchmarks mean (their options differ). `dcmdump` exists only in DCMTK, so its folder is DCMTK's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def put_dcmtk_first() -> None:
    """Move the folder that holds DCMTK's `dcmdump` to the front of PATH (no-op without DCMTK)."""
    found = shutil.which("dcmdump")
    if found is None:
        return
    folder = str(Path(found).parent)
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != folder]
    os.environ["PATH"] = os.pathsep.join([folder, *rest])
