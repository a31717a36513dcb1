"""What the radiograph-fracture pipeline concludes about a study, before any DICOM is written.

Per source radiograph an `ImageFinding`: the fracture probability, its category at the bundle's
two operating points, the predicted regions in the image's own pixel coordinates, the model's
region map and the body region (the finding site). `Findings` holds them for one study with the
images passed over and why. The job record keeps `Findings` as JSON (node.outcomes); kind
"Findings" is what the dashboard and the API have always shown, so the class keeps its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset

from node.records import CATEGORIES, Algorithm, Category, FindingRow


@dataclass(frozen=True)
class RegionFinding:
    """One predicted fracture region on a source image, in that image's pixel coordinates.

    `polygon` is closed (the first point is not repeated), points are (column, row) with (0, 0)
    the top-left corner of the top-left pixel, as SCOORD PIXEL coordinates are.
    """

    polygon: tuple[tuple[float, float], ...]
    box: tuple[float, float, float, float]  # column0, row0, column1, row1
    probability: float  # the highest region probability inside the region


@dataclass(frozen=True)
class ImageFinding:
    """The model's result for one source radiograph."""

    sop_instance_uid: str
    path: Path  # the source file in the spool
    fracture_probability: float
    category: Category  # "fracture" (≥ high-specificity threshold), "suspicious" (≥ high-sensitivity), "negative"
    regions: tuple[RegionFinding, ...]
    region_map: np.ndarray | None  # float32 (Rows, Columns) region probability in [0, 1]; None when not kept
    body_region: str  # "hand" | "leg" | "hip" | "shoulder", or "" when not determined (no finding site)
    body_region_probability: float  # the body-region head's probability for it (its highest when "")
    body_region_source: str = ""  # "header" (an attribute named it), "model" (the head, confidently) or ""

    def check_source(self, source: Dataset) -> None:
        """A result drawn on `source` must be drawn on this finding's image."""
        if self.sop_instance_uid != source.SOPInstanceUID:
            raise ValueError(f"finding for {self.sop_instance_uid} paired with source {source.SOPInstanceUID}")

    @classmethod
    def from_stored(cls, stored: dict[str, Any], path: Path) -> ImageFinding:
        """An image finding rebuilt from the job record's JSON, enough to draw it (no region map)."""
        category = str(stored["category"])
        if category not in CATEGORIES:
            raise ValueError(f"stored finding: unknown category {category!r} (known: {list(CATEGORIES)})")
        regions = tuple(
            RegionFinding(
                polygon=tuple((float(x), float(y)) for x, y in region["polygon"]),
                box=tuple(float(v) for v in region["box"]),  # type: ignore[arg-type]
                probability=float(region["probability"]),
            )
            for region in stored.get("regions", [])
        )
        return cls(
            sop_instance_uid=str(stored["sop_instance_uid"]),
            path=path,
            fracture_probability=float(stored["fracture_probability"]),
            category=category,  # type: ignore[arg-type]  # checked against CATEGORIES above
            regions=regions,
            region_map=None,
            body_region=str(stored.get("body_region", "")),
            body_region_probability=float(stored.get("body_region_probability", 0.0)),
            body_region_source=str(stored.get("body_region_source", "")),
        )


@dataclass(frozen=True)
class Findings:
    """Everything one radiograph-fracture run concluded about one study."""

    study_instance_uid: str
    algorithm: Algorithm
    images: tuple[ImageFinding, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (SOP Instance UID, reason)
    thresholds: tuple[tuple[str, float], ...] = ()  # ("suspicious", 0.2), ("fracture", 0.6)

    def rows(self) -> tuple[FindingRow, ...]:
        """One row per image analysed, then one per object passed over."""
        analysed = tuple(
            FindingRow(image.sop_instance_uid, image.category, image.fracture_probability, len(image.regions),
                       image.body_region)
            for image in self.images
        )
        return analysed + tuple(FindingRow(uid, skipped=reason) for uid, reason in self.skipped)


def summarize(findings: Findings) -> str:
    """One line for the job table: counts per category, the highest probability, skipped images."""
    counts: dict[str, int] = {}
    for image in findings.images:
        counts[image.category] = counts.get(image.category, 0) + 1
    top = max(image.fracture_probability for image in findings.images)
    text = f"{len(findings.images)} image(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    text += f"; highest fracture probability {top:.2f}"
    outside = sum(reason.startswith("outside the model's intended use") for _, reason in findings.skipped)
    if outside:
        text += f"; {outside} not analysed (outside the model's intended use)"
    if len(findings.skipped) > outside:
        text += f"; {len(findings.skipped) - outside} skipped"
    return text
