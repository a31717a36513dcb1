"""Training arrays for the cervical-spine models, cached per study.

Segmentation: the CT through the vertebra bundle's own preprocessing (the chain the node runs)
and the reference labels moved onto that grid by nearest neighbour. Classification: one crop per
vertebra present, made by the node's crop function with a margin for random shifts, from the
reference labels where the study has them, else from the labels the vertebra model predicts.
Cache files carry a hash of the settings they depend on, so a changed bundle never reuses them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from node.imaging import voxelgrid
from node.imaging.volume import Volume
from node.inference.bundle import Bundle
from node.pipelines.cspine.vertebra_fracture import CropSpec, vertebra_crop
from node.pipelines.cspine.vertebrae import measure, preprocessing, reorients, to_metatensor
from training.cspine.rsna import NegativeSeries, RsnaStudy, load_segmentation, load_volume

CROP_MARGIN = (8, 8, 8)  # extra voxels per axis, for random shifts of ±4 voxels in training


@dataclass(frozen=True, eq=False)
class SegmentationCase:
    uid: str
    image: np.ndarray  # float16 (X, Y, Z) on the model grid, preprocessed
    labels: np.ndarray  # uint8 (X, Y, Z), 0..7


@dataclass(frozen=True, eq=False)
class CropSet:
    uid: str
    crops: np.ndarray  # uint8 (n, 2, D, H, W): CT scaled ×255, mask 0/1
    vertebrae: np.ndarray  # int (n,) label 1..7
    fractured: np.ndarray  # bool (n,)
    source: str  # "reference" or "predicted" masks


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def segmentation_key(bundle: Bundle) -> str:
    return _digest(bundle.config.get("preprocessing"))


def segmentation_case(
    study: RsnaStudy | NegativeSeries, volume: Volume, labels: np.ndarray, bundle: Bundle
) -> SegmentationCase:
    chain = preprocessing(bundle.config, bundle.root)
    image = chain({"image": to_metatensor(volume, reorients(bundle.config))})["image"]
    grid_affine = voxelgrid.LPS_FROM_RAS @ np.asarray(image.affine, dtype=np.float64)
    grid_shape = tuple(int(n) for n in image.shape[1:])
    moved = voxelgrid.nearest(labels, voxelgrid.volume_affine(volume), grid_shape, grid_affine)
    return SegmentationCase(study.uid, image.numpy()[0].astype(np.float16), moved.astype(np.uint8))


def crop_set(
    study: RsnaStudy, volume: Volume, labels: np.ndarray, spec: CropSpec, source: str
) -> CropSet:
    padded = replace(spec, shape=tuple(n + m for n, m in zip(spec.shape, CROP_MARGIN, strict=True)))  # type: ignore[arg-type]
    found = measure(labels, volume)
    crops = np.zeros((len(found), 2, *padded.shape), dtype=np.uint8)
    for n, vertebra in enumerate(found):
        crop = vertebra_crop(volume, labels, vertebra.label, vertebra.centre, padded)
        crops[n, 0] = np.rint(crop[0] * 255.0)
        crops[n, 1] = crop[1] > 0.5
    names = np.array([v.label for v in found], dtype=np.int64)
    fractured = np.array([study.labels.vertebrae[v - 1] for v in names], dtype=bool)
    return CropSet(study.uid, crops, names, fractured, source)


def _save(path: Path, **arrays: np.ndarray) -> None:
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    partial.replace(path)


def cached_reference(
    study: RsnaStudy, bundle: Bundle, spec: CropSpec, cache: Path
) -> tuple[SegmentationCase | None, CropSet | None]:
    """A study with a segmentation: its segmentation case and reference-mask crops (cached)."""
    if study.segmentation is None:
        return None, None
    seg_path = cache / f"{study.uid}.seg-{segmentation_key(bundle)}.npz"
    crop_path = cache / f"{study.uid}.crops-{_digest(spec)}.npz"
    if not (seg_path.is_file() and crop_path.is_file()):
        volume = load_volume(study)
        labels = load_segmentation(study, volume)
        assert labels is not None
        case = segmentation_case(study, volume, labels, bundle)
        crops = crop_set(study, volume, labels, spec, "reference")
        cache.mkdir(parents=True, exist_ok=True)
        _save(seg_path, image=case.image, labels=case.labels)
        _save(crop_path, crops=crops.crops, vertebrae=crops.vertebrae, fractured=crops.fractured)
    seg, crop = np.load(seg_path), np.load(crop_path)
    return (
        SegmentationCase(study.uid, seg["image"], seg["labels"]),
        CropSet(study.uid, crop["crops"], crop["vertebrae"], crop["fractured"], "reference"),
    )


def cached_negative(series: NegativeSeries, bundle: Bundle, cache: Path) -> SegmentationCase:
    """A series without a cervical spine as a segmentation case whose labels are all background."""
    path = cache / f"negative-{series.uid}.seg-{segmentation_key(bundle)}.npz"
    if not path.is_file():
        volume = load_volume(series)
        case = segmentation_case(series, volume, np.zeros(volume.shape, np.uint8), bundle)
        cache.mkdir(parents=True, exist_ok=True)
        _save(path, image=case.image, labels=case.labels)
    data = np.load(path)
    return SegmentationCase(series.uid, data["image"], data["labels"])


def predicted_crops(
    study: RsnaStudy, segment: Callable[[Volume], np.ndarray], spec: CropSpec, cache: Path, weights_sha256: str
) -> CropSet:
    """Crops of a study without a segmentation, from the vertebra model's labels (cached per weights)."""
    path = cache / f"{study.uid}.predicted-{_digest([spec, weights_sha256])}.npz"
    if not path.is_file():
        volume = load_volume(study)
        crops = crop_set(study, volume, segment(volume), spec, "predicted")
        cache.mkdir(parents=True, exist_ok=True)
        _save(path, crops=crops.crops, vertebrae=crops.vertebrae, fractured=crops.fractured)
    data = np.load(path)
    return CropSet(study.uid, data["crops"], data["vertebrae"], data["fractured"], "predicted")
