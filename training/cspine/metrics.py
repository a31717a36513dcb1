"""Metrics of the cervical-spine models: the RSNA 2022 competition loss, ROC AUCs, Dice.

The competition metric (RSNA 2022 Cervical Spine Fracture Detection, Kaggle, evaluation page and
the hosts' clarification in discussion 341854; re-implemented in openai/mle-bench's grader):
for each study, eight binary log losses (patient_overall, C1 … C7) are weighted — patient_overall
7 if negative and 14 if positive, each vertebra 1 if negative and 2 if positive — summed and
divided by that study's sum of weights; the score is the mean over studies. Probabilities are
clipped to [1e-15, 1 − 1e-15]. Lower is better; always answering 0.5 scores ln 2 ≈ 0.693.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.common.metrics import bootstrap_auc_ci, roc_auc

EPSILON = 1e-15
NEGATIVE_WEIGHTS = np.array([7.0, 1, 1, 1, 1, 1, 1, 1])  # patient_overall, C1 … C7
POSITIVE_WEIGHTS = np.array([14.0, 2, 2, 2, 2, 2, 2, 2])


def weighted_log_loss(truth: np.ndarray, predicted: np.ndarray) -> float:
    """RSNA 2022 score of (studies, 8) arrays ordered patient_overall, C1 … C7."""
    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.clip(np.asarray(predicted, dtype=np.float64), EPSILON, 1 - EPSILON)
    if truth.ndim != 2 or truth.shape[1] != 8 or predicted.shape != truth.shape:
        raise ValueError(
            f"truth {truth.shape} and predicted {predicted.shape}: expected (studies, 8) each,"
            " columns patient_overall, C1 … C7"
        )
    if not np.isin(truth, (0.0, 1.0)).all():
        raise ValueError("truth must be 0 or 1")
    losses = -(truth * np.log(predicted) + (1 - truth) * np.log(1 - predicted))
    weights = truth * POSITIVE_WEIGHTS + (1 - truth) * NEGATIVE_WEIGHTS
    return float(np.mean((losses * weights).sum(axis=1) / weights.sum(axis=1)))


def auc_with_ci(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, object]:
    """ROC AUC with its 95% percentile-bootstrap CI, or a reason when one class is missing."""
    labels_array, scores_array = np.asarray(labels, bool), np.asarray(scores, np.float64)
    if labels_array.all() or not labels_array.any():
        return {"roc_auc": None, "roc_auc_95ci": None, "note": "needs positive and negative cases",
                "positives": int(labels_array.sum()), "count": len(labels_array)}
    return {
        "roc_auc": round(roc_auc(labels_array, scores_array), 4),
        "roc_auc_95ci": [round(v, 4) for v in bootstrap_auc_ci(labels_array, scores_array, seed=seed)],
        "positives": int(labels_array.sum()),
        "count": len(labels_array),
    }


def dice_per_label(predicted: np.ndarray, truth: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label value present in either map (absent from both: left out)."""
    scores = {}
    for label in labels:
        p, t = predicted == label, truth == label
        total = int(p.sum()) + int(t.sum())
        if total:
            scores[label] = 2.0 * int((p & t).sum()) / total
    return scores


def report(
    truth: np.ndarray, predicted: np.ndarray, dice: Sequence[dict[int, float]], seed: int = 0
) -> dict[str, object]:
    """Test-split numbers from (studies, 8) truth and predictions and per-study Dice maps."""
    from node.pipelines.cspine.findings import VERTEBRAE

    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, np.float64)
    per_label: dict[str, list[float]] = {name: [] for name in VERTEBRAE}
    for study in dice:
        for label, value in study.items():
            per_label[VERTEBRAE[label - 1]].append(value)
    dice_means = {name: round(float(np.mean(v)), 4) for name, v in per_label.items() if v}
    vertebra_auc = auc_with_ci(truth[:, 1:].reshape(-1), predicted[:, 1:].reshape(-1), seed)
    patient_auc = auc_with_ci(truth[:, 0], predicted[:, 0], seed)
    return {
        "studies": len(truth),
        "fractured_studies": int(truth[:, 0].sum()),
        "fractured_vertebrae": int(truth[:, 1:].sum()),
        "weighted_log_loss": round(weighted_log_loss(truth, predicted), 4),
        "vertebra_roc_auc": vertebra_auc["roc_auc"],
        "vertebra_roc_auc_95ci": vertebra_auc["roc_auc_95ci"],
        "patient_roc_auc": patient_auc["roc_auc"],
        "patient_roc_auc_95ci": patient_auc["roc_auc_95ci"],
        "dice": dice_means,
        "dice_mean": round(float(np.mean(list(dice_means.values()))), 4) if dice_means else None,
        "dice_studies": len(dice),
    }
