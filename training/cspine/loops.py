"""Training loops of the two cervical-spine networks (PyTorch, CPU or CUDA).

Vertebrae: random patches of the bundle's roi size (three in four centred on a vertebra voxel),
left-right flips and intensity jitter, Dice + cross-entropy (MONAI DiceCELoss), AdamW with a
one-cycle schedule; validated by sliding window on whole validation volumes (mean Dice over
C1–C7), best epoch kept. Fracture: crops shifted by up to ±4 voxels, left-right flips and
intensity jitter (none of which removes a cleft or a height loss); balanced batches (half
fractured) with plain binary cross-entropy, then the output recalibrated for the competition
metric's 2 : 1 weights (prior shift, and a Platt fit on validation baked into the last layer);
best epoch by that calibrated validation loss.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from tqdm import tqdm

from training.common import checkpoints
from training.common.epochs import Log, fit_epochs
from training.cspine.data import CROP_MARGIN, CropSet, SegmentationCase
from training.cspine.metrics import dice_per_label

BONE = 0.45  # preprocessed intensity of ~350 HU on the vertebra bundle's [-1000, 2000] HU scale
POSITIVE_WEIGHT = 2.0  # RSNA 2022 per-vertebra weight of a fractured vertebra (negative: 1)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- vertebrae ------------------------------------------------------------------------------------


def _foreground(case: SegmentationCase, rng: np.random.Generator, keep: int = 4000) -> np.ndarray:
    """Where patches centre: vertebra voxels; in a series without any (a negative), its bone, so
    the model sees the other spine it must leave alone rather than air and soft tissue."""
    points = np.argwhere(case.labels > 0)
    if not len(points):
        points = np.argwhere(case.image > BONE)
    if len(points) > keep:
        points = points[rng.choice(len(points), keep, replace=False)]
    return points


def _patch(case: SegmentationCase, points: np.ndarray, size: Sequence[int], rng: np.random.Generator,
           augment: bool) -> tuple[np.ndarray, np.ndarray]:
    shape = np.array(case.image.shape)
    if len(points) and rng.random() < 0.75:
        centre = points[rng.integers(len(points))] + rng.integers(-16, 17, 3)
    else:
        centre = np.array([rng.integers(0, n) for n in shape])
    start = np.clip(centre - np.array(size) // 2, 0, np.maximum(shape - np.array(size), 0))
    region = tuple(slice(int(s), int(s) + n) for s, n in zip(start, size, strict=True))
    image = np.zeros(size, np.float32)
    labels = np.zeros(size, np.int64)
    part = case.image[region].astype(np.float32)
    image[tuple(slice(0, n) for n in part.shape)] = part
    labels[tuple(slice(0, n) for n in part.shape)] = case.labels[region]
    if augment:
        if rng.random() < 0.5:  # axis 0 is right-left on the RAS grid
            image, labels = image[::-1], labels[::-1]
        image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.04, 0.04)
        image = image + rng.normal(0, rng.uniform(0, 0.01), image.shape).astype(np.float32)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def segmentation_dice(network: torch.nn.Module, cases: Sequence[SegmentationCase], roi: Sequence[int]) -> float:
    """Mean over cases of the mean Dice over C1–C7 on the model grid (sliding window, argmax)."""
    device = next(network.parameters()).device
    network.eval()
    scores = []
    with torch.no_grad():
        for case in cases:
            image = torch.from_numpy(case.image.astype(np.float32))[None, None].to(device)
            logits = sliding_window_inference(image, roi, 2, network, overlap=0.25, mode="gaussian")
            predicted = logits[0].argmax(0).cpu().numpy()
            dice = dice_per_label(predicted, case.labels, range(1, 8))
            scores.append(float(np.mean(list(dice.values()))) if dice else 1.0)
    return float(np.mean(scores)) if scores else float("nan")


def train_vertebrae(
    network: torch.nn.Module, train: Sequence[SegmentationCase], val: Sequence[SegmentationCase],
    roi: Sequence[int], epochs: int, seed: int, log: Log, patches_per_case: int = 1, batch_size: int = 2,
    learning_rate: float = 3e-3, checkpoint: Path | None = None, resume: bool = False, validate_every: int = 1,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Best weights by validation Dice (validated every `validate_every` epochs and after the last).
    `checkpoint`: the file rewritten after every epoch, which `resume` continues from."""
    rng = np.random.default_rng(seed)
    device = _device()
    network.to(device)
    points = [_foreground(case, rng) for case in train]
    steps = max(1, (len(train) * patches_per_case) // batch_size)
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps * epochs, pct_start=0.15)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)  # Dice pooled over the batch: patches miss vertebrae
    progress: dict = {"history": [], "best_dice": -1.0, "best_state": copy.deepcopy(network.state_dict())}
    run = None
    if checkpoint:  # the settings it records, the weights still the initial ones
        run = checkpoints.Run(checkpoint, {
            "epochs": epochs, "seed": seed, "roi": list(roi), "patches_per_case": patches_per_case,
            "batch_size": batch_size, "learning_rate": learning_rate, "validate_every": validate_every,
            "train_series": checkpoints.fingerprint(case.uid for case in train),
            "validation_series": checkpoints.fingerprint(case.uid for case in val),
            "initial_weights": checkpoints.fingerprint(network.state_dict().values()),
        }, network, optimizer, schedule, rng)

    def one_epoch(epoch: int) -> str:
        network.train()
        started, total = time.monotonic(), 0.0
        bar = tqdm(range(steps), desc=f"vertebrae epoch {epoch}/{epochs}", unit="batch", leave=False)
        for _ in bar:
            picks = rng.integers(0, len(train), batch_size)
            pairs = [_patch(train[i], points[i], roi, rng, augment=True) for i in picks]
            images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None].to(device)
            labels = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None].to(device)
            optimizer.zero_grad()
            loss = loss_fn(network(images), labels)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        entry: dict = {"epoch": epoch, "loss": round(total / steps, 4)}
        if epoch % validate_every == 0 or epoch == epochs:
            dice = segmentation_dice(network, val, roi)
            entry["val_dice"] = round(dice, 4)
            if dice > progress["best_dice"] or np.isnan(dice):
                progress["best_dice"], progress["best_state"] = dice, copy.deepcopy(network.state_dict())
        entry["seconds"] = round(time.monotonic() - started, 1)
        progress["history"].append(entry)
        return f"vertebrae epoch {epoch}: loss {total / steps:.4f}, val Dice {entry.get('val_dice', '-')}"

    fit_epochs(epochs, one_epoch, progress, log, run=run, resume=resume)
    best_state, history = progress["best_state"], progress["history"]
    return {k: v.cpu() for k, v in best_state.items()}, history


# -- fracture -------------------------------------------------------------------------------------


def _stack(sets: Sequence[CropSet]) -> tuple[np.ndarray, np.ndarray]:
    crops = [s.crops for s in sets if len(s.crops)]
    flags = [s.fractured for s in sets if len(s.crops)]
    if not crops:
        return np.zeros((0, 2, 1, 1, 1), np.uint8), np.zeros(0, bool)
    return np.concatenate(crops), np.concatenate(flags)


def crop_batch(crops: np.ndarray, index: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
    """Float crops of the network's size from cached uint8 ones with margin (random shifts if rng)."""
    size = [n - m for n, m in zip(crops.shape[2:], CROP_MARGIN, strict=True)]
    out = np.empty((len(index), 2, *size), np.float32)
    for row, i in enumerate(index):
        if rng is None:
            offset = [m // 2 for m in CROP_MARGIN]
        else:
            offset = [int(rng.integers(0, m + 1)) for m in CROP_MARGIN]
        crop = crops[i][:, offset[0]:offset[0] + size[0], offset[1]:offset[1] + size[1], offset[2]:offset[2] + size[2]]
        out[row] = crop
        out[row, 0] /= 255.0
        if rng is not None:
            if rng.random() < 0.5:
                out[row] = out[row, :, :, :, ::-1]
            out[row, 0] = out[row, 0] * rng.uniform(0.92, 1.08) + rng.uniform(-0.03, 0.03)
    return torch.from_numpy(out)


def predict_logits(network: torch.nn.Module, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
    device = next(network.parameters()).device
    network.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            index = np.arange(start, min(start + batch_size, len(crops)))
            out.append(network(crop_batch(crops, index, None).to(device)).reshape(-1).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def predict_crops(network: torch.nn.Module, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-predict_logits(network, crops, batch_size)))


def _weighted_bce(probabilities: np.ndarray, fractured: np.ndarray) -> float:
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    weights = np.where(fractured, POSITIVE_WEIGHT, 1.0)
    return float(np.sum(-weights * (fractured * np.log(p) + (~fractured) * np.log(1 - p))) / weights.sum())


def platt(logits: np.ndarray, fractured: np.ndarray, ridge: float = 1.0) -> tuple[float, float]:
    """(a, b) minimising the 2 : 1 weighted log loss of sigmoid(a * logit + b) (Newton steps, a small
    ridge towards (1, 0) so a few validation vertebrae cannot make it explode; a >= 0)."""
    y = fractured.astype(np.float64)
    if not len(y) or y.all() or not y.any():
        return 1.0, 0.0
    w = np.where(fractured, POSITIVE_WEIGHT, 1.0)
    a, b = 1.0, 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * logits + b)))
        g, h = w * (p - y), w * p * (1 - p)
        grad = np.array([np.sum(g * logits) + ridge * (a - 1.0), np.sum(g) + ridge * b])
        hess = np.array([[np.sum(h * logits * logits) + ridge, np.sum(h * logits)],
                         [np.sum(h * logits), np.sum(h) + ridge]])
        step = np.linalg.solve(hess, grad)
        a, b = max(0.0, a - float(step[0])), b - float(step[1])
        if np.abs(step).max() < 1e-8:
            break
    return a, b


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def balanced_batch(fractured: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Half fractured, half intact crops (drawn at random; all of one kind if the other is absent)."""
    positives, negatives = np.flatnonzero(fractured), np.flatnonzero(~fractured)
    if not len(positives) or not len(negatives):
        return rng.choice(len(fractured), batch_size, replace=len(fractured) < batch_size)
    half = batch_size // 2
    return np.concatenate([rng.choice(positives, half, replace=len(positives) < half),
                           rng.choice(negatives, batch_size - half, replace=len(negatives) < batch_size - half)])


def train_fracture(
    network: torch.nn.Module, train: Sequence[CropSet], val: Sequence[CropSet], epochs: int, seed: int,
    log: Log, batch_size: int = 16, learning_rate: float = 2e-3, checkpoint: Path | None = None, resume: bool = False,
) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """Balanced batches (fractured vertebrae are ~1 in 6 crops: uniform batches hold two or three, too
    few to learn the clefts from) with plain BCE; the network then estimates the likelihood ratio, so
    the log prior odds of the competition weighting, log(2 pi / (1 - pi)) with pi the training share of
    fractured crops, is added to its output bias. Each epoch is scored on validation after a Platt fit
    there (a, b of sigmoid(a * logit + b)); the best epoch's weights get that fit baked into the last
    linear layer, so the bundle's sigmoid output is calibrated for the 2 : 1 weighted log loss.
    `checkpoint`: the file rewritten after every epoch, which `resume` continues from.
    Returns (weights, history, calibration facts)."""
    rng = np.random.default_rng(seed)
    device = _device()
    network.to(device)
    crops, fractured = _stack(train)
    val_crops, val_fractured = _stack(val)
    if not len(crops):
        raise ValueError("no vertebra crops to train the fracture model on")
    share = float(np.clip(fractured.mean(), 1e-3, 1 - 1e-3))
    prior = float(np.log(POSITIVE_WEIGHT * share / (1 - share)))
    steps = max(1, len(crops) // batch_size)
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps * epochs, pct_start=0.2)
    # best_fit is a list, as checkpoints have always held it
    progress: dict = {"history": [], "best_loss": float("inf"), "best_state": copy.deepcopy(network.state_dict()),
                      "best_fit": [1.0, 0.0]}
    run = None
    if checkpoint:  # the settings it records, the weights still the initial ones
        run = checkpoints.Run(checkpoint, {
            "epochs": epochs, "seed": seed, "batch_size": batch_size, "learning_rate": learning_rate,
            "train_crops": checkpoints.fingerprint([crops, fractured]),
            "validation_crops": checkpoints.fingerprint([val_crops, val_fractured]),
            "initial_weights": checkpoints.fingerprint(network.state_dict().values()),
        }, network, optimizer, schedule, rng)

    def one_epoch(epoch: int) -> str:
        network.train()
        started, total = time.monotonic(), 0.0
        bar = tqdm(range(steps), desc=f"fracture epoch {epoch}/{epochs}", unit="batch", leave=False)
        for _ in bar:
            index = balanced_batch(fractured, batch_size, rng)
            images = crop_batch(crops, index, rng).to(device)
            target = torch.from_numpy(fractured[index].astype(np.float32)).to(device)
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(network(images).reshape(-1), target)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        entry: dict = {"epoch": epoch, "loss": round(total / steps, 4)}
        if len(val_crops):
            logits = predict_logits(network, val_crops) + prior
            fit = platt(logits, val_fractured)
            val_loss = _weighted_bce(_sigmoid(fit[0] * logits + fit[1]), val_fractured)
            entry.update(val_loss_prior=round(_weighted_bce(_sigmoid(logits), val_fractured), 4),
                         val_auc=round(_auc(val_fractured, logits), 4), platt=[round(fit[0], 4), round(fit[1], 4)])
        else:
            val_loss, fit = total / steps, (1.0, 0.0)
        entry.update(val_loss=round(val_loss, 4), seconds=round(time.monotonic() - started, 1))
        progress["history"].append(entry)
        if val_loss < progress["best_loss"]:
            progress.update(best_loss=val_loss, best_state=copy.deepcopy(network.state_dict()), best_fit=list(fit))
        return (f"fracture epoch {epoch}: loss {total / steps:.4f}, val weighted BCE {val_loss:.4f} (Platt"
                f" {fit[0]:.2f}, {fit[1]:.2f}), val AUC {entry.get('val_auc', '-')}")

    fit_epochs(epochs, one_epoch, progress, log, run=run, resume=resume)
    history, best_state, best_fit = progress["history"], progress["best_state"], progress["best_fit"]
    state = {k: v.detach().cpu().clone() for k, v in best_state.items()}
    weight, bias = _last_linear(state)
    a, b = best_fit
    state[weight] = state[weight] * a
    state[bias] = (state[bias] + prior) * a + b
    return state, history, {"sampling": "balanced batches (half fractured)", "loss": "binary cross-entropy",
                            "fractured_share": round(share, 4), "prior_logit": round(prior, 4),
                            "validation_platt": [round(a, 4), round(b, 4)]}


def _last_linear(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """Names of the final linear layer's weight and bias (MONAI ResNet: fc.weight, fc.bias)."""
    names = [k for k in state if k.endswith(".weight") and state[k].ndim == 2]
    if not names or names[-1][: -len("weight")] + "bias" not in state:
        raise ValueError("the fracture network has no final linear layer with a bias to calibrate")
    return names[-1], names[-1][: -len("weight")] + "bias"


def _auc(fractured: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[fractured], scores[~fractured]
    if not len(positives) or not len(negatives):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([positives, negatives]), kind="stable"), kind="stable") + 1.0
    return float((ranks[: len(positives)].sum() - len(positives) * (len(positives) + 1) / 2)
                 / (len(positives) * len(negatives)))
