"""Where a vertebra is on the CT's own slices: the 2D SCOORDs viewers draw.

A viewer that shows a CT slice by slice draws SR coordinates that name a slice (SCOORD with an
image reference); a 3D point in the frame of reference (SCOORD3D) OHIF 3.13 does not place on a
slice at all. So each vertebra also gets, on the source slice nearest its centre that shows it:
its centre as a point and its cross-section's outline (the convex hull of its label's pixels).
Pixel coordinates follow PS3.3 C.18.6.1.1: (column, row), 0,0 the top-left corner of the
top-left pixel; Image Position (Patient) is the centre of that pixel (PS3.3 C.7.6.2.1.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from node.imaging.regions import convex_hull
from node.results.polylines import closed_polyline


@dataclass(frozen=True)
class SlicePlace:
    """A vertebra on one source slice: the slice, its centre and outline in pixel coordinates."""

    index: int  # into the series' datasets (slice order)
    centre: tuple[float, float]  # (column, row)
    outline: np.ndarray  # (n, 2) closed polyline, first point repeated last


def slice_counts(labels: np.ndarray, highest: int) -> np.ndarray:
    """Voxels per label value 0..`highest` on each slice: int64 (slices, highest + 1).

    One bincount per slice: a whole-volume bincount would first copy a 600-slice volume to int64.
    """
    counts = np.zeros((len(labels), highest + 1), dtype=np.int64)
    for index, plane in enumerate(labels):
        low, high = int(plane.min()), int(plane.max())
        if low < 0 or high > highest:
            raise ValueError(
                f"labels hold values outside 0..{highest} (0 background, 1 = C1 … 7 = C7): "
                f"{low if low < 0 else high}"
            )
        counts[index] = np.bincount(plane.reshape(-1), minlength=highest + 1)
    return counts


def _axes(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row, column = orientation[:3], orientation[3:]
    return row, column, np.cross(row, column)


def place(
    sources: Sequence[Dataset],
    labels: np.ndarray,
    counts: np.ndarray,
    label: int,
    centre: tuple[float, float, float],
) -> SlicePlace:
    """The slice nearest `centre` (x, y, z mm) among those showing `label`, and the vertebra on it."""
    showing = np.flatnonzero(counts[:, label])
    if not len(showing):
        raise ValueError(f"label {label} is on no slice of the label volume")
    point = np.asarray(centre, dtype=np.float64)
    _, _, normal = _axes(sources[0])
    heights = np.array(
        [np.dot(np.asarray(sources[int(i)].ImagePositionPatient, np.float64), normal)
            for i in showing]
    )
    index = int(showing[np.argmin(np.abs(heights - np.dot(point, normal)))])
    ds = sources[index]
    row_axis, column_axis, _ = _axes(ds)
    offset = point - np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    spacing_rows, spacing_columns = (float(v) for v in ds.PixelSpacing)
    column = float(np.dot(offset, row_axis)) / spacing_columns + 0.5
    row = float(np.dot(offset, column_axis)) / spacing_rows + 0.5
    rows, columns = np.nonzero(labels[index] == label)
    # pixel corners, so a one-pixel cross-section still has an outline with an area
    corners = np.concatenate(
        [np.stack([columns + dx, rows + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]
    )
    hull = convex_hull(corners)
    inside = (
        min(max(column, 0.0), float(ds.Columns)),
        min(max(row, 0.0), float(ds.Rows)),
    )
    return SlicePlace(index, inside, closed_polyline(hull))
