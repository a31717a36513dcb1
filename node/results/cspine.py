"""Results of the cspine-fracture pipeline: a SEG of the cervical vertebrae and a TID 1500 SR.

Input: `CSpineFindings`, the CT series' datasets in slice order (headers suffice, pixel data is
not read) and the vertebra label volume (uint8 (slices, rows, columns), 1 = C1 … 7 = C7, on the
CT grid). Output: the SEG, then the SR, each in its own new series (numbers and descriptions from
`sr_templates/cspine-fracture.yaml`), with new SOP Instance UIDs; patient and study copied from
the CT by highdicom. Pure: nothing is written or sent here.

SEG (PS3.3 A.51), BINARY:
- one segment per vertebra present in the label volume, numbered 1..K in label order; absent
  vertebrae get no segment (no empty segments). Segment type is the vertebra's SNOMED CT code
  (CID 7151), category Anatomical Structure (CID 7150), Anatomic Region Sequence Cervical spine;
  per-segment Algorithm Identification (the vertebra model) and the tracking id/UID of the
  vertebra's SR measurement group.
- frames only where a segment has pixels (highdicom omits empty frames), so a 600-slice CT with a
  neck of ~150 slices gives a few hundred 1-bit frames, not 600 × 7.
- the CT series is referenced (Referenced Series Sequence, Derivation Image per frame).

SR (Comprehensive 3D SR, TID 1500), see `node.results.cspine_sr`; where each vertebra lies on the
CT's slices, see `node.results.cspine_slices`.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.records import CSpineFindings
from node.results import no_name_warnings
from node.results.cspine_slices import place, slice_counts
from node.results.cspine_sr import Tracking, build_cspine_sr, vertebra_trackings
from node.results.cspine_template import (
    VERTEBRAE,
    CSpineTemplate,
    shipped_cspine_template,
    vertebra_name,
)
from node.results.producer import Producer

CONTENT_LABEL = "VERTEBRAE"  # Content Label (CS, ≤ 16 characters)


def check_inputs(
    findings: CSpineFindings, sources: Sequence[Dataset], labels: np.ndarray, counts: np.ndarray
) -> dict[int, int]:
    """Validate the inputs against each other; returns label value → voxel count of each present one.

    `counts` are `slice_counts(labels)`. Raises ValueError naming the argument and value that
    disagree.
    """
    if not sources:
        raise ValueError(f"study {findings.study_instance_uid}: no source CT datasets")
    for index, ds in enumerate(sources):
        if ds.StudyInstanceUID != findings.study_instance_uid:
            raise ValueError(
                f"sources[{index}] is in study {ds.StudyInstanceUID}, "
                f"findings are for {findings.study_instance_uid}"
            )
        if ds.SeriesInstanceUID != findings.series_instance_uid:
            raise ValueError(
                f"sources[{index}] is in series {ds.SeriesInstanceUID}, "
                f"findings are for series {findings.series_instance_uid}"
            )
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if labels.shape != expected:
        raise ValueError(
            f"labels have shape {labels.shape}; the CT series is {expected} (slices, rows, columns)"
        )
    totals = counts.sum(axis=0)
    present = {label: int(totals[label]) for label in range(1, len(VERTEBRAE) + 1) if totals[label]}
    if not present:
        raise ValueError(f"study {findings.study_instance_uid}: the label volume has no vertebra")
    reported = [v.label for v in findings.vertebrae]
    if reported != sorted(present):
        raise ValueError(
            f"findings report vertebrae {[vertebra_name(v) for v in reported if 1 <= v <= 7]} "
            f"(labels {reported}), the label volume holds "
            f"{[vertebra_name(v) for v in sorted(present)]}: each present vertebra needs exactly one "
            "finding, in label order"
        )
    return present


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


def build_cspine_results(
    findings: CSpineFindings,
    sources: Sequence[Dataset],
    labels: np.ndarray,
    template: CSpineTemplate | None = None,
) -> list[Dataset]:
    """SEG and SR for one cervical spine CT, the SEG first (the SR references it).

    `sources` are the CT series' datasets in the slice order of `labels` (the order
    `node.inference.volume.build_volume` returns), headers only or with pixel data.
    """
    with no_name_warnings():
        template = template or shipped_cspine_template()
        if labels.dtype.kind not in "ui":
            raise ValueError(f"labels must be an integer label volume, got dtype {labels.dtype}")
        counts = slice_counts(labels, len(VERTEBRAE))
        present = check_inputs(findings, sources, labels, counts)
        places = {
            v.label: place(sources, labels, counts, v.label, v.centre) for v in findings.vertebrae
        }
        numbers = segment_numbers(list(present))
        trackings = vertebra_trackings(template, list(present))
        seg_producer = Producer(findings.segmentation_algorithm, template)
        sr_producer = Producer(findings.fracture_algorithm, template, findings.thresholds)
        seg = build_cspine_segmentation(
            sources, labels, numbers, seg_producer, trackings, generate_uid()
        )
        report = build_cspine_sr(
            findings, sources, seg, numbers, sr_producer, trackings, places, generate_uid()
        )
        return [seg, report]
