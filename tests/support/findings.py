"""Hand-made model findings against real or synthetic radiographs, for the results tests.

No model runs: a test says where the regions are and how sure the "model" was, and these
helpers build the matching `ImageFinding` (region map painted from the regions) and `Findings`.
Real images: the CR sample, and FracAtlas radiographs (JPEG, ../shared/data/fracatlas) wrapped as
DX with the annotators' fracture polygon as the region, so a test never depends on what the
model of the day would say.
"""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from node.pipelines.radiograph import Findings, ImageFinding, RegionFinding
from node.records import Algorithm
from tests.support import dicomgen

ALGORITHM = Algorithm(name="FracAtlasNet", version="1.2.0", weights_sha256="5e" * 32)
FRACATLAS = Path(__file__).resolve().parents[3] / "shared" / "data" / "fracatlas"
FRACATLAS_COCO = FRACATLAS / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
THRESHOLDS = (("fracture", 0.6), ("suspicious", 0.2))
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def dx_image(
    study_uid: str | None = None,
    rows: int = 96,
    columns: int = 80,
    imager_pixel_spacing: bool = True,
    patient_orientation: bool = True,
    window: tuple[float, float] | None = (2048.0, 4096.0),
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A small DX (for presentation); optionally without ImagerPixelSpacing, orientation or window."""
    ds = dicomgen.cr_image(
        study_uid=study_uid or generate_uid(), size=max(rows, columns), body_part="HAND"
    )
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, columns
    pixels = np.random.default_rng(rows * columns).integers(
        0, 4096, (rows, columns), dtype=np.uint16
    )
    ds.PixelData = pixels.tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if not imager_pixel_spacing:
        del ds.ImagerPixelSpacing
    if not patient_orientation:
        del ds.PatientOrientation
    return ds


def rgb_dx_image(study_uid: str | None = None, rows: int = 64, columns: int = 48) -> Dataset:
    """A grey DX stored as 8-bit RGB (equal channels), as some exporters write radiographs."""
    ds = dx_image(study_uid, rows, columns, window=None)
    grey = np.random.default_rng(7).integers(0, 256, (rows, columns), dtype=np.uint8)
    ds.PhotometricInterpretation = "RGB"
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = np.repeat(grey[..., None], 3, axis=-1).tobytes()
    return ds


def square(column: float, row: float, side: float, probability: float) -> RegionFinding:
    """An axis-aligned square region, polygon counter-clockwise from its top-left corner."""
    c1, r1 = column + side, row + side
    return RegionFinding(
        polygon=((column, row), (column, r1), (c1, r1), (c1, row)),
        box=(column, row, c1, r1),
        probability=probability,
    )


def region_map(source: Dataset, regions: tuple[RegionFinding, ...]) -> np.ndarray:
    """A probability map that peaks at each region's probability inside its box, with a soft rim."""
    plane = np.zeros((int(source.Rows), int(source.Columns)), np.float32)
    for region in regions:
        c0, r0, c1, r1 = (int(v) for v in region.box)
        plane[r0:r1, c0:c1] = np.maximum(plane[r0:r1, c0:c1], 0.5 * region.probability)
        plane[r0 + 1 : r1 - 1, c0 + 1 : c1 - 1] = region.probability
    return plane


def image_finding(
    source: Dataset,
    category: str,
    probability: float,
    regions: tuple[RegionFinding, ...] = (),
    body_region: str = "hand",
) -> ImageFinding:
    return ImageFinding(
        sop_instance_uid=str(source.SOPInstanceUID),
        path=Path(f"/spool/{source.SOPInstanceUID}.dcm"),
        fracture_probability=probability,
        category=category,
        regions=regions,
        region_map=region_map(source, regions),
        body_region=body_region,
        body_region_probability=0.9,
    )


def study_findings(*images: ImageFinding, study_uid: str) -> Findings:
    return Findings(
        study_instance_uid=study_uid, algorithm=ALGORITHM, images=images, thresholds=THRESHOLDS
    )


def cr_fracture_study(path: Path) -> tuple[Dataset, Findings]:
    """The real CR sample (1760² MONOCHROME1 lower leg) with two hand-placed fracture regions."""
    source = dcmread(path)
    regions = (square(700.0, 800.0, 120.0, 0.93), square(300.0, 1200.0, 60.0, 0.71))
    image = image_finding(source, "fracture", 0.87, regions, body_region="leg")
    return source, study_findings(image, study_uid=str(source.StudyInstanceUID))


def saved(ds: Dataset, folder: Path, name: str) -> Path:
    """`ds` written as a DICOM file (with file meta), as dispatch would send it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def polygon_region(polygon: tuple[tuple[float, float], ...], score: float) -> RegionFinding:
    """A region outlined by `polygon` ((column, row) points, not closed)."""
    points = np.asarray(polygon, dtype=np.float64)
    (c0, r0), (c1, r1) = points.min(axis=0), points.max(axis=0)
    return RegionFinding(
        polygon=tuple((float(c), float(r)) for c, r in points),
        box=(float(c0), float(r0), float(c1), float(r1)),
        probability=score,
    )


@cache
def _fracatlas_manifest() -> dict[str, dict[str, str]]:
    with (FRACATLAS / "manifest.csv").open(newline="") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle)}


@cache
def fracatlas_polygons(image_id: str) -> tuple[tuple[tuple[float, float], ...], ...]:
    """The annotated fracture polygons of one FracAtlas image (COCO, in its stored pixels)."""
    coco = json.loads(FRACATLAS_COCO.read_text(encoding="utf-8"))
    (image,) = [i for i in coco["images"] if i["file_name"] == image_id]
    return tuple(
        tuple(zip(flat[0::2], flat[1::2], strict=True))
        for annotation in coco["annotations"]
        if annotation["image_id"] == image["id"]
        for flat in annotation["segmentation"]
    )


def fracatlas_dx(image_id: str, study_uid: str | None = None) -> Dataset:
    """A FracAtlas radiograph as a DX (8-bit MONOCHROME2), BodyPartExamined from its manifest."""
    row = _fracatlas_manifest()[image_id]
    pixels = np.asarray(Image.open(FRACATLAS / row["image_path"]).convert("L"), dtype=np.uint8)
    body_part = row["body_part"].split("|")[0].upper()
    ds = dicomgen.radiograph(
        pixels,
        photometric="MONOCHROME2",
        BodyPartExamined=body_part,
        SeriesDescription=f"{body_part} {row['views'].split('|')[0]}",
        ImageType=["ORIGINAL", "PRIMARY"],
        PresentationIntentType="FOR PRESENTATION",
    )
    if study_uid:
        ds.StudyInstanceUID = study_uid
    return ds


def fracatlas_study(
    image_id: str, category: str, probability: float, score: float, body_region: str
) -> tuple[Dataset, Findings]:
    """A FracAtlas radiograph with the annotators' fracture polygons as the model's regions
    (none for a negative finding)."""
    source = fracatlas_dx(image_id)
    regions = (
        ()
        if category == "negative"
        else tuple(polygon_region(p, score) for p in fracatlas_polygons(image_id))
    )
    image = image_finding(source, category, probability, regions, body_region)
    return source, study_findings(image, study_uid=str(source.StudyInstanceUID))
