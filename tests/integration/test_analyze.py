"""`fracnode analyze`: the same routes, models and writers on files, without a network."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest
from PIL import Image
from pydicom import dcmread

from tests.support import dicomgen

pytestmark = pytest.mark.slow


def test_analyze_writes_results_previews_and_a_summary(tmp_path: Path, cr_sample: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(cr_sample, inputs / "cr.dcm")
    (inputs / "notes.txt").write_text("not DICOM")
    dicomgen.write(dicomgen.ct_series(3, description="CT Neck"), inputs / "ct")
    out = tmp_path / "out"

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "analyze",
            str(inputs),
            "--out",
            str(out),
            "--overlays",
            "gsps,radiograph_seg",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "analysing" in result.stderr  # the progress bar

    rows = list(csv.DictReader((out / "summary.csv").open()))
    by_file = {Path(r["file"]).name: r for r in rows}
    source = dcmread(cr_sample, stop_before_pixels=True)
    cr = by_file["cr.dcm"]
    assert cr["sop_instance_uid"] == source.SOPInstanceUID
    assert cr["pipeline"] == "radiograph-fracture"
    assert cr["category"] in {"fracture", "suspicious", "negative"}
    assert 0.0 <= float(cr["fracture_probability"]) <= 1.0
    assert by_file["notes.txt"]["result"].startswith("skipped: ")
    (ct,) = [r for r in rows if r["pipeline"] == "cspine-fracture"]  # the default CT route
    assert ct["result"].endswith(": 3 slice(s), at least 30 needed to cover the neck)")  # not applicable

    study = out / source.StudyInstanceUID
    srs = [hd.sr.srread(p) for p in study.glob("SR_*.dcm")]
    assert len(srs) == 1 and srs[0].StudyInstanceUID == source.StudyInstanceUID
    assert len(list(study.glob("PR_*.dcm"))) == 1  # the GSPS asked for with --overlays
    assert len(list(study.glob("SEG_*.dcm"))) == (int(cr["regions"]) > 0)
    preview = Image.open(study / f"preview_{source.SOPInstanceUID}.png")
    assert preview.mode == "RGB" and max(preview.size) <= 1024


def test_analyze_rejects_an_unknown_overlay(tmp_path: Path, cr_sample: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "analyze", str(cr_sample), "--out", str(tmp_path), "--overlays", "gif"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown overlay(s) gif" in result.stderr
