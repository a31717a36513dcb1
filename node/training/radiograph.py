"""`fracnode train radiograph` / `fracnode evaluate radiograph`: FracAtlasNet on FracAtlas.

Training: a group-wise split (train/val/test), class-balanced losses, batch-level augmentation
in torch, a checkpoint every epoch, the best epoch by validation ROC AUC kept. Evaluation: the
two operating points are chosen on the validation split and then measured, with every other
metric, on the test split only. The report goes into the bundle's metadata and model card.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from node.inference import bundle as bundles
from node.training import checkpoints, fracatlas, metrics


@dataclass(frozen=True)
class TrainSettings:
    data: Path
    bundle: Path
    cache: Path
    epochs: int = 24
    batch_size: int = 16
    learning_rate: float = 2e-3
    seed: int = 7  # the split (and, without train_seed, the training run)
    train_seed: int | None = None  # initial weights, batch order and augmentation; the split stays
    threads: int = 0
    init: Path | None = None  # start from these weights (fine-tuning) instead of random ones
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights
    resume: bool = False  # continue from the checkpoint an interrupted run of the same settings left
    pretrained: bool = False  # start the network's EfficientNet-Lite encoder from ImageNet weights
    freeze_stages: int = 0  # keep the stem and the encoder's first N stages at their initial weights
    warmup_epochs: int = 0  # train only the decoder and heads (whole encoder held still) for N epochs
    encoder_lr_scale: float = 1.0  # the encoder's peak learning rate relative to the decoder's and heads'


def _standardize(images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per image: zero mean, unit variance over the image area; padding 0 (as geometry.standardize)."""
    count = valid.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    mean = (images * valid).sum(dim=(1, 2, 3), keepdim=True) / count
    var = (((images - mean) * valid) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count
    return (images - mean) / var.sqrt().clamp(min=1e-3) * valid


def _batch(arrays: fracatlas.Arrays, index: np.ndarray, augment: bool, rng: np.random.Generator,
           standardize: bool = True):
    images = torch.from_numpy(arrays.images[index]).float().unsqueeze(1) / 255.0
    masks = torch.from_numpy(arrays.masks[index]).float().unsqueeze(1)
    valid = torch.from_numpy(arrays.valid[index]).float().unsqueeze(1)
    if augment:
        n = len(index)
        angle = torch.from_numpy(rng.uniform(-0.25, 0.25, n)).float()
        scale = torch.from_numpy(rng.uniform(0.85, 1.2, n)).float()
        flip = torch.from_numpy(rng.choice([-1.0, 1.0], n)).float()
        shift = torch.from_numpy(rng.uniform(-0.08, 0.08, (n, 2))).float()
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, align_corners=False)
        masks = (F.grid_sample(masks, grid, align_corners=False) > 0.5).float()
        valid = (F.grid_sample(valid, grid, align_corners=False) > 0.5).float()
        gamma = torch.from_numpy(rng.uniform(0.7, 1.4, (n, 1, 1, 1))).float()
        images = images.clamp(0, 1) ** gamma
        # contrast and brightness, as different exposures and processing would give
        contrast = torch.from_numpy(rng.uniform(0.8, 1.25, (n, 1, 1, 1))).float()
        brightness = torch.from_numpy(rng.uniform(-0.08, 0.08, (n, 1, 1, 1))).float()
        images = ((images - 0.5) * contrast + 0.5 + brightness).clamp(0, 1) * valid
    if standardize:
        images = _standardize(images, valid)
    return images.contiguous(memory_format=torch.channels_last), masks, valid


def _losses(outputs, masks, fractured, body, pos_weight):
    fracture_logit, region_logits, body_logits = outputs[:3]  # FracAtlasLiteNet adds atypicality
    classification = F.binary_cross_entropy_with_logits(fracture_logit, fractured, pos_weight=pos_weight)
    pixel = F.binary_cross_entropy_with_logits(region_logits, masks, pos_weight=torch.tensor(10.0))
    probabilities = torch.sigmoid(region_logits)
    positive = fractured > 0
    if positive.any():
        p, m = probabilities[positive], masks[positive]
        overlap = (p * m).sum(dim=(1, 2, 3))
        soft_dice = 1 - (2 * overlap + 1) / (p.sum(dim=(1, 2, 3)) + m.sum(dim=(1, 2, 3)) + 1)
        region = pixel + soft_dice.mean()
    else:
        region = pixel
    body_loss = F.binary_cross_entropy_with_logits(body_logits, body)
    return classification + region + 0.3 * body_loss


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
def predict(network: torch.nn.Module, arrays: fracatlas.Arrays, batch_size: int = 32, desc: str = "predicting",
            standardize: bool = True) -> Predictions:
    """Fracture logits, region probability maps, body-region probabilities (and atypicality) per image."""
    network.eval()
    logits, maps, body, atypical = [], [], [], []
    rng = np.random.default_rng(0)
    for start in tqdm(range(0, len(arrays.ids), batch_size), desc=desc, unit="batch", leave=False):
        index = np.arange(start, min(start + batch_size, len(arrays.ids)))
        images, _, _ = _batch(arrays, index, augment=False, rng=rng, standardize=standardize)
        outputs = network(images)
        logits.append(outputs[0].float().numpy())
        maps.append(torch.sigmoid(outputs[1])[:, 0].numpy().astype(np.float16))
        body.append(torch.sigmoid(outputs[2]).numpy())
        if len(outputs) > 3:
            atypical.append(outputs[3].float().numpy())
    return Predictions(np.concatenate(logits), np.concatenate(maps), np.concatenate(body),
                       np.concatenate(atypical) if atypical else None)


@torch.inference_mode()
def fit_typicality(network: Any, arrays: fracatlas.Arrays, batch_size: int = 32) -> dict[str, float]:
    """Fit the network's typicality model (mean, principal axes, variances of its pooled head features)
    on `arrays` (the training split) and store it in the network's buffers."""
    network.eval()
    rng = np.random.default_rng(0)
    features = []
    for start in tqdm(range(0, len(arrays.ids), batch_size), desc="typicality", unit="batch", leave=False):
        index = np.arange(start, min(start + batch_size, len(arrays.ids)))
        images, _, _ = _batch(arrays, index, augment=False, rng=rng, standardize=False)
        features.append(network.pooled_features(images).double())
    stacked = torch.cat(features)
    mean = stacked.mean(dim=0)
    centred = stacked - mean
    axes_count = int(network.typicality_axes)
    _, singular, vectors = torch.linalg.svd(centred, full_matrices=False)
    variances = singular[:axes_count] ** 2 / (len(stacked) - 1)
    axes = vectors[:axes_count].T
    coordinates = centred @ axes
    residual = (centred**2).sum(dim=1) - (coordinates**2).sum(dim=1)
    # Fewer images than axes (tiny data) leaves some variances ~0: a floor keeps the distance finite.
    floor = float(variances[0]) * 1e-4 + 1e-12
    network.feature_mean.copy_(mean.float())
    network.feature_axes.copy_(axes.float())
    network.feature_variances.copy_(variances.clamp(min=floor).float())
    network.residual_variance.copy_(residual.mean().clamp(min=floor).reshape(1).float())
    explained = float(variances.sum() / (centred**2).sum() * (len(stacked) - 1))
    return {"images": len(stacked), "axes": axes_count, "variance_explained": round(explained, 4)}


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


def set_input_size(bundle_root: Path, size: int, input_scale: int | None = None) -> None:
    """Rewrite the bundle's contract (input, region map) and inference config for `size`×`size` input;
    `input_scale` (1 or 2, see FracAtlasNet) is set too when given, else the bundle's is kept."""
    root = Path(bundle_root)
    meta_path, inference_path = root / "configs" / "metadata.json", root / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    network_def = inference["network_def"]
    if input_scale is not None:
        if input_scale not in (1, 2):
            raise bundles.BundleError(f"input scale {input_scale}: use 1 or 2")
        network_def["input_scale"] = input_scale
    # five halvings, one more through FracAtlasNet's finer stem
    halvings = 4 + int(network_def.get("input_scale", 1)) if network_def.get("_target_") != LITE_TARGET else 5
    if size < 2 ** (halvings + 1) or size % 2**halvings:
        raise bundles.BundleError(
            f"input size {size}: use a multiple of {2**halvings} of at least {2 ** (halvings + 1)}"
            f" (the network halves it {halvings} times)")
    meta = json.loads(meta_path.read_text())
    data_format = meta["network_data_format"]
    data_format["inputs"]["image"]["spatial_shape"] = [size, size]
    data_format["outputs"]["regions"]["spatial_shape"] = [size, size]
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    inference["spatial_size"] = size
    inference_path.write_text(json.dumps(inference, indent=4) + "\n")


ENSEMBLE_TARGET = "scripts.network.FracAtlasEnsemble"
LITE_TARGET = "scripts.network.FracAtlasLiteNet"
LITE_PREPROCESSING = (
    "grayscale, Modality/VOI LUT applied, MONOCHROME1 inverted, scaled to [0, 1]; letterboxed (long side ="
    " spatial_size, zero padding, bilinear); no standardization: the network repeats the channel to RGB and"
    " applies the ImageNet mean and standard deviation itself"
)


ATYPICALITY_OUTPUT = {
    "type": "score", "format": "classification", "num_channels": 1, "spatial_shape": [1], "dtype": "float32",
    "value_range": [], "is_onehot": False,
    "channel_def": {"0": "atypicality: squared Mahalanobis distance of the image's pooled features from the"
                         " training radiographs', per dimension (about 1 for a typical training image)"},
}


def set_encoder(bundle_root: Path, variant: str) -> None:
    """Make the bundle's network a FracAtlasLiteNet with an EfficientNet-`variant` encoder, and its
    preprocessing the [0, 1] input that network normalizes itself (ImageNet statistics)."""
    from node.training.pretrained import SOURCES

    if variant not in SOURCES:
        raise bundles.BundleError(f"encoder {variant!r}: use one of {', '.join(SOURCES)}")
    inference_path = Path(bundle_root) / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    inference["network_def"] = {"_target_": LITE_TARGET, "variant": variant, "n_body_regions": 4,
                                "fpn_channels": 64, "dropout": 0.3, "drop_path": 0.1}
    inference["preprocessing"] = {"description": LITE_PREPROCESSING, "letterbox": "@spatial_size",
                                  "standardize": "none"}
    inference["postprocessing"] = {**inference.get("postprocessing", {}), "atypicality": "none"}
    inference_path.write_text(json.dumps(inference, indent=4) + "\n")
    meta_path = Path(bundle_root) / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["network_data_format"]["outputs"]["atypicality"] = ATYPICALITY_OUTPUT
    meta.setdefault("fracnode", {})["output_order"] = ["fracture", "regions", "body_region", "atypicality"]
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")


def _save_weights(bundle: bundles.Bundle, state: dict) -> None:
    """The bundle's weights file, replaced whole (a crash leaves the old or the new weights)."""
    bundle.weights_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(bundle.weights_path, state)


def combine(bundle_root: Path, member_roots: list[Path]) -> dict:
    """Make `bundle_root` an ensemble of the trained single networks in `member_roots` (bundles).

    Every member must have the same network_def and input size, and weights matching its recorded
    sha256. Returns the training record: each member's own record, and its weights' sha256.
    """
    if len(member_roots) < 2:
        raise bundles.BundleError("an ensemble needs at least two trained bundles")
    loaded = [bundles.read(root) for root in member_roots]
    first = loaded[0]
    definition = dict(first.config["network_def"])
    if definition.get("_target_") == ENSEMBLE_TARGET:
        raise bundles.BundleError(f"{first.root} is already an ensemble: give the bundles of single networks")
    shape = first.inputs["image"]["spatial_shape"]
    for other in loaded[1:]:
        if other.config["network_def"] != definition or other.inputs["image"]["spatial_shape"] != shape:
            raise bundles.BundleError(
                f"{other.root}: network_def or input size differs from {first.root}; members must share both")
    states = []
    for member in loaded:
        network = bundles.build_network(member)
        bundles.load_weights(member, network)  # refuses weights that do not match their sha256
        states.append(network.state_dict())
    root = Path(bundle_root)
    set_input_size(root, int(shape[0]))
    inference_path = root / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    inference["network_def"] = {**definition, "_target_": ENSEMBLE_TARGET, "members": len(loaded)}
    inference_path.write_text(json.dumps(inference, indent=4) + "\n")
    target = bundles.read(root)
    network = bundles.build_network(target)
    for part, state in zip(member_networks(network), states, strict=True):
        part.load_state_dict(state)
    _save_weights(target, network.state_dict())
    return {"members": [{**(member.extras.get("training") or {}), "weights_sha256": member.weights_sha256}
                        for member in loaded]}


def _load_splits(settings: TrainSettings, size: int):
    records = fracatlas.read_manifest(settings.data)
    parts = fracatlas.split(records, seed=settings.seed)
    return {name: fracatlas.build(settings.data, members, size, settings.cache) for name, members in parts.items()}


def load_initial_weights(network: torch.nn.Module, state: dict) -> list[str]:
    """Load `state` into `network` for fine-tuning; return the names it did not hold.

    Only the layers that a network declares new at a finer input scale (`fine_tune_new`, e.g.
    FracAtlasNet's stem reduction, which starts as a plain average) may be missing from `state`;
    anything else missing or left over is an error, as in a strict load.
    """
    missing, unexpected = network.load_state_dict(state, strict=False)
    new = {name for module in network.modules() for name in getattr(module, "fine_tune_new", ())}
    unexplained = [key for key in missing if not any(f".{name}." in f".{key}" for name in new)]
    if unexpected or unexplained:
        raise bundles.BundleError(
            "the initial weights do not fit the bundle's network: "
            + "; ".join(part for part in (
                f"missing {', '.join(unexplained[:5])}" if unexplained else "",
                f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
            ) if part))
    return list(missing)


def member_networks(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The independently trained members of an ensemble network (`members` list), or the network itself."""
    found = getattr(network, "members", None)
    return list(found) if isinstance(found, torch.nn.ModuleList) else [network]


def train(settings: TrainSettings, log=print) -> dict:
    """Train the bundle's network; an ensemble's members one after another, each with its own seed."""
    run_seed = settings.seed if settings.train_seed is None else settings.train_seed
    torch.manual_seed(run_seed)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    bundle = bundles.read(settings.bundle)
    size = int(bundle.inputs["image"]["spatial_shape"][0])
    splits = _load_splits(settings, size)
    log(
        "split (grouped by group_id): "
        + ", ".join(f"{k} {len(v.ids)} images / {int(v.fractured.sum())} fractured" for k, v in splits.items())
    )
    network = bundles.build_network(bundle)
    encoder_weights = None
    if settings.pretrained and not settings.init:
        from node.training.pretrained import load_encoder

        encoder_weights = load_encoder(network)
        log(f"encoder initialised from {encoder_weights['weights']}, sha256 {encoder_weights['sha256'][:12]}…")
    if settings.init:
        added = load_initial_weights(network, torch.load(settings.init, map_location="cpu", weights_only=True))
        log(f"starting from {settings.init}" + (f" ({len(added)} tensors of the finer stem start afresh)" if added else ""))
    parts = member_networks(network)
    runs = []
    for k, member in enumerate(parts):
        folder = settings.cache / "checkpoints"
        if len(parts) > 1:
            folder = folder / f"member{k + 1}"
            log(f"ensemble member {k + 1} of {len(parts)}, training seed {run_seed + k}")
        state, run = _fit(settings, member, splits["train"], splits["val"], run_seed + k, folder, log,
                          standardizes(bundle))
        member.load_state_dict(state)
        runs.append(run)
    post_hoc = fit_post_hoc(network, splits, log) if hasattr(network, "typicality_axes") else {}
    _save_weights(bundle, network.state_dict())
    common = {
        "epochs": settings.epochs,
        "seed": settings.seed,
        "learning_rate": settings.learning_rate,
        "fine_tuned_from_sha256": bundles.sha256(settings.init) if settings.init else None,
        "ema_decay": settings.ema_decay,
        "input_size": size,
        **({"pretrained_encoder": encoder_weights} if encoder_weights else {}),
        **post_hoc,
        **({"freeze_stages": settings.freeze_stages, "warmup_epochs": settings.warmup_epochs,
            "encoder_lr_scale": settings.encoder_lr_scale} if getattr(network, "encoder", None) is not None else {}),
        **({"input_scale": scale} if (scale := int(bundle.config["network_def"].get("input_scale", 1))) != 1 else {}),
    }
    if len(parts) == 1:
        run = runs[0]
        if settings.train_seed is None:
            run.pop("train_seed")
        return {**common, **run}
    return {**common, "members": [{**common, **run} for run in runs]}


def fit_post_hoc(network: torch.nn.Module, splits: dict[str, fracatlas.Arrays], log) -> dict[str, Any]:
    """After training: the typicality model on the training split, then Platt scaling on validation."""
    typicality = fit_typicality(network, splits["train"])
    log(f"typicality model fitted on {typicality['images']} training images ({typicality['axes']} axes,"
        f" {100 * typicality['variance_explained']:.0f}% of the feature variance)")
    val = splits["val"]
    calibration = fit_calibration(network, predict(network, val, desc="calibrating", standardize=False).logits,
                                  val.fractured)
    log(f"fracture probability calibrated on the validation split: logit × {calibration['scale']:.3f}"
        f" + {calibration['bias']:.3f}")
    return {"typicality": typicality, "calibration": {**calibration, "fitted_on": "validation split (Platt scaling)"}}


def _run_settings(settings: TrainSettings, network: torch.nn.Module, seed: int, train_set: fracatlas.Arrays) -> dict:
    """What a checkpoint must have been written under for a run to continue from it."""
    return {
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "ema_decay": settings.ema_decay,
        "train_seed": seed,
        "input_size": int(train_set.images.shape[-1]),
        "train_images": checkpoints.fingerprint(map(str, train_set.ids)),
        "initial_weights": checkpoints.fingerprint(network.state_dict().values()),  # random, --init or ImageNet
        **({"freeze_stages": settings.freeze_stages, "warmup_epochs": settings.warmup_epochs,
            "encoder_lr_scale": settings.encoder_lr_scale} if _encoder(network) is not None else {}),
    }


def _encoder(network: torch.nn.Module) -> Any:
    """A pretrained-style network's encoder (FracAtlasLiteNet's EfficientNetLite, with `frozen_prefix`),
    or None (FracAtlasNet trains as one piece)."""
    encoder = getattr(network, "encoder", None)
    return encoder if isinstance(encoder, torch.nn.Module) and hasattr(encoder, "frozen_prefix") else None


def _parameter_groups(settings: TrainSettings, network: torch.nn.Module) -> list[dict[str, Any]]:
    """The optimizer's groups: the encoder's trainable parameters (at encoder_lr_scale) and the rest."""
    encoder = _encoder(network)
    if encoder is None:
        return [{"params": list(network.parameters()), "lr": settings.learning_rate}]
    frozen = {id(p) for module in encoder.frozen_prefix(settings.freeze_stages) for p in module.parameters()}
    inside = {id(p) for p in encoder.parameters()}
    return [
        {"params": [p for p in encoder.parameters() if id(p) not in frozen],
         "lr": settings.learning_rate * settings.encoder_lr_scale},
        {"params": [p for p in network.parameters() if id(p) not in inside], "lr": settings.learning_rate},
    ]


def _train_mode(settings: TrainSettings, network: torch.nn.Module, epoch: int) -> None:
    """Training mode, except what is held still: the frozen stages always, the whole encoder during the
    warm-up epochs (no gradients, and batch-norm statistics kept, so ImageNet's stay until it trains)."""
    network.train()
    encoder = _encoder(network)
    if encoder is None:
        return
    still = [encoder] if epoch <= settings.warmup_epochs else encoder.frozen_prefix(settings.freeze_stages)
    for parameter in encoder.parameters():
        parameter.requires_grad_(True)
    for module in still:
        module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def _fit(settings: TrainSettings, network: torch.nn.Module, train_set: fracatlas.Arrays, val_set: fracatlas.Arrays,
         seed: int, folder: Path, log, standardize: bool = True) -> tuple[dict, dict]:
    """One network's training run: its best (validated) state and what happened."""
    rng = np.random.default_rng(seed)
    network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # 1.2-1.9x faster convolutions on the CPU
    groups = _parameter_groups(settings, network)
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_set.ids) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in groups], total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.15
    )
    positives = float(train_set.fractured.sum())
    pos_weight = torch.tensor((len(train_set.ids) - positives) / max(positives, 1.0))
    folder.mkdir(parents=True, exist_ok=True)
    ema = None
    if settings.ema_decay > 0:
        # Averaged weights (buffers too, so batch-norm statistics match) are what gets validated and
        # kept: on a small dataset they are steadier from epoch to epoch than the raw weights.
        ema = torch.optim.swa_utils.AveragedModel(
            network, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True
        )
        log(f"validating an exponential moving average of the weights (decay {settings.ema_decay})")
    kept = ema.module if ema is not None else network
    run = checkpoints.Run(folder / "last.pt", _run_settings(settings, network, seed, train_set), network, optimizer,
                          scheduler, rng, ema)
    progress: dict[str, Any] = {"best": {"val_auc": -1.0, "epoch": 0}, "history": []}
    first_epoch = 1
    if settings.resume and (resumed := run.resume(log)):
        first_epoch, progress = resumed[0] + 1, resumed[1]
        best = progress["best"]
        log(f"best so far: epoch {best['epoch']}, val ROC AUC {best['val_auc']:.4f}")
        if best["epoch"] == resumed[0]:  # the run may have stopped between writing last.pt and best.pt
            checkpoints.save(folder / "best.pt", kept.state_dict())
    clock = time.monotonic()
    for epoch in range(first_epoch, settings.epochs + 1):
        _train_mode(settings, network, epoch)
        warming = _encoder(network) is not None and epoch <= settings.warmup_epochs
        if warming and epoch == first_epoch:
            log(f"warm-up: the encoder is held still for {settings.warmup_epochs} epoch(s)")
        order = rng.permutation(len(train_set.ids))
        started, total = time.monotonic(), 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{settings.epochs}", unit="batch")
        for step in bar:
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            images, masks, _ = _batch(train_set, index, augment=True, rng=rng, standardize=standardize)
            loss = _losses(
                network(images),
                masks,
                torch.from_numpy(train_set.fractured[index]),
                torch.from_numpy(train_set.body[index]),
                pos_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(network)
            total += loss.item()
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
        val_auc = metrics.roc_auc(val_set.fractured,
                                  predict(kept, val_set, desc="validating", standardize=standardize).logits)
        progress["history"].append({"epoch": epoch, "loss": total / steps_per_epoch, "val_auc": val_auc})
        improved = val_auc > progress["best"]["val_auc"]
        if improved:
            progress["best"] = {"val_auc": val_auc, "epoch": epoch}
        run.save(epoch, progress)
        if improved:  # after last.pt, which a resumed run rewrites best.pt from if this write was cut off
            checkpoints.save(folder / "best.pt", kept.state_dict())
        log(f"epoch {epoch}: loss {total / steps_per_epoch:.4f}, val ROC AUC {val_auc:.4f},"
            f" {time.monotonic() - started:.0f} s{checkpoints.time_left(clock, first_epoch, epoch, settings.epochs)}")
    best, history = progress["best"], progress["history"]
    (folder / "history.json").write_text(json.dumps(history, indent=2))
    log(f"best epoch {best['epoch']} (val ROC AUC {best['val_auc']:.4f})")
    state = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    return state, {"train_seed": seed, "best_epoch": best["epoch"], "history": history}


def evaluate(settings: TrainSettings, log=print) -> dict:
    """Measure the bundle's weights on the test split; every threshold chosen on the validation split."""
    from node.training import radiograph_report

    if settings.threads:
        torch.set_num_threads(settings.threads)
    bundle = bundles.read(settings.bundle)
    size = int(bundle.inputs["image"]["spatial_shape"][0])
    splits = _load_splits(settings, size)
    network = bundles.build_network(bundle)
    bundles.load_weights(bundle, network, verify=False)
    standardize = standardizes(bundle)

    def run(name: str) -> radiograph_report.Split:
        found = predict(network, splits[name], desc=f"{name} split", standardize=standardize)
        return radiograph_report.Split(splits[name], found.scores, found.maps, found.body, found.atypicality)

    val, test = run("val"), run("test")
    report = radiograph_report.measure(val, test, measured_on=(
        f"test split of the FracAtlas development subset: {len(test.scores)} images"
        f" ({int(test.labels.sum())} fractured), whole group_id groups never seen in training or"
        f" validation (split seed {settings.seed}); operating points, calibration, region threshold,"
        f" finding-site confidence and the intended-use limit chosen on the validation split"
        f" ({len(val.scores)} images)"
    ))
    log(json.dumps(report, indent=2))
    return report


def record(bundle_root: Path, report: dict, training: dict | None = None) -> None:
    """Write the measured numbers, operating points and weights hash into the bundle."""
    bundle = bundles.read(bundle_root)
    metadata = dict(bundle.metadata)
    metadata["eval_metrics"] = report
    extras = dict(metadata.get("fracnode", {}))
    extras["weights_sha256"] = bundles.sha256(bundle.weights_path)
    extras["operating_points"] = {
        "suspicious": report["suspicious"]["threshold"],
        "fracture": report["fracture"]["threshold"],
    }
    if "region_threshold" in report:
        extras["region_threshold"] = report["region_threshold"]
    if "finding_site" in report:
        extras["site_confidence"] = report["finding_site"]["threshold"]
    if "intended_use_gate" in report:
        extras["atypicality_limit"] = report["intended_use_gate"]["atypicality_limit"]
    if "dense_material" in report:
        extras["dense_percentile"] = 99.0
    if training:
        stage = {k: v for k, v in training.items() if k != "history"}
        if "members" in stage:  # an ensemble: each member's record, without its epoch-by-epoch history
            stage["members"] = [{k: v for k, v in member.items() if k != "history"} for member in stage["members"]]
        previous = extras.get("training")
        if stage.get("fine_tuned_from_sha256") and previous:
            # fine-tuned from the weights this bundle held: keep how those were trained
            earlier = previous.get("stages") or [previous]
            extras["training"] = {**stage, "stages": [*earlier, stage]}
        else:
            extras["training"] = stage
    metadata["fracnode"] = extras
    path = bundle_root / "configs" / "metadata.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(metadata, indent=4) + "\n")
    os.replace(partial, path)
