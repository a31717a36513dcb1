"""Segmentation (PS3.3 A.51) of the predicted fracture regions on one radiograph.

Choices, and why:

- Optional (a destination's `overlays: [radiograph_seg]`), never sent by default: OHIF 3.13 cannot
  display it. OHIF's SEG loader needs the Pixel Measures and Plane Orientation functional groups,
  which PS3.3 A.51 (Table A.51-2) ties to a patient frame of reference that a projection
  radiograph does not have (highdicom refuses them here), and it rejects FRACTIONAL segments
  ("Fractional segmentations are not yet supported"). A SEG that OHIF would load would have to
  invent a frame of reference; fracnode does not write one. What OHIF shows of a radiograph is
  the SR: the region outlines (TID 1410) and the image finding. The SEG is for readers of the
  standard object that keep the per-pixel map (3D Slicer, highdicom, research archives).
- FRACTIONAL / PROBABILITY (PS3.3 C.8.20.2.3), from the model's region map, not a BINARY mask of
  the thresholded regions. The map is what the model actually said, per pixel; the thresholded
  outline is already in the SR as TID 1410 polylines, so a binary SEG would only repeat it while
  discarding the map. 8 bits (max fractional value 255) resolve it to 0.4 %.
- One SEG per source image that has regions, not one per study: highdicom (like the IOD for
  images without a frame of reference) builds a SEG over one series of equally sized images, and
  a study's radiographs are usually separate series of different sizes.
- Uncompressed (Explicit VR Little Endian), which every SEG reader handles.
- Patient Orientation copied from the source (empty when the source has none), which General
  Image requires of a 2D image without Image Orientation (Patient).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.pipelines.radiograph.findings import ImageFinding
from node.pipelines.radiograph.template import FractureTemplate
from node.results.producer import Producer, patient_orientation

SEGMENT_NUMBER = 1  # one segment: the fracture region map


def region_probabilities(image: ImageFinding, source: Dataset) -> np.ndarray:
    """The finding's region map as float32 (Rows, Columns) in [0, 1], checked against the source."""
    probabilities = np.asarray(image.region_map, dtype=np.float32)
    expected = (int(source.Rows), int(source.Columns))
    if probabilities.shape != expected:
        raise ValueError(
            f"region_map of {image.sop_instance_uid} has shape {probabilities.shape}, "
            f"the source image is {expected}"
        )
    if not np.isfinite(probabilities).all():
        raise ValueError(f"region_map of {image.sop_instance_uid} holds NaN or infinite values")
    return np.clip(probabilities, 0.0, 1.0)


def segment_description(
    image: ImageFinding, producer: Producer[FractureTemplate], tracking_id: str, tracking_uid: str
) -> hd.seg.SegmentDescription:
    template = producer.template
    site = template.finding_site(image.body_region)  # None: site not determined, no region
    return hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=template.segment_label,
        segmented_property_category=template.segment_category,
        segmented_property_type=template.segment_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=producer.seg_algorithm(),
        tracking_uid=tracking_uid,
        tracking_id=tracking_id,
        anatomic_regions=[site] if site is not None else None,
    )


def build_segmentation(
    image: ImageFinding,
    source: Dataset,
    producer: Producer[FractureTemplate],
    series_instance_uid: str,
    instance_number: int,
    tracking_id: str,
    tracking_uid: str,
) -> hd.seg.Segmentation:
    """A fractional SEG of `image`'s region map on `source`; the caller decides whether one is due.

    `tracking_id`/`tracking_uid` are the image finding's TID 4108 identifiers in the SR, so a
    reader can pair the segment with the SR finding.
    """
    image.check_source(source)
    probabilities = region_probabilities(image, source)
    if not probabilities.any():
        raise ValueError(
            f"region_map of {image.sop_instance_uid} is empty: no segmentation to build"
        )
    series = producer.template.series["seg"]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=probabilities,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        segment_descriptions=[segment_description(image, producer, tracking_id, tracking_uid)],
        series_instance_uid=series_instance_uid,
        series_number=series.number,
        series_description=series.description,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        content_label="FRACTURE",
        content_description=f"{producer.algorithm.name} {producer.algorithm.version}"[:64],
        omit_empty_frames=False,
        **producer.equipment,  # type: ignore[arg-type]
    )
    seg.PatientOrientation = patient_orientation(source)
    return seg
