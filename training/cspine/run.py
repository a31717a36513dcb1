"""`fracnode train cspine` / `fracnode evaluate cspine`: the two cervical-spine bundles from RSNA data.

Data: the RSNA 2022 layout (`training.cspine.rsna`), split by study 70/15/15 with a seeded
hash (`--seed`). Training, in order:
1. vertebrae: the `cspine_vertebrae` network on the train studies that have a segmentation,
   best epoch by validation Dice; weights and sha256 written into the bundle;
2. crops: one per vertebra of every train/val study, from the reference segmentation where there
   is one, else from what the just-trained vertebra model finds (as at run time);
3. fracture: the `cspine_fracture` network on those crops, best epoch by validation loss; on the
   validation split it also picks the patient-level aggregation (lower competition loss), the
   probability given to a vertebra that was not found, and two operating points (90% patient
   sensitivity: "suspicious"; 90% patient specificity: "fracture").
Evaluation runs the node's own runtime (`node.pipelines.cspine.models`, bundles verified by sha256) on
every test study: competition weighted log loss, per-vertebra (pooled C1–C7) and patient ROC AUC
with bootstrap 95% CIs, operating points, and Dice per vertebra on the CT grid.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from node.inference import bundle as bundles
from node.pipelines.cspine.findings import VERTEBRAE
from node.pipelines.cspine.models import CSpineModels
from node.pipelines.cspine.vertebra_fracture import AGGREGATIONS, CropSpec, aggregate
from node.pipelines.cspine.vertebrae import VertebraModel
from training.common import checkpoints, metrics
from training.cspine import data as cspine_data
from training.cspine import loops as cspine_loops
from training.cspine.metrics import dice_per_label, report, weighted_log_loss
from training.cspine.rsna import (
    DataError,
    NegativeSeries,
    RsnaStudy,
    find_negatives,
    find_studies,
    load_segmentation,
    load_volume,
    split,
    split_by_uid,
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class CSpineSettings:
    data: Path
    vertebra_bundle: Path
    fracture_bundle: Path
    cache: Path
    epochs: int = 12  # fracture classifier
    seg_epochs: int = 6
    seed: int = 7
    threads: int = 0
    batch_size: int = 16
    seg_patch: tuple[int, int, int] | None = None  # default: the bundle's roi size
    patches_per_case: int = 2  # vertebra model: random patches per training series and epoch
    negatives: Path | None = None  # CT series without a cervical spine: all-background cases
    models: tuple[str, ...] = ("vertebrae", "fracture")  # which to train
    init_vertebrae: Path | None = None  # start the vertebra model from these weights (fine-tuning)
    seg_learning_rate: float = 3e-3
    all_studies: bool = False  # evaluate: every study of `data` (a dataset never used in training)
    resume: bool = False  # train: continue each model from the checkpoint an interrupted run left


def _crop_spec(bundle: bundles.Bundle) -> CropSpec:
    crop = bundle.extras["crop"]
    shape = tuple(bundle.inputs["image"]["spatial_shape"])
    return CropSpec(shape, float(crop["spacing_mm"]), tuple(float(v) for v in crop["hu_window"]))  # type: ignore[arg-type]


def _install(bundle_root: Path, state: dict[str, torch.Tensor]) -> str:
    """Write weights into a bundle and record their sha256 in its metadata; returns the hash."""
    bundle = bundles.read(bundle_root)
    bundle.weights_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(bundle.weights_path, state)  # replaced whole: a crash leaves the old or the new weights
    digest = bundles.sha256(bundle.weights_path)
    _update_metadata(bundle_root, lambda m: m.setdefault("fracnode", {}).update(weights_sha256=digest))
    return digest


def _update_metadata(bundle_root: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    path = bundle_root / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    change(metadata)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(metadata, indent=4) + "\n")
    os.replace(partial, path)


def _threads(settings: CSpineSettings) -> None:
    if settings.threads:
        torch.set_num_threads(settings.threads)


def _splits(settings: CSpineSettings, log: Log) -> dict[str, list[RsnaStudy]]:
    studies = find_studies(settings.data)
    parts = split(studies, settings.seed)
    segmented = {name: sum(s.segmentation is not None for s in part) for name, part in parts.items()}
    log(f"{len(studies)} studies: " + ", ".join(
        f"{name} {len(part)} ({segmented[name]} with segmentation)" for name, part in parts.items()))
    return parts


def _negatives(settings: CSpineSettings, log: Log) -> dict[str, list[NegativeSeries]]:
    """The --negatives series split like the studies (train / val / test), or nothing."""
    if settings.negatives is None:
        return {"train": [], "val": [], "test": []}
    found = {series.uid: series for series in find_negatives(settings.negatives)}
    if settings.all_studies:
        parts = {"train": [], "val": [], "test": list(found)}
    else:
        parts = split_by_uid(list(found), settings.seed)
    log(f"{len(found)} series without a cervical spine: " + ", ".join(f"{n} {len(p)}" for n, p in parts.items()))
    return {name: [found[uid] for uid in uids] for name, uids in parts.items()}


def train(settings: CSpineSettings, log: Log = print) -> dict[str, Any]:
    _threads(settings)
    torch.manual_seed(settings.seed)
    started = time.monotonic()
    parts = _splits(settings, log)
    vertebra_bundle, fracture_bundle = bundles.read(settings.vertebra_bundle), bundles.read(settings.fracture_bundle)
    spec = _crop_spec(fracture_bundle)
    cache = settings.cache / "cspine"
    (cache / "checkpoints").mkdir(parents=True, exist_ok=True)

    cases: dict[str, list[cspine_data.SegmentationCase]] = {"train": [], "val": []}
    crops: dict[str, list[cspine_data.CropSet]] = {"train": [], "val": []}
    for name in ("train", "val"):
        for study in tqdm([s for s in parts[name] if s.segmentation], desc=f"reading {name} segmentations", unit="study"):
            case, crop_set = cspine_data.cached_reference(study, vertebra_bundle, spec, cache)
            cases[name].append(case)  # type: ignore[arg-type]
            crops[name].append(crop_set)  # type: ignore[arg-type]
    if not cases["train"]:
        raise DataError(f"{settings.data}: no training study has a segmentation; the vertebra model needs some")
    negatives = _negatives(settings, log)
    negative_cases = {name: [cspine_data.cached_negative(series, vertebra_bundle, cache)
                             for series in tqdm(negatives[name], desc=f"reading {name} negatives", unit="series")]
                      for name in ("train", "val")} if "vertebrae" in settings.models else {"train": [], "val": []}
    prepared = time.monotonic()
    common = {"seed": settings.seed, "split": {name: len(part) for name, part in parts.items()},
              "data_preparation_seconds": round(prepared - started, 1),
              "negatives": {name: len(part) for name, part in negatives.items()},
              "hardware": (torch.cuda.get_device_name() if torch.cuda.is_available()
                           else f"CPU, {torch.get_num_threads()} threads")}
    trained: dict[str, Any] = {}
    if "vertebrae" in settings.models:
        trained["vertebrae"] = {**common, **_train_vertebrae(settings, vertebra_bundle, cases, negative_cases, log)}
    del cases, negative_cases
    if "fracture" in settings.models:
        trained["fracture"] = {**common, **_train_fracture(settings, fracture_bundle, crops, parts, spec, log)}
    return trained


def _train_vertebrae(settings: CSpineSettings, bundle: bundles.Bundle, cases: dict[str, list[Any]],
                     negative_cases: dict[str, list[Any]], log: Log) -> dict[str, Any]:
    started = time.monotonic()
    network = bundles.build_network(bundle)
    init = ""
    if settings.init_vertebrae:
        state = torch.load(settings.init_vertebrae, map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("model", state))
        init = bundles.sha256(settings.init_vertebrae)
    # fine-tuning the bundle's own weights: keep how those were trained
    before = {k: v for k, v in (bundle.extras.get("training") or {}).items()}
    earlier = {"fine_tune_of": before} if init and init == bundle.weights_sha256 and before else {}
    roi = settings.seg_patch or tuple(bundle.inputs["image"]["spatial_shape"])
    validation = cases["val"][:3] + negative_cases["val"][:1]  # whole volumes: costly on a CPU
    state, history = cspine_loops.train_vertebrae(
        network, cases["train"] + negative_cases["train"], validation, roi, settings.seg_epochs, settings.seed, log,
        patches_per_case=settings.patches_per_case, validate_every=max(1, settings.seg_epochs // 5),
        learning_rate=settings.seg_learning_rate, resume=settings.resume,
        checkpoint=settings.cache / "cspine" / "checkpoints" / "vertebrae_last.pt")
    _install(settings.vertebra_bundle, state)
    return {"epochs": settings.seg_epochs, "patch": list(roi), "patches_per_study": settings.patches_per_case,
            "learning_rate": settings.seg_learning_rate, **({"init_weights_sha256": init} if init else {}),
            "best_epoch": int(max((h for h in history if "val_dice" in h), key=lambda h: h["val_dice"])["epoch"]),
            "training_seconds": round(time.monotonic() - started, 1), "history": history,
            "training_series": {"with_vertebrae": len(cases["train"]), "without": len(negative_cases["train"])},
            **earlier}


def _train_fracture(settings: CSpineSettings, bundle: bundles.Bundle, crops: dict[str, list[cspine_data.CropSet]],
                    parts: dict[str, list[RsnaStudy]], spec: CropSpec, log: Log) -> dict[str, Any]:
    """Crops of studies without a reference segmentation come from the vertebra bundle as it now is."""
    cache = settings.cache / "cspine"
    vertebra_sha = bundles.read(settings.vertebra_bundle).weights_sha256
    unsegmented = {name: [s for s in parts[name] if not s.segmentation] for name in ("train", "val")}
    if any(unsegmented.values()):
        model = VertebraModel(settings.vertebra_bundle, device="auto", runtime="auto", warmup=False)
        try:
            for name, studies in unsegmented.items():
                for study in tqdm(studies, desc=f"finding vertebrae ({name})", unit="study"):
                    crops[name].append(cspine_data.predicted_crops(
                        study, lambda v: model.segment(v).labels, spec, cache, vertebra_sha))
        finally:
            model.close()
    started = time.monotonic()
    network = bundles.build_network(bundle)
    state, history, calibration = cspine_loops.train_fracture(
        network, crops["train"], crops["val"], settings.epochs, settings.seed, log, batch_size=settings.batch_size,
        checkpoint=cache / "checkpoints" / "fracture_last.pt", resume=settings.resume)
    network.load_state_dict(state)
    choices = _validation_choices(network, crops, parts)
    _install(settings.fracture_bundle, state)
    _update_metadata(settings.fracture_bundle, lambda m: m["fracnode"].update(choices))
    log(f"validation choices: {json.dumps(choices)}")
    return {"epochs": settings.epochs, "batch_size": settings.batch_size, **calibration,
            "best_epoch": int(min(history, key=lambda h: h["val_loss"])["epoch"]),
            "training_seconds": round(time.monotonic() - started, 1), "history": history,
            "crops": {n: int(sum(len(c.crops) for c in crops[n])) for n in crops},
            "crops_from_predicted_masks": {n: int(sum(len(c.crops) for c in crops[n] if c.source == "predicted"))
                                           for n in crops}}


def _validation_choices(network: torch.nn.Module, crops: dict[str, list[cspine_data.CropSet]],
                        parts: dict[str, list[RsnaStudy]]) -> dict[str, Any]:
    """Aggregation, absent-vertebra probability and operating points, from the validation split."""
    flags = np.concatenate([c.fractured for c in crops["train"] if len(c.crops)])
    rate = float(flags.mean()) if len(flags) else 0.1
    absent = round(2 * rate / (2 * rate + (1 - rate)), 4)  # minimises the 2:1 weighted loss of a constant
    by_uid = {c.uid: c for c in crops["val"]}
    truth: dict[str, list[list[float]]] = {how: [] for how in AGGREGATIONS}
    predicted: dict[str, list[list[float]]] = {how: [] for how in AGGREGATIONS}
    for study in parts["val"]:
        row = np.full(7, absent)
        crop_set = by_uid.get(study.uid)
        found: list[float] = []
        if crop_set is not None and len(crop_set.crops):
            values = cspine_loops.predict_crops(network, crop_set.crops)
            row[crop_set.vertebrae - 1] = values
            found = list(values)
        for how in AGGREGATIONS:
            truth[how].append([study.labels.patient_overall, *study.labels.vertebrae])
            predicted[how].append([aggregate(found, how) if found else absent, *row])
    losses = {how: weighted_log_loss(np.array(truth[how]), np.array(predicted[how])) for how in AGGREGATIONS}
    how = min(losses, key=lambda h: losses[h])
    patients = np.array(truth[how])[:, 0].astype(bool)
    scores = np.array(predicted[how])[:, 0]
    points = {"suspicious": 0.3, "fracture": 0.6}
    if patients.any() and not patients.all():
        points = {"suspicious": round(metrics.threshold_for_sensitivity(patients, scores, 0.9), 4),
                  "fracture": round(metrics.threshold_for_specificity(patients, scores, 0.9), 4)}
    return {"patient_aggregation": how, "absent_vertebra_probability": absent, "operating_points": points,
            "validation_weighted_log_loss": {h: round(v, 4) for h, v in losses.items()}}


def evaluate(settings: CSpineSettings, log: Log = print) -> dict[str, Any]:
    """The test split (or, with `all_studies`, every study) through the node's runtime: competition
    loss, AUCs, operating points, Dice; and what is found on series without a cervical spine."""
    _threads(settings)
    if settings.all_studies:
        test = find_studies(settings.data)
        log(f"{len(test)} studies, all evaluated")
    else:
        test = _splits(settings, log)["test"]
    if not test:
        raise DataError(f"{settings.data}: the test split is empty; it needs more studies")
    negatives = _negatives(settings, log)["test"]
    truth, predicted, dice, seconds = [], [], [], []
    identified = {"reference": 0, "found": 0}
    with CSpineModels(settings.vertebra_bundle, settings.fracture_bundle, device="auto", runtime="auto") as models:
        absent = float(models.fracture.bundle.extras.get("absent_vertebra_probability", 0.1))
        points = models.fracture.operating_points
        for study in tqdm(test, desc="test studies", unit="study"):
            volume = load_volume(study)
            started = time.monotonic()
            analysis = models.analyze(volume)
            seconds.append(time.monotonic() - started)
            row = [analysis.fracture.probability(name) for name in VERTEBRAE]
            found = [p for p in row if p is not None]
            truth.append([study.labels.patient_overall, *study.labels.vertebrae])
            predicted.append([analysis.fracture.patient_probability if found else absent,
                              *(absent if p is None else p for p in row)])
            reference = load_segmentation(study, volume)
            if reference is not None:
                scores = dice_per_label(analysis.segmentation.labels, reference, range(1, 8))
                dice.append(scores)
                present = [label for label in range(1, 8) if (reference == label).any()]
                identified["reference"] += len(present)
                identified["found"] += sum(scores.get(label, 0.0) >= 0.5 for label in present)
        without = [_negative_outcome(models, series) for series in tqdm(negatives, desc="negatives", unit="series")]
    result = report(np.array(truth), np.array(predicted), dice, seed=settings.seed)
    patients, patient_scores = np.array(truth, bool)[:, 0], np.array(predicted)[:, 0]
    for name, threshold in points.items():
        result[name] = {k: round(v, 4) for k, v in metrics.operating_point(patients, patient_scores, threshold).items()}
    if identified["reference"]:
        result["vertebrae_identified"] = {**identified, "rate": round(identified["found"] / identified["reference"], 4),
                                          "rule": "Dice >= 0.5 against the reference label of the same vertebra"}
    if without:
        result["no_cervical_spine"] = {
            "series": len(without), "with_vertebrae_found": sum(bool(w) for w in without),
            "vertebrae_found": sum(len(w) for w in without),
        }
    result["seconds_per_study"] = round(float(np.mean(seconds)), 2)
    result["measured_on"] = (
        f"all {len(test)} studies of {settings.data.name}, a dataset never used for training, model selection"
        " or threshold choice" if settings.all_studies else
        f"test split of {settings.data.name}: {len(test)} studies never used for training, model selection"
        f" or threshold choice (split seed {settings.seed})")
    log(json.dumps(result, indent=2))
    return result


def _negative_outcome(models: CSpineModels, series: NegativeSeries) -> list[str]:
    """The vertebrae found (wrongly) in a series without a cervical spine."""
    return [v.name for v in models.segment(load_volume(series)).vertebrae]


def record(settings: CSpineSettings, result: dict[str, Any], training: dict[str, Any] | None = None) -> None:
    """Write the measured numbers (and training facts) into both bundles' metadata."""
    seg_keys = ("measured_on", "dice", "dice_mean", "dice_studies", "vertebrae_identified", "no_cervical_spine",
                "seconds_per_study")

    training = training or {}

    def vertebrae(metadata: dict[str, Any]) -> None:
        metadata["eval_metrics"] = {k: result[k] for k in seg_keys if k in result}
        if "vertebrae" in training:
            metadata["fracnode"]["training"] = {k: v for k, v in training["vertebrae"].items() if k != "history"}

    def fracture(metadata: dict[str, Any]) -> None:
        metadata["eval_metrics"] = {k: v for k, v in result.items() if k not in ("dice", "dice_mean", "dice_studies")}
        if "fracture" in training:
            metadata["fracnode"]["training"] = {k: v for k, v in training["fracture"].items() if k != "history"}

    _update_metadata(settings.vertebra_bundle, vertebrae)
    _update_metadata(settings.fracture_bundle, fracture)
    for root, key in ((settings.vertebra_bundle, "vertebrae"), (settings.fracture_bundle, "fracture")):
        if key in training:
            (root / "docs").mkdir(exist_ok=True)
            (root / "docs" / "training_history.json").write_text(json.dumps(training[key]["history"], indent=2) + "\n")
