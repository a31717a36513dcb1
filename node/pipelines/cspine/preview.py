"""A cervical spine CT's preview: a sagittal slab through the spine with the vertebrae labelled.

What the dashboard shows for a cspine-fracture job (its HTTP route is node.web.previews).

Drawn from the spooled axial slices of the series the cspine pipeline analysed and the findings
the job recorded (vertebra centres in patient coordinates, PS3.3 C.7.6.2.1.1): a maximum
intensity projection of a 10 mm slab centred on the vertebrae, in a bone window, one label per
vertebra in its category's colour. Only a strip of each slice is kept in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread

from node.pipelines.cspine.findings import vertebra_name
from node.results.colours import COLOURS

SLAB_MM = 10.0
BONE_WINDOW = (400.0, 1800.0)  # centre, width (HU)
NOT_FOR_DIAGNOSIS = "AI result - not for diagnostic use"


def _geometry(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_dir, col_dir = orientation[:3], orientation[3:]
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))  # between rows, columns
    return position, row_dir, col_dir, spacing


def render_sagittal(paths: Sequence[Path], findings: dict[str, Any]) -> Image.Image:
    vertebrae = [v for v in findings.get("vertebrae", []) if isinstance(v, dict)]
    if not vertebrae:
        raise ValueError("the job recorded no vertebrae to draw")
    centre = np.mean([v["centre"] for v in vertebrae], axis=0)
    strips: list[tuple[float, np.ndarray]] = []
    first: tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]] | None = None
    for path in paths:
        ds = dcmread(path)
        geometry = _geometry(ds)
        position, row_dir, col_dir, spacing = geometry
        first = first or geometry
        normal = np.cross(row_dir, col_dir)
        # the column of the slab's centre: along the row direction (patient left for axial CT)
        column = float(np.dot(centre - position, row_dir) / spacing[1])
        half = max(1, round(SLAB_MM / 2 / spacing[1]))
        lo, hi = max(0, round(column) - half), min(int(ds.Columns), round(column) + half + 1)
        if lo >= hi:
            continue
        pixels = ds.pixel_array[:, lo:hi].astype(np.float32)
        hu = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        strips.append((float(np.dot(position, normal)), hu.max(axis=1)))
    if first is None or len(strips) < 2:
        raise ValueError("too few slices of the analysed series are in the spool to draw a sagittal view")
    strips.sort(key=lambda s: -s[0])  # superior (larger position along the normal) at the top
    slab = np.stack([s for _, s in strips])  # (slices, rows): top to bottom, anterior to posterior
    level, width = BONE_WINDOW
    grey = np.clip((slab - (level - width / 2)) / width * 255, 0, 255).astype(np.uint8)
    position, row_dir, col_dir, spacing = first
    normal = np.cross(row_dir, col_dir)
    step = abs(strips[0][0] - strips[-1][0]) / (len(strips) - 1)
    # display pixels per millimetre: at least 2, and at least 480 pixels on the longer side
    scale = max(2.0, 480 / max(slab.shape[1] * spacing[0], slab.shape[0] * step))
    size = (max(1, round(slab.shape[1] * spacing[0] * scale)), max(1, round(slab.shape[0] * step * scale)))
    image = Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    top = strips[0][0]
    for vertebra in vertebrae:
        point = np.array(vertebra["centre"], dtype=float)
        x = float(np.dot(point - position, col_dir) / spacing[0]) * spacing[0] * scale
        y = (top - float(np.dot(point, normal))) * scale
        colour = COLOURS.get(str(vertebra.get("category")), (255, 255, 255))
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=colour, width=2)
        label = f"{vertebra_name(int(vertebra['label']))} {float(vertebra['fracture_probability']):.2f}"
        draw.text((x + 8, y - 8), label, fill=colour, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    draw.text((6, 4), NOT_FOR_DIAGNOSIS, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return image


def sagittal_png(paths: Sequence[Path], findings: dict[str, Any]) -> bytes:
    buffer = BytesIO()
    render_sagittal(paths, findings).save(buffer, format="PNG")
    return buffer.getvalue()
