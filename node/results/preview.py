"""PNG previews for `fracnode analyze`: the radiograph as displayed, with the model's regions drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from node.records import ImageFinding

COLOURS = {"fracture": (255, 48, 48), "suspicious": (255, 200, 0), "negative": (80, 200, 120)}
MAX_SIDE = 1024


def render(ds: Dataset, finding: ImageFinding) -> Image.Image:
    """An RGB image at most MAX_SIDE pixels on a side: regions outlined, a label in the corner."""
    from node.inference.pixels import Skipped, load_radiograph

    loaded = load_radiograph(ds)
    if isinstance(loaded, Skipped):
        raise ValueError(f"cannot render {finding.sop_instance_uid}: {loaded.reason}")
    gray = np.clip(loaded.image * 255 + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(gray, mode="L").convert("RGB")
    scale = min(1.0, MAX_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    colour = COLOURS[finding.category]
    width = max(2, round(max(image.size) / 300))
    for region in finding.regions:
        points = [(x * scale, y * scale) for x, y in region.polygon]
        draw.line([*points, points[0]], fill=colour, width=width)
    label = (
        f"AI: {finding.category} {100 * finding.fracture_probability:.0f}%"
        f" | {finding.body_region} | not for diagnostic use"
    )
    font = ImageFont.load_default(size=max(12, image.height // 45))
    left, top, right, bottom = draw.textbbox((6, 6), label, font=font)
    draw.rectangle((0, 0, right + 6, bottom + 6), fill=(0, 0, 0))
    draw.text((6, 6), label, fill=colour, font=font)
    return image


def render_png(ds: Dataset, finding: ImageFinding, path: Path) -> Path:
    render(ds, finding).save(path, format="PNG")
    return path
