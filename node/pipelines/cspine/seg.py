"""Segmentation (PS3.3 A.51) of the cervical vertebrae the vertebra model found, BINARY.

- one segment per vertebra present in the label volume, numbered 1..K in label order; absent
  vertebrae get no segment (no empty segments). Segment type is the vertebra's SNOMED CT code
  (CID 7151), category Anatomical Structure (CID 7150), Anatomic Region Sequence Cervical spine;
  per-segment Algorithm Identification (the vertebra model) and the tracking id/UID of the
  vertebra's SR measurement group.
- frames only where a segment has pixels (highdicom omits empty frames), so a 600-slice CT with a
  neck of ~150 slices gives a few hundred 1-bit frames, not 600 × 7.
- the CT series is referenced (Referenced Series Sequence, Derivation Image per frame).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.pipelines.cspine.findings import VERTEBRAE
from node.pipelines.cspine.template import CSpineTemplate
from node.results.producer import Producer
from node.results.tracking import Tracking

CONTENT_LABEL = "VERTEBRAE"  # Content Label (CS, ≤ 16 characters)


def segment_description(
    label: int,
    number: int,
    producer: Producer[CSpineTemplate],
    tracking: Tracking,
) -> hd.seg.SegmentDescription:
    template = producer.template
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=template.segment_label(label),
        segmented_property_category=template.segment_category,
        segmented_property_type=template.vertebra(label),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=producer.seg_algorithm(),
        tracking_uid=tracking.uid,
        tracking_id=tracking.identifier,
        anatomic_regions=[template.finding_site],
    )


def segment_numbers(present: Sequence[int]) -> dict[int, int]:
    """Label value → segment number: present vertebrae numbered 1..K in label order (PS3.3
    C.8.20.2: segment numbers start at 1 and increase by 1)."""
    return {label: number for number, label in enumerate(sorted(present), start=1)}


def build_cspine_segmentation(
    sources: Sequence[Dataset],
    labels: np.ndarray,
    numbers: dict[int, int],
    producer: Producer[CSpineTemplate],
    trackings: dict[int, Tracking],
    series_instance_uid: str,
) -> hd.seg.Segmentation:
    """A BINARY SEG with one segment per present vertebra (see the module docstring)."""
    if any(label != number for label, number in numbers.items()):
        lookup = np.zeros(len(VERTEBRAE) + 1, dtype=np.uint8)
        for label, number in numbers.items():
            lookup[label] = number
        labels = lookup[labels]  # one uint8 copy: segment numbers must be 1..K
    elif labels.dtype != np.uint8:
        labels = labels.astype(np.uint8)
    series = producer.template.series["seg"]
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            segment_description(label, number, producer, trackings[label])
            for label, number in numbers.items()
        ],
        series_instance_uid=series_instance_uid,
        series_number=series.number,
        series_description=series.description,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        content_label=CONTENT_LABEL,
        content_description=f"{producer.algorithm.name} {producer.algorithm.version}"[:64],
        omit_empty_frames=True,
        **producer.equipment,  # type: ignore[arg-type]
    )
