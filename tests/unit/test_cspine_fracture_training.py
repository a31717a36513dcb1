"""The fracture classifier's sampling and calibration (training.cspine.loops)."""

from __future__ import annotations

import numpy as np
import torch

from training.cspine.data import CROP_MARGIN, CropSet
from training.cspine.loops import (
    POSITIVE_WEIGHT,
    balanced_batch,
    platt,
    predict_crops,
    train_fracture,
)


def test_balanced_batches_hold_half_fractured_crops_even_when_fractures_are_rare() -> None:
    rng = np.random.default_rng(0)
    fractured = np.zeros(600, bool)
    fractured[:30] = True  # 5%
    batches = [balanced_batch(fractured, 16, rng) for _ in range(50)]
    assert all(len(b) == 16 and fractured[b].sum() == 8 for b in batches)
    assert len(np.unique(np.concatenate(batches)[fractured[np.concatenate(batches)]])) > 20  # not one crop again


def test_platt_recovers_the_scaling_of_logits_drawn_from_a_logistic_model() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, 20000)
    a, b = 0.5, -1.0
    # outcomes drawn so that the 2:1 weighted loss is minimised at sigmoid(a z + b)
    p = 1 / (1 + np.exp(-(a * z + b)))
    q = p / (POSITIVE_WEIGHT - (POSITIVE_WEIGHT - 1) * p)  # undo the weighting's odds factor
    fractured = rng.random(len(z)) < q
    fit = platt(z, fractured, ridge=1e-3)
    assert abs(fit[0] - a) < 0.05 and abs(fit[1] - b) < 0.1
    assert platt(z, np.zeros(len(z), bool)) == (1.0, 0.0)


def _crops(rng: np.random.Generator, n: int, fractured: np.ndarray) -> CropSet:
    shape = [s + m for s, m in zip((8, 16, 16), CROP_MARGIN, strict=True)]
    crops = rng.integers(0, 60, (n, 2, *shape)).astype(np.uint8)
    crops[fractured, 0] += 150  # fractured crops are brighter: learnable
    return CropSet("x", crops, np.ones(n, np.int64), fractured, "reference")


def test_trained_weights_carry_the_validation_calibration_in_their_last_layer() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    flags = rng.random(96) < 0.2
    val_flags = rng.random(48) < 0.2
    train, val = _crops(rng, 96, flags), _crops(rng, 48, val_flags)
    network = torch.nn.Sequential(
        torch.nn.Conv3d(2, 4, 3), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(4, 1)
    )
    state, history, facts = train_fracture(
        network, [train], [val], epochs=3, seed=0, log=lambda _: None, batch_size=8, learning_rate=1e-2
    )
    assert facts["prior_logit"] == round(float(np.log(POSITIVE_WEIGHT * flags.mean() / (1 - flags.mean()))), 4)
    best = min(history, key=lambda h: h["val_loss"])
    network.load_state_dict(state)
    probabilities = predict_crops(network, val.crops)
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    w = np.where(val_flags, POSITIVE_WEIGHT, 1.0)
    loss = float(np.sum(-w * (val_flags * np.log(p) + (~val_flags) * np.log(1 - p))) / w.sum())
    assert abs(loss - best["val_loss"]) < 1e-3  # the shipped output is the calibrated one that was scored
    assert probabilities[val_flags].mean() > probabilities[~val_flags].mean()
