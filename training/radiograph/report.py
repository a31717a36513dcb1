"""What `fracnode evaluate radiograph` measures, from predictions on the validation and test splits.

Every choice (operating points, region threshold, the intended-use gate's limit, the body-region
confidence for a finding site) is made on the validation split by a rule fixed here, then measured
on the test split only. Pure functions over numpy arrays; the caller runs the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from node.imaging.regions import Region, extract, on_dense_material
from training.common import metrics
from training.radiograph.fracatlas import BODY_REGIONS, Arrays

SUSPICIOUS_SENSITIVITY = 0.90
FRACTURE_SPECIFICITY = 0.90
REGION_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # candidates for the region map's threshold
SITE_ACCURACY = 0.98  # the body-region head names a site only at a confidence this accurate on validation
DENSE_PERCENTILE = 99.0  # a region whose median lies in the image's brightest 1 % sits on metal (or as dense)
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Split:
    """One split's labels and the network's outputs on it."""

    arrays: Arrays
    scores: np.ndarray  # calibrated fracture probability
    maps: np.ndarray  # (N, S, S) region probability
    body: np.ndarray  # (N, regions) body-region probability
    atypicality: np.ndarray | None

    @property
    def labels(self) -> np.ndarray:
        return self.arrays.fractured > 0


def _r(value: Any) -> float:
    return round(float(value), 4)


def regions_shown(
    split: Split, index: int, suspicious: float, fracture: float, region_threshold: float, dense_rule: bool = True
) -> list[Region]:
    """The regions the node would draw on image `index`: none below the suspicious threshold; regions on
    dense material (metal) only when the image is at the fracture threshold (when `dense_rule`)."""
    score = split.scores[index]
    if score < suspicious:
        return []
    found = extract(split.maps[index].astype(np.float32), region_threshold)
    if not dense_rule or score >= fracture:
        return found
    image, valid = split.arrays.images[index], split.arrays.valid[index]
    return [r for r in found if not on_dense_material(r, image, valid, DENSE_PERCENTILE)]


def box_hits(split: Split, shown: Sequence[Sequence[Region]], iou: float) -> float:
    """Share of every annotated fracture box in the split hit (IoU ≥ `iou`) by a region shown on its image."""
    fractured = [int(i) for i in np.nonzero(split.labels)[0]]
    return metrics.box_hit_rate(
        [[r.box for r in shown[i]] for i in fractured], [split.arrays.boxes[i] for i in fractured], iou
    )


def pointing_game(split: Split) -> float:
    """Share of fractured images whose region map peaks (over the image area) inside an annotated box."""
    hits = total = 0
    for i in np.nonzero(split.labels)[0]:
        boxes = split.arrays.boxes[i]
        if not boxes:
            continue
        plane = np.where(split.arrays.valid[i], split.maps[i].astype(np.float32), -1.0)
        row, column = np.unravel_index(int(plane.argmax()), plane.shape)
        total += 1
        hits += any(x0 <= column + 0.5 <= x1 and y0 <= row + 0.5 <= y1 for x0, y0, x1, y1 in boxes)
    return hits / total if total else float("nan")


def calibration_table(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error (equal-width bins, weighted by count) and the reliability table."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    table, error = [], 0.0
    for b in range(bins):
        chosen = which == b
        if not chosen.any():
            continue
        predicted, observed = float(scores[chosen].mean()), float(labels[chosen].mean())
        error += chosen.mean() * abs(predicted - observed)
        table.append(
            {
                "bin": [_r(edges[b]), _r(edges[b + 1])],
                "images": int(chosen.sum()),
                "mean_probability": _r(predicted),
                "fracture_rate": _r(observed),
            }
        )
    return float(error), table


def _auc_or_none(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    entry: dict[str, Any] = {"images": len(labels), "fractured": int(labels.sum())}
    if labels.any() and not labels.all():
        low, high = metrics.bootstrap_auc_ci(labels, scores, rounds=1000)
        entry.update(roc_auc=_r(metrics.roc_auc(labels, scores)), roc_auc_95ci=[_r(low), _r(high)])
    return entry


def subgroups(split: Split, suspicious: float) -> dict[str, dict[str, Any]]:
    """AUC (and sensitivity at the suspicious point) per body region (images of that region alone) and by hardware."""
    labels, scores, body = split.labels, split.scores, split.arrays.body > 0
    single = body.sum(axis=1) == 1
    groups: dict[str, np.ndarray] = {region: single & body[:, k] for k, region in enumerate(BODY_REGIONS)}
    groups["several regions"] = body.sum(axis=1) > 1
    hardware = split.arrays.hardware if split.arrays.hardware is not None else np.zeros(len(labels), bool)
    groups["with hardware"] = hardware
    groups["without hardware"] = ~hardware
    out = {}
    for name, chosen in groups.items():
        entry = _auc_or_none(labels[chosen], scores[chosen])
        if labels[chosen].any():
            entry["sensitivity_suspicious"] = _r((scores[chosen & labels] >= suspicious).mean())
        out[name] = entry
    return out


def site_threshold(split: Split, target: float = SITE_ACCURACY) -> float:
    """The lowest body-region confidence at which the head's argmax is right at least `target` of the
    time on `split`'s single-region images (1.0 when no confidence reaches it)."""
    body = split.arrays.body > 0
    single = body.sum(axis=1) == 1
    confidence = split.body[single].max(axis=1)
    right = split.body[single].argmax(axis=1) == body[single].argmax(axis=1)
    for threshold in np.sort(np.unique(confidence)):
        chosen = confidence >= threshold
        if chosen.any() and right[chosen].mean() >= target:
            return float(threshold)
    return 1.0


def site_quality(split: Split, threshold: float) -> dict[str, float]:
    body = split.arrays.body > 0
    single = body.sum(axis=1) == 1
    confidence = split.body[single].max(axis=1)
    right = split.body[single].argmax(axis=1) == body[single].argmax(axis=1)
    named = confidence >= threshold
    return {
        "threshold": _r(threshold),
        "images_named": _r(named.mean()),
        "accuracy_when_named": _r(right[named].mean()) if named.any() else float("nan"),
    }


def measure(val: Split, test: Split, measured_on: str) -> dict[str, Any]:
    """The report: every threshold chosen on `val`, every number measured on `test`."""
    suspicious = metrics.threshold_for_sensitivity(val.labels, val.scores, SUSPICIOUS_SENSITIVITY)
    fracture = metrics.threshold_for_specificity(val.labels, val.scores, FRACTURE_SPECIFICITY)
    # On a validation split the network separates well, the 90 %-specificity threshold can fall below
    # the 90 %-sensitivity one; "suspicious" is the band below "fracture", so it is then empty.
    suspicious = min(suspicious, fracture)
    region_threshold = max(
        REGION_THRESHOLDS,
        key=lambda t: (
            box_hits(val, [regions_shown(val, i, suspicious, fracture, t) for i in range(len(val.scores))], 0.1),
            -t,
        ),
    )
    labels, scores = test.labels, test.scores
    low, high = metrics.bootstrap_auc_ci(labels, scores)
    shown = [regions_shown(test, i, suspicious, fracture, region_threshold) for i in range(len(scores))]
    unfiltered = [
        regions_shown(test, i, suspicious, fracture, region_threshold, dense_rule=False) for i in range(len(scores))
    ]
    fractured = np.nonzero(labels)[0]
    dices = [metrics.dice(test.maps[i] >= region_threshold, test.arrays.masks[i]) for i in fractured]
    ece, reliability = calibration_table(labels, scores)
    body_truth = test.arrays.body > 0
    single = body_truth.sum(1) == 1
    report: dict[str, Any] = {
        "measured_on": measured_on,
        "roc_auc": _r(metrics.roc_auc(labels, scores)),
        "roc_auc_95ci": [_r(low), _r(high)],
        "suspicious": {k: _r(v) for k, v in metrics.operating_point(labels, scores, suspicious).items()},
        "fracture": {k: _r(v) for k, v in metrics.operating_point(labels, scores, fracture).items()},
        "calibration": {
            "expected_calibration_error": _r(ece),
            "brier_score": _r(np.mean((scores - labels) ** 2)),
            "bins": CALIBRATION_BINS,
            "reliability": reliability,
        },
        "region_threshold": region_threshold,
        "region_dice_mean_fractured": _r(np.mean(dices)),
        "region_box_hit_rate_iou_0.1": _r(box_hits(test, shown, 0.1)),
        "region_box_hit_rate_iou_0.3": _r(box_hits(test, shown, 0.3)),
        "region_box_hit_rate_iou_0.1_flagged_images": _r(
            metrics.box_hit_rate(
                [[r.box for r in shown[i]] for i in fractured if scores[i] >= suspicious],
                [test.arrays.boxes[i] for i in fractured if scores[i] >= suspicious],
                0.1,
            )
        ),
        "region_pointing_game": _r(pointing_game(test)),
        "body_region_roc_auc": {
            region: _r(metrics.roc_auc(body_truth[:, k], test.body[:, k]))
            for k, region in enumerate(BODY_REGIONS)
            if body_truth[:, k].any() and not body_truth[:, k].all()
        },
        "body_region_accuracy_single_region_images": _r(
            (test.body[single].argmax(1) == body_truth[single].argmax(1)).mean()
        ),
        "finding_site": site_quality(test, site_threshold(val)),
        "subgroups": subgroups(test, suspicious),
        "dense_material": _dense_report(test, unfiltered, shown),
    }
    if val.atypicality is not None and test.atypicality is not None:
        limit = float(val.atypicality.max())  # rule: refuse only what is beyond every validation image
        report["intended_use_gate"] = {
            "atypicality_limit": _r(limit),
            "rule": "limit = the highest atypicality among the validation images",
            "test_images_refused": int((test.atypicality > limit).sum()),
            "test_refused_share": _r((test.atypicality > limit).mean()),
        }
    return report


def _dense_report(test: Split, before: list[list[Region]], after: list[list[Region]]) -> dict[str, Any]:
    """How often the regions drawn on images with hardware lie on dense material, without and with the rule."""
    hardware = test.arrays.hardware if test.arrays.hardware is not None else np.zeros(len(before), bool)

    def share(shown: list[list[Region]], chosen: np.ndarray) -> dict[str, Any]:
        regions = [(i, r) for i in np.nonzero(chosen)[0] for r in shown[i]]
        dense = sum(
            on_dense_material(r, test.arrays.images[i], test.arrays.valid[i], DENSE_PERCENTILE) for i, r in regions
        )
        return {
            "regions": len(regions),
            "on_dense_material": int(dense),
            "share": _r(dense / len(regions)) if regions else 0.0,
        }

    return {
        "rule": (
            f"a region whose median pixel is at or above the image's {DENSE_PERCENTILE:g}th percentile is drawn"
            " only when the image is at the fracture threshold"
        ),
        "images_with_hardware": int(hardware.sum()),
        "hardware_images_before_rule": share(before, hardware),
        "hardware_images_after_rule": share(after, hardware),
        "all_images_before_rule": share(before, np.ones(len(before), bool)),
        "all_images_after_rule": share(after, np.ones(len(before), bool)),
    }
