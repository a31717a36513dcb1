"""What the network says about a split (`predict`), and what is fitted after training: the typicality
model of the training images and Platt scaling on validation, both kept in the network's buffers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from node.inference import bundle as bundles
from training.radiograph import fracatlas
from training.radiograph.batches import batch


def standardizes(bundle: bundles.Bundle) -> bool:
    """Whether the bundle's preprocessing standardizes each image (FracAtlasNet) or leaves it in [0, 1]
    for a network that normalizes inside (the ImageNet-pretrained FracAtlasLiteNet)."""
    return (bundle.config.get("preprocessing") or {}).get("standardize", "image-area") != "none"


@dataclass(frozen=True)
class Predictions:
    """What the network says about every image of a split, in the split's order."""

    logits: np.ndarray  # float32 (N,): fracture logit (after any calibration inside the network)
    maps: np.ndarray  # float16 (N, S, S): fracture-region probability
    body: np.ndarray  # float32 (N, regions): body-region probabilities
    atypicality: np.ndarray | None  # float32 (N,), FracAtlasLiteNet only

    @property
    def scores(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))


@torch.inference_mode()
def predict(
    network: torch.nn.Module,
    arrays: fracatlas.Arrays,
    batch_size: int = 32,
    desc: str = "predicting",
    standardize: bool = True,
) -> Predictions:
    """Fracture logits, region probability maps, body-region probabilities (and atypicality) per image."""
    network.eval()
    logits, maps, body, atypical = [], [], [], []
    rng = np.random.default_rng(0)
    for start in tqdm(range(0, len(arrays.ids), batch_size), desc=desc, unit="batch", leave=False):
        index = np.arange(start, min(start + batch_size, len(arrays.ids)))
        images, _, _ = batch(arrays, index, augment=False, rng=rng, standardize=standardize)
        outputs = network(images)
        logits.append(outputs[0].float().numpy())
        maps.append(torch.sigmoid(outputs[1])[:, 0].numpy().astype(np.float16))
        body.append(torch.sigmoid(outputs[2]).numpy())
        if len(outputs) > 3:
            atypical.append(outputs[3].float().numpy())
    return Predictions(
        np.concatenate(logits),
        np.concatenate(maps),
        np.concatenate(body),
        np.concatenate(atypical) if atypical else None,
    )


@torch.inference_mode()
def fit_typicality(network: Any, arrays: fracatlas.Arrays, batch_size: int = 32) -> dict[str, Any]:
    """Fit the network's typicality model on `arrays` (the training split): the mean and the shrunk
    inverse covariance of its typicality features, stored in the network's buffers."""
    network.eval()
    rng = np.random.default_rng(0)
    features = []
    for start in tqdm(range(0, len(arrays.ids), batch_size), desc="typicality", unit="batch", leave=False):
        index = np.arange(start, min(start + batch_size, len(arrays.ids)))
        images, _, _ = batch(arrays, index, augment=False, rng=rng, standardize=False)
        with torch.no_grad():
            features.append(network.pooled_features(images).double())
    stacked = torch.cat(features)
    mean = stacked.mean(dim=0)
    centred = stacked - mean
    dimensions = stacked.shape[1]
    covariance = centred.T @ centred / max(1, len(stacked) - 1)
    shrinkage = float(network.typicality_shrinkage)
    # Shrunk towards its mean variance: invertible with fewer images than dimensions, and stable with few more.
    target = torch.trace(covariance) / dimensions + 1e-12
    shrunk = (1 - shrinkage) * covariance + shrinkage * target * torch.eye(dimensions, dtype=covariance.dtype)
    network.feature_mean.copy_(mean.float())
    network.feature_precision.copy_(torch.linalg.inv(shrunk).float())
    return {
        "images": len(stacked),
        "features": dimensions,
        "shrinkage": shrinkage,
        "features_of": "spatial mean and standard deviation of the encoder's stride-32 stage output",
    }


def fit_calibration(network: Any, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Platt scaling fitted on (validation) logits: the network's fracture logit becomes a·logit + b.

    Logistic regression of the labels on the raw logits by Newton's method; stored in the network's
    `calibration` buffer, composed with whatever calibration it had."""
    x = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    a, b = 1.0, 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        gradient = np.array([((p - y) * x).sum(), (p - y).sum()])
        w = p * (1 - p)
        hessian = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    old_scale, old_bias = (float(v) for v in network.calibration)
    with torch.no_grad():
        network.calibration.copy_(torch.tensor([a * old_scale, a * old_bias + b]))
    return {"scale": round(float(a), 6), "bias": round(float(b), 6)}


def fit_post_hoc(network: torch.nn.Module, splits: dict[str, fracatlas.Arrays], log) -> dict[str, Any]:
    """After training: the typicality model on the training split, then Platt scaling on validation."""
    typicality = fit_typicality(network, splits["train"])
    log(
        f"typicality model fitted on {typicality['images']} training images ({typicality['features']} features,"
        f" covariance shrinkage {typicality['shrinkage']})"
    )
    val = splits["val"]
    calibration = fit_calibration(
        network, predict(network, val, desc="calibrating", standardize=False).logits, val.fractured
    )
    log(
        f"fracture probability calibrated on the validation split: logit × {calibration['scale']:.3f}"
        f" + {calibration['bias']:.3f}"
    )
    return {"typicality": typicality, "calibration": {**calibration, "fitted_on": "validation split (Platt scaling)"}}
