"""`fracnode train radiograph` / `fracnode evaluate radiograph`: the bundle's network on FracAtlas.

Training: a group-wise split (train/val/test), class-balanced losses, batch-level augmentation
in torch, a checkpoint every epoch, the best epoch by validation ROC AUC kept; a pretrained
encoder can be held still for a warm-up and partly frozen. Evaluation: every threshold is chosen
on the validation split and then measured, with every other metric, on the test split only
(`report`). The report goes into the bundle's metadata and model card (`bundle_edits.record`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from node.inference import bundle as bundles
from training.common import checkpoints, metrics
from training.common.epochs import fit_epochs
from training.radiograph import fracatlas
from training.radiograph.batches import batch
from training.radiograph.bundle_edits import load_initial_weights, member_networks, save_weights
from training.radiograph.posthoc import fit_post_hoc, predict, standardizes


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
    fold: tuple[int, int] | None = None  # (k, n): validate on fold k of a grouped n-fold cross-validation


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


def _fold_note(settings: TrainSettings, lead: str) -> str:
    return f"{lead}fold {settings.fold[0]} of {settings.fold[1]} of train + val" if settings.fold else ""


def _load_splits(settings: TrainSettings, size: int):
    records = fracatlas.read_manifest(settings.data)
    parts = fracatlas.split(records, seed=settings.seed)
    if settings.fold:
        parts = fracatlas.cross_validation_fold(parts, *settings.fold, seed=settings.seed)
    return {name: fracatlas.build(settings.data, members, size, settings.cache) for name, members in parts.items()}


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
        "split (grouped by group_id"
        + _fold_note(settings, "; validation ")
        + "): "
        + ", ".join(f"{k} {len(v.ids)} images / {int(v.fractured.sum())} fractured" for k, v in splits.items())
    )
    network = bundles.build_network(bundle)
    encoder_weights = None
    if settings.pretrained and not settings.init:
        from training.radiograph.pretrained import load_encoder

        encoder_weights = load_encoder(network)
        log(f"encoder initialised from {encoder_weights['weights']}, sha256 {encoder_weights['sha256'][:12]}…")
    if settings.init:
        added = load_initial_weights(network, torch.load(settings.init, map_location="cpu", weights_only=True))
        log(
            f"starting from {settings.init}"
            + (f" ({len(added)} tensors of the finer stem start afresh)" if added else "")
        )
    parts = member_networks(network)
    runs = []
    for k, member in enumerate(parts):
        folder = settings.cache / "checkpoints"
        if len(parts) > 1:
            folder = folder / f"member{k + 1}"
            log(f"ensemble member {k + 1} of {len(parts)}, training seed {run_seed + k}")
        state, run = _fit(
            settings, member, splits["train"], splits["val"], run_seed + k, folder, log, standardizes(bundle)
        )
        member.load_state_dict(state)
        runs.append(run)
    post_hoc = fit_post_hoc(network, splits, log) if hasattr(network, "feature_precision") else {}
    save_weights(bundle, network.state_dict())
    common = {
        "epochs": settings.epochs,
        "seed": settings.seed,
        **({"cross_validation_fold": f"{settings.fold[0]}/{settings.fold[1]}"} if settings.fold else {}),
        "learning_rate": settings.learning_rate,
        "fine_tuned_from_sha256": bundles.sha256(settings.init) if settings.init else None,
        "ema_decay": settings.ema_decay,
        "input_size": size,
        **({"pretrained_encoder": encoder_weights} if encoder_weights else {}),
        **post_hoc,
        **(
            {
                "freeze_stages": settings.freeze_stages,
                "warmup_epochs": settings.warmup_epochs,
                "encoder_lr_scale": settings.encoder_lr_scale,
            }
            if getattr(network, "encoder", None) is not None
            else {}
        ),
        **({"input_scale": scale} if (scale := int(bundle.config["network_def"].get("input_scale", 1))) != 1 else {}),
    }
    if len(parts) == 1:
        run = runs[0]
        if settings.train_seed is None:
            run.pop("train_seed")
        return {**common, **run}
    return {**common, "members": [{**common, **run} for run in runs]}


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
        **(
            {
                "freeze_stages": settings.freeze_stages,
                "warmup_epochs": settings.warmup_epochs,
                "encoder_lr_scale": settings.encoder_lr_scale,
            }
            if _encoder(network) is not None
            else {}
        ),
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
        {
            "params": [p for p in encoder.parameters() if id(p) not in frozen],
            "lr": settings.learning_rate * settings.encoder_lr_scale,
        },
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


def _fit(
    settings: TrainSettings,
    network: torch.nn.Module,
    train_set: fracatlas.Arrays,
    val_set: fracatlas.Arrays,
    seed: int,
    folder: Path,
    log,
    standardize: bool = True,
) -> tuple[dict, dict]:
    """One network's training run: its best (validated) state and what happened."""
    rng = np.random.default_rng(seed)
    network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # 1.2-1.9x faster convolutions on the CPU
    groups = _parameter_groups(settings, network)
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_set.ids) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in groups],
        total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.15,
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
    run = checkpoints.Run(
        folder / "last.pt", _run_settings(settings, network, seed, train_set), network, optimizer, scheduler, rng, ema
    )
    progress: dict[str, Any] = {"best": {"val_auc": -1.0, "epoch": 0}, "history": []}

    def resumed(epoch: int) -> None:
        best = progress["best"]
        log(f"best so far: epoch {best['epoch']}, val ROC AUC {best['val_auc']:.4f}")
        if best["epoch"] == epoch:  # the run may have stopped between writing last.pt and best.pt
            checkpoints.save(folder / "best.pt", kept.state_dict())

    def starting(first_epoch: int) -> None:
        if _encoder(network) is not None and first_epoch <= settings.warmup_epochs:
            log(f"warm-up: the encoder is held still for {settings.warmup_epochs} epoch(s)")

    def one_epoch(epoch: int) -> str:
        _train_mode(settings, network, epoch)
        order = rng.permutation(len(train_set.ids))
        total = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{settings.epochs}", unit="batch")
        for step in bar:
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            images, masks, _ = batch(train_set, index, augment=True, rng=rng, standardize=standardize)
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
        val_auc = metrics.roc_auc(
            val_set.fractured, predict(kept, val_set, desc="validating", standardize=standardize).logits
        )
        progress["history"].append({"epoch": epoch, "loss": total / steps_per_epoch, "val_auc": val_auc})
        if val_auc > progress["best"]["val_auc"]:
            progress["best"] = {"val_auc": val_auc, "epoch": epoch}
        return f"epoch {epoch}: loss {total / steps_per_epoch:.4f}, val ROC AUC {val_auc:.4f}"

    def saved(epoch: int) -> None:
        if progress["best"]["epoch"] == epoch:  # after last.pt, which a resumed run rewrites best.pt from
            checkpoints.save(folder / "best.pt", kept.state_dict())

    fit_epochs(
        settings.epochs,
        one_epoch,
        progress,
        log,
        run=run,
        resume=settings.resume,
        on_start=starting,
        on_resume=resumed,
        on_saved=saved,
    )
    best, history = progress["best"], progress["history"]
    (folder / "history.json").write_text(json.dumps(history, indent=2))
    log(f"best epoch {best['epoch']} (val ROC AUC {best['val_auc']:.4f})")
    state = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    return state, {"train_seed": seed, "best_epoch": best["epoch"], "history": history}


def evaluate(settings: TrainSettings, log=print) -> dict:
    """Measure the bundle's weights on the test split; every threshold chosen on the validation split."""
    from training.radiograph import report as radiograph_report

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
    report = radiograph_report.measure(
        val,
        test,
        measured_on=(
            f"test split of the FracAtlas development subset: {len(test.scores)} images"
            f" ({int(test.labels.sum())} fractured), whole group_id groups never seen in training or"
            f" validation (split seed {settings.seed}); operating points, calibration, region threshold,"
            f" finding-site confidence and the intended-use limit chosen on the validation split"
            f" ({len(val.scores)} images" + _fold_note(settings, ", ") + ")"
        ),
    )
    log(json.dumps(report, indent=2))
    return report
