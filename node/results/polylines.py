"""Closed polylines in pixel coordinates, as SCOORD POLYLINE (PS3.3 C.18.6.1.1) and GSPS graphic
objects (PS3.3 C.10.5.1.2) write them: (column, row) points, 0,0 the top-left corner of the
top-left pixel, the first point repeated last to close the outline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def closed_polyline(polygon: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """An open polygon (first point not repeated) as graphic data: (n + 1, 2) float64, closed."""
    points = np.asarray(polygon, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 (column, row) points, got {polygon!r}")
    if np.array_equal(points[0], points[-1]):
        raise ValueError("a polygon must not repeat its first point: closed_polyline closes it")
    return np.vstack([points, points[:1]])
