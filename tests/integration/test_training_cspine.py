"""`fracnode train cspine` and `fracnode evaluate cspine` as a user runs them, on a tiny phantom dataset.

One epoch each, bundles written to a temporary folder: the shipped bundles are never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.inference import bundle as bundles
from training.phantom.generate import PhantomSpec, generate_study, write_rsna_layout

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "models" / "cspine_vertebrae", REPO / "models" / "cspine_fracture"]
TINY = PhantomSpec(size=64, pixel_spacing=3.2, slice_thickness=3.0, noise_sd=8.0)
FLAGS = [
    (False,) * 7,
    (False, True, False, False, False, False, True),
    (False,) * 7,
    (True, False, False, False, False, False, False),
    (False,) * 7,
    (False,) * 5 + (True, False),
    (False,) * 7,
    (False, False, True, False, False, False, False),
]


def fracnode(*args: object, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACNODE_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rsna")
    studies = [
        generate_study(1000 + n, PhantomSpec(**{**TINY.__dict__, "fractures": flags}), n)
        for n, flags in enumerate(FLAGS)
    ]
    write_rsna_layout(root / "neck", studies)
    write_rsna_layout(root / "no-neck", [generate_study(77, PhantomSpec(**{**TINY.__dict__, "region": "abdomen"}))])
    return root


def shipped_state() -> dict[Path, float]:
    return {p: p.stat().st_mtime for root in SHIPPED for p in root.rglob("*") if p.is_file()}


def test_train_then_evaluate_writes_weights_hashes_and_the_competition_metrics(dataset: Path, tmp_path: Path) -> None:
    before = shipped_state()
    out, cache = tmp_path / "bundles", tmp_path / "cache"
    trained = fracnode(
        "train",
        "cspine",
        "--data",
        dataset / "neck",
        "--negatives",
        dataset / "no-neck",
        "--out",
        out,
        "--cache",
        cache,
        "--seg-epochs",
        1,
        "--epochs",
        1,
        "--threads",
        2,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    for name in ("cspine_vertebrae", "cspine_fracture"):
        bundle = bundles.read(out / name)
        assert bundle.weights_sha256 == bundles.sha256(bundle.weights_path)
        assert bundle.metadata["fracnode"]["training"]["epochs"] == 1
        assert "synthetic phantoms" in (out / name / "docs" / "README.md").read_text()
    fracture = bundles.read(out / "cspine_fracture").metadata
    assert set(fracture["fracnode"]["operating_points"]) == {"suspicious", "fracture"}
    assert "weighted_log_loss" in fracture["eval_metrics"]

    evaluated = fracnode(
        "evaluate",
        "cspine",
        "--data",
        dataset / "neck",
        "--negatives",
        dataset / "no-neck",
        "--out",
        out,
        "--cache",
        cache,
        "--all-studies",
        "--threads",
        2,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout)
    assert report["studies"] == 8 and report["fractured_studies"] == 4
    assert 0.0 < report["weighted_log_loss"] < 10.0
    for key in ("vertebra_roc_auc", "patient_roc_auc"):
        assert 0.0 <= report[key] <= 1.0
        low, high = report[f"{key}_95ci"]
        assert low <= report[key] <= high
    assert set(report["dice"]) <= {f"C{n}" for n in range(1, 8)}
    assert report["no_cervical_spine"]["series"] == 1
    assert report["measured_on"].startswith("all 8 studies")
    assert shipped_state() == before

    # the same command with --resume after a finished run: both models go on from their last epoch (none left)
    weights = {name: bundles.read(out / name).weights_sha256 for name in ("cspine_vertebrae", "cspine_fracture")}
    resumed = fracnode(
        "train",
        "cspine",
        "--data",
        dataset / "neck",
        "--negatives",
        dataset / "no-neck",
        "--out",
        out,
        "--cache",
        cache,
        "--seg-epochs",
        1,
        "--epochs",
        1,
        "--threads",
        2,
        "--resume",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("vertebrae", "fracture"):
        assert (
            f"resuming after epoch 1 of 1 from {cache / 'cspine' / 'checkpoints' / f'{name}_last.pt'}" in resumed.stderr
        )
        assert f"{name} epoch 1:" not in resumed.stderr
    assert {name: bundles.read(out / name).weights_sha256 for name in weights} == weights
    refused = fracnode(
        "train",
        "cspine",
        "--data",
        dataset / "neck",
        "--negatives",
        dataset / "no-neck",
        "--out",
        out,
        "--cache",
        cache,
        "--seg-epochs",
        2,
        "--epochs",
        1,
        "--threads",
        2,
        "--resume",
    )
    assert refused.returncode == 2 and "other settings (epochs 1 there, 2 now" in refused.stderr


def test_a_folder_without_train_csv_is_refused_with_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "train_images").mkdir()
    for command in ("train", "evaluate"):
        result = fracnode(
            command,
            "cspine",
            "--data",
            tmp_path,
            "--out",
            tmp_path / "bundles",
            "--cache",
            tmp_path / "cache",
            timeout=60,
        )
        assert result.returncode == 2
        assert f"{tmp_path / 'train.csv'} is missing" in result.stderr
        assert "StudyInstanceUID" in result.stderr
