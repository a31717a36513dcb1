"""Secondary Capture (PS3.3 A.8.1) copy of a radiograph with the AI result burned in.

For PACS and viewers that show nothing but images. The picture is the radiograph as displayed
(Modality LUT → VOI → MONOCHROME1 inversion, by node.imaging.pixels, the same pipeline the
model and the previews use), at full resolution, as 8-bit RGB: the regions outlined in the
category's colour, the label top left and "not for diagnostic use" along the bottom. The
object says what it is: Burned In Annotation YES, Conversion Type WSD (workstation), Image Type
DERIVED\\SECONDARY, and the source in Source Image Sequence.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.dataset import Dataset as Item
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.imaging.pixels import Radiograph, load_radiograph
from node.pipelines.radiograph.findings import ImageFinding
from node.pipelines.radiograph.template import FractureTemplate
from node.results.colours import COLOURS
from node.results.polylines import closed_polyline
from node.results.producer import Producer, patient_orientation, series_laterality

_PLACEHOLDER_ORIENTATION = ("L", "F")  # highdicom wants one; replaced by the source's below
# Pillow's built-in font has no typographic dashes or quotes; burn in their ASCII look-alikes.
_ASCII_PUNCTUATION = str.maketrans(
    {"\u2014": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}
)


def displayed(source: Dataset) -> np.ndarray:
    """The source as a viewer shows it: uint8 (Rows, Columns), 0 black, bone bright."""
    loaded = load_radiograph(source)
    if isinstance(loaded, Radiograph):
        return np.clip(loaded.image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"cannot render {source.get('SOPInstanceUID', '?')}: {loaded.reason}")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    size: int,
    colour: tuple[int, int, int],
) -> None:
    """Text on a black box, so it reads on any part of the radiograph."""
    font = _font(size)
    text = text.translate(_ASCII_PUNCTUATION)
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    pad = max(2, size // 6)
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text(xy, text, fill=colour, font=font)


def burn_in(grey: np.ndarray, image: ImageFinding, label: str, disclaimer: str) -> np.ndarray:
    """uint8 RGB (Rows, Columns, 3): `grey` with regions, label and disclaimer drawn."""
    picture = Image.fromarray(grey, mode="L").convert("RGB")
    draw = ImageDraw.Draw(picture)
    colour = COLOURS[image.category]
    side = max(picture.size)
    width = max(2, round(side / 400))
    for region in image.regions:
        draw.line(
            [tuple(p) for p in closed_polyline(region.polygon).tolist()],
            fill=colour,
            width=width,
            joint="curve",
        )
    size = max(10, round(side / 45))
    margin = max(4, round(side / 100))
    _text(draw, (margin, margin), label, size, colour)
    _text(
        draw,
        (margin, picture.height - margin - round(1.3 * size)),
        disclaimer,
        size,
        (255, 255, 255),
    )
    return np.asarray(picture, dtype=np.uint8)


def build_secondary_capture(
    image: ImageFinding,
    source: Dataset,
    producer: Producer[FractureTemplate],
    series_instance_uid: str,
    instance_number: int,
) -> hd.sc.SCImage:
    """An RGB secondary capture of `source` with `image`'s result burned in."""
    image.check_source(source)
    template = producer.template
    label = template.image_label(image, producer.label_threshold)
    pixels = burn_in(displayed(source), image, label, template.disclaimer)
    series = template.series["secondary_capture"]
    equipment = producer.equipment
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series.number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=equipment["manufacturer"],  # type: ignore[arg-type]
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series.description,
        manufacturer_model_name=equipment["manufacturer_model_name"],
        software_versions=equipment["software_versions"],
        device_serial_number=equipment["device_serial_number"],
    )
    sc.copy_patient_and_study_information(source)
    # highdicom accepts single-letter orientations only; the source's own value (or empty) is right.
    sc.PatientOrientation = patient_orientation(source)
    sc.Laterality = series_laterality(source)
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"{label}; {producer.algorithm.name} {producer.algorithm.version}"[
        :1024
    ]
    reference = Item()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc
