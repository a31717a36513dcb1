"""Evaluation metrics: ROC AUC with a bootstrap CI, operating points, localization quality. Pure numpy."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with tie correction)."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs both positive and negative examples")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auc_ci(labels, scores, rounds: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the ROC AUC (resampling images with replacement)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, len(labels), len(labels))
        if labels[pick].all() or not labels[pick].any():
            continue
        values.append(roc_auc(labels[pick], scores[pick]))
    low, high = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def threshold_for_sensitivity(labels, scores, target: float) -> float:
    """The highest threshold whose sensitivity (score >= threshold) is at least `target`."""
    positive_scores = np.sort(np.asarray(scores)[np.asarray(labels, bool)])[::-1]
    index = min(len(positive_scores) - 1, int(np.ceil(target * len(positive_scores))) - 1)
    return float(positive_scores[max(index, 0)])


def threshold_for_specificity(labels, scores, target: float) -> float:
    """The lowest threshold whose specificity (score < threshold for negatives) is at least `target`."""
    negative_scores = np.sort(np.asarray(scores)[~np.asarray(labels, bool)])
    index = min(len(negative_scores) - 1, int(np.ceil(target * len(negative_scores))) - 1)
    return float(np.nextafter(negative_scores[max(index, 0)], np.inf))


def operating_point(labels, scores, threshold: float) -> dict[str, float]:
    labels, predicted = np.asarray(labels, bool), np.asarray(scores) >= threshold
    return {
        "threshold": float(threshold),
        "sensitivity": float((predicted & labels).sum() / max(1, labels.sum())),
        "specificity": float((~predicted & ~labels).sum() / max(1, (~labels).sum())),
    }


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (predicted & truth).sum() / total)


def box_iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_hit_rate(predicted_boxes: list[list], truth_boxes: list[list], iou: float = 0.1) -> float:
    """Share of annotated fracture boxes that some predicted box overlaps with IoU >= `iou`."""
    total = hits = 0
    for predicted, truth in zip(predicted_boxes, truth_boxes, strict=True):
        for box in truth:
            total += 1
            hits += any(box_iou(box, p) >= iou for p in predicted)
    return hits / total if total else float("nan")
