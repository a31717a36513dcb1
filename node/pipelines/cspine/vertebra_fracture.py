"""Fracture probability per cervical vertebra, and for the patient, from a crop classifier bundle.

Each vertebra found by `node.pipelines.cspine.vertebrae` gets one crop: the bundle's input box
(`spatial_shape`, e.g. 40×64×64) of `fracnode.crop.spacing_mm` voxels, axes along the patient
frame (slices inferior→superior, rows anterior→posterior, columns right→left), centred on the
vertebra's centroid. Channel 0 is the CT (trilinear; HU clipped to `crop.hu_window`, scaled to
[0, 1]; air outside the scan), channel 1 the vertebra's own mask (nearest neighbour), which tells
the network which of the vertebrae in the box it is asked about. The same function makes the
training crops (`training.cspine.run`), so training and inference see identical inputs.

The patient-level probability combines the vertebrae's: "noisy_or" = 1 − Π(1 − pᵢ) (fractures
independent given the images), or "max"; `fracnode.patient_aggregation` names the one chosen on
the validation split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Unpack

import numpy as np

from node.imaging.volume import AIR_HU, Volume
from node.inference.bundle import BundleError
from node.inference.engine import BundleModel, Engine, EngineOptions
from node.pipelines.cspine.vertebrae import VertebraSegmentation

Aggregation = Literal["noisy_or", "max"]
AGGREGATIONS: tuple[Aggregation, ...] = ("noisy_or", "max")


@dataclass(frozen=True)
class CropSpec:
    shape: tuple[int, int, int]  # (slices, rows, columns) of the crop
    spacing_mm: float
    hu_window: tuple[float, float]


@dataclass(frozen=True)
class VertebraProbability:
    label: int  # 1 = C1 … 7 = C7
    name: str
    probability: float


@dataclass(frozen=True)
class FractureResult:
    vertebrae: tuple[VertebraProbability, ...]  # the vertebrae found, in label order
    patient_probability: float
    aggregation: Aggregation

    def probability(self, name: str) -> float | None:
        return next((v.probability for v in self.vertebrae if v.name == name), None)


def aggregate(probabilities: Sequence[float], how: Aggregation) -> float:
    """Patient-level probability from per-vertebra ones (0 when no vertebra was found)."""
    values = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    if not values.size:
        return 0.0
    if how == "noisy_or":
        return float(1.0 - np.prod(1.0 - values))
    if how == "max":
        return float(values.max())
    raise ValueError(f"aggregation {how!r}: expected one of {', '.join(AGGREGATIONS)}")


def crop_points(centre: Sequence[float], spec: CropSpec) -> np.ndarray:
    """(slices, rows, columns, 3) patient (x, y, z) mm of the crop's voxel centres."""
    d, h, w = (
        (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * spec.spacing_mm for n in spec.shape
    )
    z, y, x = np.meshgrid(d, h, w, indexing="ij")
    return np.stack([x + centre[0], y + centre[1], z + centre[2]], axis=-1)


def _trilinear(hu: np.ndarray, index: np.ndarray) -> np.ndarray:
    """HU at fractional (k, j, i) indices; points outside the volume are air."""
    limits = np.array(hu.shape) - 1
    inside = np.all((index >= 0) & (index <= limits), axis=-1)
    base = np.clip(np.floor(index).astype(np.int64), 0, np.maximum(limits - 1, 0))
    frac = np.clip(index - base, 0.0, 1.0)
    out = np.zeros(index.shape[:-1], dtype=np.float64)
    for corner in np.ndindex(2, 2, 2):
        offset = np.array(corner)
        at = np.minimum(base + offset, limits)
        weight = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=-1)
        out += weight * hu[at[..., 0], at[..., 1], at[..., 2]]
    out[~inside] = AIR_HU
    return out


def vertebra_crop(
    volume: Volume, labels: np.ndarray, label: int, centre: Sequence[float], spec: CropSpec
) -> np.ndarray:
    """The classifier's input for one vertebra: float32 (2, *spec.shape), CT and mask channels."""
    index = volume.patient_to_index(crop_points(centre, spec))
    hu = _trilinear(volume.hu, index)
    low, high = spec.hu_window
    image = np.clip((hu - low) / (high - low), 0.0, 1.0)
    nearest = np.rint(index).astype(np.int64)
    inside = np.all((nearest >= 0) & (nearest < np.array(labels.shape)), axis=-1)
    clipped = np.clip(nearest, 0, np.array(labels.shape) - 1)
    mask = (labels[clipped[..., 0], clipped[..., 1], clipped[..., 2]] == label) & inside
    return np.stack([image, mask]).astype(np.float32)


def crop_spec(engine: Engine) -> CropSpec:
    crop = engine.bundle.extras.get("crop") or {}
    channels, *spatial = engine.contract.input_shape
    where = engine.bundle.root / "configs" / "metadata.json"
    if channels != 2 or len(spatial) != 3:
        raise BundleError(f"{where}: input must be 2 channels (CT, mask) × 3D, got {engine.contract.input_shape}")
    try:
        window = tuple(float(v) for v in crop["hu_window"])
        spec = CropSpec(tuple(spatial), float(crop["spacing_mm"]), window)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: fracnode.crop needs spacing_mm and hu_window [low, high] ({exc})") from exc
    if spec.spacing_mm <= 0 or len(window) != 2 or window[1] <= window[0]:
        raise BundleError(f"{where}: fracnode.crop {crop} is not a positive spacing and a [low, high] window")
    return spec


class FractureModel(BundleModel):
    """A per-vertebra fracture classifier bundle, loaded and verified once (sha256)."""

    def __init__(self, bundle_path: Path | str, **options: Unpack[EngineOptions]) -> None:
        super().__init__(bundle_path, **options)
        self.spec = crop_spec(self.engine)
        how = str(self.bundle.extras.get("patient_aggregation", "noisy_or"))
        if how not in AGGREGATIONS:
            raise BundleError(f"{self.bundle.root}: fracnode.patient_aggregation {how!r}: one of {AGGREGATIONS}")
        self.aggregation: Aggregation = how  # type: ignore[assignment]
        self.output_name = self.contract.outputs[0].name
        points = self.bundle.extras.get("operating_points") or {}
        missing = [name for name in ("suspicious", "fracture") if not isinstance(points.get(name), int | float)]
        if missing:
            raise BundleError(
                f"{self.bundle.root / 'configs' / 'metadata.json'}: fracnode.operating_points needs"
                f" {' and '.join(missing)} (patient-level probability thresholds), has {points}"
            )
        self.operating_points = {k: float(v) for k, v in points.items()}

    def probabilities(self, crops: Sequence[np.ndarray]) -> list[float]:
        """Fracture probability of each crop (each the contract's input shape)."""
        return [float(row[self.output_name].reshape(-1)[0]) for row in self.infer(list(crops))]

    def classify(self, volume: Volume, segmentation: VertebraSegmentation) -> FractureResult:
        """Per-vertebra and patient-level fracture probabilities for the vertebrae found."""
        found = segmentation.vertebrae
        crops = [vertebra_crop(volume, segmentation.labels, v.label, v.centre, self.spec) for v in found]
        values = self.probabilities(crops) if crops else []
        vertebrae = tuple(
            VertebraProbability(v.label, v.name, p) for v, p in zip(found, values, strict=True)
        )
        return FractureResult(vertebrae, aggregate(values, self.aggregation), self.aggregation)
