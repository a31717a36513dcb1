"""Fracture regions from a probability map: connected components → box and closed polygon. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class Region:
    """One predicted region in the coordinates of the plane it was found in (x = column, y = row)."""

    polygon: tuple[tuple[float, float], ...]  # closed: the first point is not repeated
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (inclusive pixel edges)
    peak: float  # highest probability inside the region
    area: int  # pixels


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain over (x, y) points; returns hull vertices counter-clockwise."""
    unique = np.unique(points, axis=0)
    if len(unique) < 3:
        return unique.astype(np.float64)
    ordered = sorted(map(tuple, unique.tolist()))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in ordered:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(ordered):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def extract(probabilities: np.ndarray, threshold: float, min_area: int = 4, limit: int = 10) -> list[Region]:
    """Connected regions where `probabilities` >= `threshold`, largest peak first, at most `limit`."""
    binary = (probabilities >= threshold).astype(np.uint8)
    if not binary.any():
        return []
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(binary), True))
    regions = []
    for label in range(1, int(labels.max()) + 1):
        rows, columns = np.nonzero(labels == label)
        if len(rows) < min_area:
            continue
        # Pixel corners, so a one-pixel-wide region still has a non-degenerate outline.
        corners = np.concatenate(
            [np.stack([columns + dx, rows + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]
        )
        hull = convex_hull(corners)
        regions.append(
            Region(
                polygon=tuple((float(x), float(y)) for x, y in hull),
                box=(float(columns.min()), float(rows.min()), float(columns.max() + 1), float(rows.max() + 1)),
                peak=float(probabilities[rows, columns].max()),
                area=len(rows),
            )
        )
    regions.sort(key=lambda r: r.peak, reverse=True)
    return regions[:limit]


def region_mask(region: Region, shape: tuple[int, int]) -> np.ndarray:
    """The region's polygon filled, as a bool (rows, columns) mask of a plane of `shape`."""
    canvas = Image.new("1", (shape[1], shape[0]))
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in region.polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


def on_dense_material(region: Region, image: np.ndarray, area: np.ndarray, percentile: float = 99.0) -> bool:
    """Whether the region's median pixel is at or above the `percentile` of the image `area` (bone
    bright). In a radiograph that is metal (plates, nails, screws, prostheses) or matter as dense.

    Measured on the FracAtlas training split: no annotated fracture polygon (0 of 352) has its median
    in its image's brightest 1 %, so at 99 the test costs no true fracture outline there."""
    inside = image[region_mask(region, image.shape)]
    if inside.size == 0 or not area.any():
        return False
    return bool(np.median(inside) >= np.percentile(image[area], percentile))
