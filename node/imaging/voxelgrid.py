"""Voxel grids in the patient frame: affines of a CT `Volume` and nearest-neighbour label transfer.

An affine here maps an array's own index order to patient coordinates in millimetres, LPS (the
DICOM patient frame, PS3.3 C.7.6.2.1.1). MONAI's images are RAS (NIfTI convention): x and y
change sign. Label maps move between grids by nearest neighbour only (labels never blend); when
the two grids' axes are parallel (always so after MONAI's Orientation and Spacing transforms,
which keep the direction cosines), that is three 1D index lookups instead of a coordinate per
voxel, so a 512×512×600 label volume costs its own 157 MB and no more.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from node.imaging.volume import Volume

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
Box = tuple[tuple[int, int], ...]  # per axis (start, stop), stop exclusive


def volume_affine(volume: Volume) -> np.ndarray:
    """4×4 affine from `hu[k, j, i]` indices (k, j, i) to LPS mm."""
    axes = np.array(volume.direction, dtype=np.float64) * np.array(volume.spacing[::-1], dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = axes[:, ::-1]  # columns: slice normal·dz, column·dy, row·dx
    affine[:3, 3] = volume.origin
    return affine


def volume_affine_ijk_ras(volume: Volume) -> np.ndarray:
    """4×4 affine from (i, j, k) indices to RAS mm: what MONAI's ITK reader gives for the series."""
    affine = volume_affine(volume)[:, [2, 1, 0, 3]]
    return LPS_FROM_RAS @ affine


def _axis_map(matrix: np.ndarray) -> list[int] | None:
    """For each target axis, the one source axis it runs along, when the grids' axes are parallel."""
    linear = matrix[:3, :3]
    sources = [int(np.argmax(np.abs(linear[:, axis]))) for axis in range(3)]
    if sorted(sources) != [0, 1, 2]:
        return None
    for axis, source in enumerate(sources):
        column = np.abs(linear[:, axis])
        if column.sum() - column[source] > 1e-4 * column[source]:
            return None
    return sources


def nearest(
    source: np.ndarray,
    source_affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    box: Box | None = None,
    fill: int = 0,
) -> np.ndarray:
    """`source` (3D labels) sampled at the voxel centres of a target grid, nearest neighbour.

    Both affines map their array's indices to the same patient frame. With `box`, only that part of
    the target grid is computed (the array returned has the box's shape). Target voxels outside the
    source get `fill`.
    """
    box = box or tuple((0, int(n)) for n in target_shape)
    shape = tuple(stop - start for start, stop in box)
    matrix = np.linalg.inv(source_affine) @ target_affine  # target index -> source index
    sources = _axis_map(matrix)
    if sources is None:
        return _nearest_oblique(source, matrix, box, fill)
    lookups, valid = [], []
    for axis, src in enumerate(sources):
        positions = np.arange(box[axis][0], box[axis][1], dtype=np.float64)
        index = np.rint(matrix[src, axis] * positions + matrix[src, 3]).astype(np.int64)
        inside = (index >= 0) & (index < source.shape[src])
        lookups.append(np.clip(index, 0, source.shape[src] - 1))
        valid.append(inside)
    out = np.asarray(source).transpose(sources)[np.ix_(*lookups)]
    for axis, inside in enumerate(valid):
        if not inside.all():
            selector: list[slice | np.ndarray] = [slice(None)] * 3
            selector[axis] = ~inside
            out[tuple(selector)] = fill
    assert out.shape == shape
    return np.ascontiguousarray(out)


def _nearest_oblique(source: np.ndarray, matrix: np.ndarray, box: Box, fill: int) -> np.ndarray:
    """Nearest neighbour for grids whose axes are not parallel: one target slab at a time."""
    out = np.full(tuple(stop - start for start, stop in box), fill, dtype=source.dtype)
    b, c = np.meshgrid(np.arange(*box[1]), np.arange(*box[2]), indexing="ij")
    plane = np.stack([np.zeros_like(b), b, c], axis=-1).reshape(-1, 3).astype(np.float64)
    limits = np.array(source.shape)
    for n, a in enumerate(range(*box[0])):
        plane[:, 0] = a
        index = np.rint(plane @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.int64)
        inside = np.all((index >= 0) & (index < limits), axis=1)
        values = np.full(len(index), fill, dtype=source.dtype)
        values[inside] = source[tuple(index[inside].T)]
        out[n] = values.reshape(b.shape)
    return out


def box_to_target(
    source_box: Box, source_affine: np.ndarray, target_shape: Sequence[int], target_affine: np.ndarray,
    margin: int = 1,
) -> Box:
    """The part of a target grid that covers a box of a source grid (its corners), plus `margin`."""
    corners = np.array(
        [[lo if bit == 0 else hi - 1 for (lo, hi), bit in zip(source_box, bits, strict=True)]
         for bits in np.ndindex(2, 2, 2)],
        dtype=np.float64,
    )
    world = corners @ source_affine[:3, :3].T + source_affine[:3, 3]
    matrix = np.linalg.inv(target_affine)
    index = world @ matrix[:3, :3].T + matrix[:3, 3]
    lower = np.floor(index.min(axis=0)).astype(int) - margin
    upper = np.ceil(index.max(axis=0)).astype(int) + margin + 1
    return tuple(
        (max(0, int(lo)), min(int(n), int(hi)))
        for lo, hi, n in zip(lower, upper, target_shape, strict=True)
    )
