"""PNG previews for `fracnode analyze`: the secondary capture's burned-in picture, scaled down."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from pydicom import Dataset

from node.records import ImageFinding
from node.results.capture import burn_in, displayed
from node.results.templates import shipped_template

MAX_SIDE = 1024


def render(ds: Dataset, finding: ImageFinding, threshold: float | None = None) -> Image.Image:
    """An RGB image at most MAX_SIDE pixels on a side: regions outlined, label and disclaimer.

    `threshold` is the lowest operating point, which the label quotes (as the overlays do).
    """
    template = shipped_template()
    label = template.label(
        finding.category, finding.fracture_probability, finding.body_region, threshold
    )
    picture = Image.fromarray(burn_in(displayed(ds), finding, label, template.disclaimer))
    scale = min(1.0, MAX_SIDE / max(picture.size))
    if scale < 1.0:
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture


def render_png(
    ds: Dataset, finding: ImageFinding, path: Path, threshold: float | None = None
) -> Path:
    render(ds, finding, threshold).save(path, format="PNG")
    return path
