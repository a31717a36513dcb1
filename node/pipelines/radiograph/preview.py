"""PNG previews (`fracnode analyze`, the dashboard): the secondary capture's burned-in picture, scaled down."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from pydicom import Dataset, dcmread

from node.pipelines.radiograph.capture import burn_in, displayed
from node.pipelines.radiograph.findings import Findings, ImageFinding
from node.pipelines.radiograph.template import shipped_template

MAX_SIDE = 1024


def render(ds: Dataset, finding: ImageFinding, threshold: float | None = None) -> Image.Image:
    """An RGB image at most MAX_SIDE pixels on a side: regions outlined, label and disclaimer.

    `threshold` is the lowest operating point, which the label quotes (as the overlays do).
    """
    template = shipped_template()
    label = template.image_label(finding, threshold)
    picture = Image.fromarray(burn_in(displayed(ds), finding, label, template.disclaimer))
    scale = min(1.0, MAX_SIDE / max(picture.size))
    if scale < 1.0:
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture


def write_previews(findings: Findings, folder: Path) -> dict[str, Path]:
    """`preview_<SOP Instance UID>.png` of every image finding in `folder`, labelled against the
    lowest operating point as the overlays are."""
    previews = {}
    threshold = min((value for _, value in findings.thresholds), default=None)
    for image in findings.images:
        path = folder / f"preview_{image.sop_instance_uid}.png"
        render_png(dcmread(image.path), image, path, threshold)
        previews[image.sop_instance_uid] = path
    return previews


def render_png(
    ds: Dataset, finding: ImageFinding, path: Path, threshold: float | None = None
) -> Path:
    render(ds, finding, threshold).save(path, format="PNG")
    return path
