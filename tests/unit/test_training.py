"""Training data handling and evaluation metrics: the leakage-safe split and the numbers in the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.common import metrics
from training.radiograph import fracatlas

REPO = Path(__file__).resolve().parents[2]
FRACATLAS = REPO.parent / "shared" / "data" / "fracatlas"


def _records(n_groups: int = 40, per_group: int = 5) -> list[fracatlas.Record]:
    rng = np.random.default_rng(1)
    return [
        fracatlas.Record(f"IMG{g:04d}{i}", Path("x.jpg"), bool(rng.random() < 0.2), ("hand",), str(g))
        for g in range(n_groups)
        for i in range(per_group)
    ]


def test_split_keeps_every_group_on_one_side_and_is_reproducible() -> None:
    records = _records()
    parts = fracatlas.split(records, seed=3)
    groups = {name: {r.group_id for r in members} for name, members in parts.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert sum(len(m) for m in parts.values()) == len(records)
    assert fracatlas.split(records, seed=3) == parts
    assert fracatlas.split(records, seed=4) != parts


def test_split_puts_fractures_in_every_part() -> None:
    parts = fracatlas.split(_records(), seed=3)
    for members in parts.values():
        assert any(r.fractured for r in members) and not all(r.fractured for r in members)


@pytest.mark.skipif(not (FRACATLAS / "manifest.csv").is_file(), reason="FracAtlas not in ../shared/data")
def test_the_real_manifest_splits_by_group_id() -> None:
    parts = fracatlas.split(fracatlas.read_manifest(FRACATLAS))
    test_groups = {r.group_id for r in parts["test"]}
    assert test_groups and not test_groups & {r.group_id for r in parts["train"]}
    assert 0.12 < len(parts["test"]) / sum(len(m) for m in parts.values()) < 0.2


def test_cross_validation_folds_deal_the_train_and_val_groups_and_keep_the_test_split() -> None:
    parts = fracatlas.split(_records(n_groups=100), seed=3)
    pooled = {r.image_id for r in parts["train"] + parts["val"]}
    folds = [fracatlas.cross_validation_fold(parts, k, 5, seed=3) for k in range(1, 6)]
    validating = [{r.image_id for r in fold["val"]} for fold in folds]
    for fold, val in zip(folds, validating, strict=True):
        assert fold["test"] == parts["test"]
        assert {r.image_id for r in fold["train"]} | val == pooled
        assert not {r.group_id for r in fold["train"]} & {r.group_id for r in fold["val"]}
        assert any(r.fractured for r in fold["val"]) and not all(r.fractured for r in fold["val"])
        assert 0.15 < len(val) / len(pooled) < 0.25
    assert set().union(*validating) == pooled and sum(map(len, validating)) == len(pooled)
    assert fracatlas.cross_validation_fold(parts, 2, 5, seed=3) == folds[1]


@pytest.mark.parametrize(("fold", "folds"), [(0, 5), (6, 5), (1, 1)])
def test_a_fold_outside_its_range_is_refused(fold: int, folds: int) -> None:
    with pytest.raises(ValueError, match="fold"):
        fracatlas.cross_validation_fold(fracatlas.split(_records(), seed=3), fold, folds)


def test_read_manifest_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(fracatlas.DataError, match="manifest.csv"):
        fracatlas.read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
        ([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.75),
    ],
)
def test_roc_auc_known_values(labels, scores, expected) -> None:
    assert metrics.roc_auc(np.array(labels), np.array(scores)) == pytest.approx(expected)


def test_roc_auc_equals_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + labels * 0.4, 2)  # rounded: ties included
    positive, negative = scores[labels], scores[~labels]
    pairwise = ((positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])).mean()
    assert metrics.roc_auc(labels, scores) == pytest.approx(pairwise)
    low, high = metrics.bootstrap_auc_ci(labels, scores, rounds=300)
    assert low < pairwise < high


def test_operating_point_thresholds_reach_their_targets() -> None:
    rng = np.random.default_rng(2)
    labels = rng.random(500) < 0.25
    scores = rng.random(500) + labels * 0.5
    sensitive = metrics.threshold_for_sensitivity(labels, scores, 0.9)
    specific = metrics.threshold_for_specificity(labels, scores, 0.9)
    assert metrics.operating_point(labels, scores, sensitive)["sensitivity"] >= 0.9
    assert metrics.operating_point(labels, scores, specific)["specificity"] >= 0.9
    assert specific > sensitive


def test_localization_metrics() -> None:
    assert metrics.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert metrics.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert metrics.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    hit = metrics.box_hit_rate([[(0, 0, 10, 10)], []], [[(1, 1, 9, 9), (50, 50, 60, 60)], [(0, 0, 5, 5)]])
    assert hit == pytest.approx(1 / 3)
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    assert metrics.dice(mask, mask) == 1.0
    assert metrics.dice(mask, ~mask) == 0.0


# -- bundle bookkeeping of a training run ---------------------------------------------------------


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "radiograph_fracture"
    shutil.copytree(REPO / "models" / "radiograph_fracture", target)
    return target


FRACATLASNET = {
    "_target_": "scripts.network.FracAtlasNet",
    "in_channels": 1,
    "channels": [24, 32, 64, 128, 256],
    "n_body_regions": 4,
    "fpn_channels": 64,
    "dropout": 0.3,
}


@pytest.fixture
def fracatlasnet_bundle(bundle_copy: Path) -> Path:
    """The shipped bundle with the from-scratch FracAtlasNet of versions 0.1-0.3 (the one --input-scale serves)."""
    path = bundle_copy / "configs" / "inference.json"
    inference = json.loads(path.read_text())
    inference["network_def"] = dict(FRACATLASNET)
    inference["spatial_size"] = 320
    inference["preprocessing"]["standardize"] = "image-area"
    path.write_text(json.dumps(inference, indent=4))
    return bundle_copy


def test_set_input_size_rewrites_the_contract_and_the_inference_config(bundle_copy: Path) -> None:
    from node.inference import bundle as bundles
    from training.radiograph import bundle_edits

    bundle_edits.set_input_size(bundle_copy, 384)
    bundle = bundles.read(bundle_copy)
    assert bundle.inputs["image"]["spatial_shape"] == [384, 384]
    assert bundle.outputs["regions"]["spatial_shape"] == [384, 384]
    assert json.loads((bundle_copy / "configs" / "inference.json").read_text())["spatial_size"] == 384
    with pytest.raises(bundles.BundleError, match="multiple of 32 of at least 64"):
        bundle_edits.set_input_size(bundle_copy, 400)
    with pytest.raises(bundles.BundleError, match="multiple of 32 of at least 64"):
        bundle_edits.set_input_size(bundle_copy, 32)


def test_input_scale_2_needs_a_multiple_of_64_and_is_written_to_the_network_def(fracatlasnet_bundle: Path) -> None:
    from node.inference import bundle as bundles
    from training.radiograph import bundle_edits

    with pytest.raises(bundles.BundleError, match="multiple of 64"):
        bundle_edits.set_input_size(fracatlasnet_bundle, 608, input_scale=2)
    bundle_edits.set_input_size(fracatlasnet_bundle, 640, input_scale=2)
    inference = json.loads((fracatlasnet_bundle / "configs" / "inference.json").read_text())
    assert inference["network_def"]["input_scale"] == 2
    assert inference["spatial_size"] == 640
    bundle_edits.set_input_size(fracatlasnet_bundle, 704)  # the scale stays; 704 = 11 × 64
    assert bundles.read(fracatlasnet_bundle).config["network_def"]["input_scale"] == 2


def test_a_scale_1_network_fine_tunes_at_scale_2_starting_as_the_average_of_its_stem(fracatlasnet_bundle: Path) -> None:
    import torch
    import torch.nn.functional as F

    from node.inference import bundle as bundles
    from training.radiograph import bundle_edits

    torch.manual_seed(0)
    coarse = bundles.build_network(bundles.read(fracatlasnet_bundle))
    bundle_edits.set_input_size(fracatlasnet_bundle, 128, input_scale=2)
    fine = bundles.build_network(bundles.read(fracatlasnet_bundle))
    added = bundle_edits.load_initial_weights(fine, coarse.state_dict())
    assert sorted(added) == [
        "stem_reduce.conv.weight",
        "stem_reduce.norm.bias",
        "stem_reduce.norm.running_mean",
        "stem_reduce.norm.running_var",
        "stem_reduce.norm.weight",
    ]
    fine.eval()
    x = torch.randn(2, 1, 128, 128)
    with torch.inference_mode():
        stem = fine.stem(x)
        assert torch.allclose(fine.stem_reduce(stem), F.avg_pool2d(stem, 2))
        fracture, regions, body = fine(x)
    assert fracture.shape == (2,) and regions.shape == (2, 1, 128, 128) and body.shape == (2, 4)


def test_initial_weights_that_do_not_fit_are_refused_by_name(fracatlasnet_bundle: Path) -> None:
    from node.inference import bundle as bundles
    from training.radiograph import bundle_edits

    network = bundles.build_network(bundles.read(fracatlasnet_bundle))
    state = network.state_dict()
    del state["fracture_head.weight"]
    with pytest.raises(bundles.BundleError, match="missing fracture_head.weight"):
        bundle_edits.load_initial_weights(network, state)
    state = {**network.state_dict(), "stem_reduce.conv.weight": network.state_dict()["stem.conv.weight"]}
    with pytest.raises(bundles.BundleError, match="unexpected stem_reduce.conv.weight"):
        bundle_edits.load_initial_weights(network, state)


def test_record_keeps_the_earlier_stages_of_a_fine_tuned_model(bundle_copy: Path) -> None:
    from node.inference import bundle as bundles
    from training.radiograph import bundle_edits, model_card

    report = json.loads((bundle_copy / "configs" / "metadata.json").read_text())["eval_metrics"]
    first = {"epochs": 22, "best_epoch": 18, "seed": 7, "input_size": 320, "fine_tuned_from_sha256": None}
    bundle_edits.record(bundle_copy, report, {**first, "history": [{"epoch": 1}]})
    assert bundles.read(bundle_copy).extras["training"] == first
    second = {
        "epochs": 20,
        "best_epoch": 11,
        "seed": 7,
        "input_size": 640,
        "input_scale": 2,
        "ema_decay": 0.998,
        "learning_rate": 0.001,
        "fine_tuned_from_sha256": "ab" * 32,
    }
    bundle_edits.record(bundle_copy, report, second)
    training = bundles.read(bundle_copy).extras["training"]
    assert training["stages"] == [first, second]
    assert training["input_size"] == 640
    card = model_card.render(bundle_copy)
    assert "- Stage 1: 22 epochs, input 320×320, from random weights, best epoch 18." in card
    assert (
        "- Stage 2: 20 epochs, input 640×640, through the finer stem (input scale 2), peak learning rate 0.001,"
        " moving average of the weights (decay 0.998) validated and kept, started from the previous stage's"
        " weights, best epoch 11."
    ) in card
    # training from scratch again replaces the stages
    bundle_edits.record(bundle_copy, report, first)
    assert bundles.read(bundle_copy).extras["training"] == first


def test_model_card_lists_what_was_tried_and_not_shipped(bundle_copy: Path) -> None:
    from training.radiograph import model_card

    path = bundle_copy / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["fracnode"].pop("tried_not_shipped", None)
    path.write_text(json.dumps(metadata))
    assert "## Tried, not shipped" not in model_card.render(bundle_copy)
    metadata["fracnode"]["tried_not_shipped"] = ["Input 384×384: validation ROC AUC 0.846 vs 0.843."]
    path.write_text(json.dumps(metadata))
    card = model_card.render(bundle_copy)
    assert "## Tried, not shipped" in card
    assert "- Input 384×384: validation ROC AUC 0.846 vs 0.843." in card
