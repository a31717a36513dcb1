"""Softcopy presentation state (GSPS, PS3.3 A.33.1) that draws the regions on one radiograph.

For PACS that show neither SR nor SEG: the regions as closed polylines and a short label on a
graphic layer, with the display pipeline a GSPS must state for itself (PS3.4 N.2):

- VOI: the source's own window or VOI LUT, copied by highdicom; a source without one gets a
  window over the 0.5–99.5 percentiles of its modality values, as fracnode's own rendering uses;
- Laterality: the source's, or empty (unknown) when it has none;
- Presentation LUT: INVERSE for MONOCHROME1 (or a source whose Presentation LUT Shape is
  INVERSE), because the GSPS presentation LUT replaces the image's photometric inversion.
"""

from __future__ import annotations

import pkgutil

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from node.pipelines.radiograph.findings import ImageFinding
from node.pipelines.radiograph.template import FractureTemplate
from node.results.colours import COLOURS
from node.results.polylines import closed_polyline
from node.results.producer import Producer, series_laterality

PERCENTILES = (0.5, 99.5)  # same display range as node.imaging.pixels for windowless images
_MARGIN = 0.01  # label position, as a fraction of the image size from the top-left corner


def inverted(source: Dataset) -> bool:
    return (
        source.get("PhotometricInterpretation") == "MONOCHROME1"
        or source.get("PresentationLUTShape") == "INVERSE"
    )


def srgb_profile() -> bytes:
    """sRGB, what an RGB image without an ICC profile is taken to be (the profile highdicom ships)."""
    profile = pkgutil.get_data("highdicom", "_icc_profiles/sRGB_v4_ICC_preference.icc")
    if not profile:
        raise FileNotFoundError("highdicom's sRGB ICC profile is missing")
    return profile


def has_voi(source: Dataset) -> bool:
    return bool(source.get("VOILUTSequence")) or (
        source.get("WindowCenter") is not None and source.get("WindowWidth") is not None
    )


def percentile_window(source: Dataset) -> hd.pr.SoftcopyVOILUTTransformation:
    """A linear window over the central 99 % of the modality values (for sources without VOI)."""
    values = apply_modality_lut(source.pixel_array, source).astype(np.float64)
    low, high = np.percentile(values, PERCENTILES)
    if high <= low:
        low, high = float(values.min()), float(values.max()) + 1.0
    return hd.pr.SoftcopyVOILUTTransformation(
        window_center=float((low + high) / 2),
        window_width=float(high - low),
        window_explanation="fracnode percentiles",
    )


def annotation(
    image: ImageFinding, source: Dataset, layer: hd.pr.GraphicLayer, label: str
) -> hd.pr.GraphicAnnotation:
    rows, columns = int(source.Rows), int(source.Columns)
    polylines = [
        hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=closed_polyline(region.polygon),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            is_filled=False,
        )
        for region in image.regions
    ]
    text = hd.pr.TextObject(
        text_value=label,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(
            _MARGIN * columns,
            _MARGIN * rows,
            min(columns - 1.0, (_MARGIN + 0.5) * columns),
            min(rows - 1.0, (_MARGIN + 0.06) * rows),
        ),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )
    return hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=polylines or None,
        text_objects=[text],
    )


def build_presentation_state(
    image: ImageFinding,
    source: Dataset,
    producer: Producer[FractureTemplate],
    series_instance_uid: str,
    instance_number: int,
) -> hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState:
    """A GSPS (colour PS for a colour source) on `source` with `image`'s regions and label."""
    image.check_source(source)
    template = producer.template
    label = template.image_label(image, producer.label_threshold)
    layer = hd.pr.GraphicLayer(
        layer_name=template.content_label,
        order=1,
        description=label[:64],  # LO
        display_color=hd.color.CIELabColor.from_rgb(*COLOURS[image.category]),
    )
    series = template.series["gsps"]
    description = f"{label} ({producer.algorithm.name} {producer.algorithm.version})"
    common = {
        "referenced_images": [source],
        "series_instance_uid": series_instance_uid,
        "series_number": series.number,
        "series_description": series.description,
        "sop_instance_uid": generate_uid(),
        "instance_number": instance_number,
        "content_label": template.content_label,
        "content_description": description[:64],
        "graphic_layers": [layer],
        "graphic_annotations": [annotation(image, source, layer, label)],
        **producer.equipment,
    }
    state: hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState
    if int(source.get("SamplesPerPixel", 1)) != 1:
        # grey stored as colour (the pipeline accepts it): a GSPS may only reference grayscale
        state = hd.pr.ColorSoftcopyPresentationState(
            **common,  # type: ignore[arg-type]
            icc_profile=source.get("ICCProfile") or srgb_profile(),
        )
    else:
        shape = (
            hd.PresentationLUTShapeValues.INVERSE
            if inverted(source)
            else hd.PresentationLUTShapeValues.IDENTITY
        )
        state = hd.pr.GrayscaleSoftcopyPresentationState(
            **common,  # type: ignore[arg-type]
            voi_lut_transformations=None if has_voi(source) else [percentile_window(source)],
            presentation_lut_transformation=hd.PresentationLUTTransformation(
                presentation_lut_shape=shape
            ),
        )
    state.Laterality = series_laterality(source)
    return state
