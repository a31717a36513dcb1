"""Comprehensive 3D SR with a TID 1500 Measurement Report of a cervical spine CT's fracture findings.

Content (PS3.16 TID 1500 → Imaging Measurements):

- one patient-level finding, TID 1501: finding type Fracture with finding site Cervical spine
  ("cervical spine fracture", post-coordinated), the qualitative evaluation "Fracture" =
  Present / Suspected / Absent at the fracture model's operating points, the patient-level
  fracture probability in percent (TID 300) INFERRED FROM each vertebra's centre as a POINT on
  its nearest slice (the vertebra with the highest probability first: the one a viewer shows),
  the finding in words as a Comment (TEXT), the algorithm (TID 4019);
- per present vertebra, two groups with the vertebra's tracking identifier and UID (the one its
  SEG segment carries, so all three pair up):
  - TID 1411 volumetric ROI: the ROI is the vertebra's SEG segment (Referenced Segment, with the
    CT series as Source Series for Segmentation), finding type Fracture, finding site the
    vertebra (CID 7602), its qualitative evaluation, the algorithm;
  - TID 1501: the same finding, site and evaluation, the vertebra's fracture probability in
    percent INFERRED FROM its cross-section's outline (SCOORD POLYLINE) on the source slice
    nearest its centre and from its centre (SCOORD3D POINT in the CT's frame of reference), the
    finding in words as a Comment. The probability is written once per vertebra, here: OHIF
    merges the groups of one tracking UID and prints every NUM, so a copy in the TID 1411 group
    would print twice.

Why the 2D coordinates: OHIF 3.13 merges groups by tracking UID and reads the first SCOORD of
each; a group without one (the old patient-level finding) broke its viewport, and SCOORD3D points
it does not place on slices. With the slice outlines it opens the SR on the top vertebra's slice
and draws each vertebra on its own; the SCOORD3D stays for viewers that use the frame of
reference. TID 1501 and 1410 are extensible (PS3.16 6.2.4), which admits the Comment.

The observer is the fracture model as a device (TID 1004). Every CT instance and the SEG are
listed as evidence (Current Requested Procedure Evidence Sequence, PS3.3 C.17.2.2): that is the
reference to all sources. The Image Library (TID 1600) is optional and left out: highdicom would
write TID 1602 descriptors for every slice, about 1 kB each, for no reader we know of; the
segments already reference the CT series and the coordinates their slices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.pipelines.cspine.findings import CSpineFindings, VertebraFinding
from node.pipelines.cspine.slices import SlicePlace
from node.pipelines.cspine.template import CSpineTemplate
from node.results.producer import Producer
from node.results.sr_content import (
    comment,
    observation_context,
    percent_probability,
    separate_items,
    with_comment,
)
from node.results.tracking import Tracking
from node.results.wording import site_phrase

__all__ = ["build_cspine_sr", "vertebra_trackings"]


def vertebra_trackings(template: CSpineTemplate, labels: Sequence[int]) -> dict[int, Tracking]:
    """Fresh TID 4108 identifiers per vertebra label, shared by its SEG segment and SR group."""
    return {label: Tracking(template.tracking_identifier(label), generate_uid()) for label in labels}


def _evaluation(category: str, producer: Producer[CSpineTemplate]) -> hd.sr.QualitativeEvaluation:
    template = producer.template
    return hd.sr.QualitativeEvaluation(name=template.finding, value=template.evaluation(category))


def _label(
    category: str, site: hd.sr.CodedConcept, producer: Producer[CSpineTemplate]
) -> hd.sr.TextContentItem:
    template = producer.template
    return comment(template.wording.finding(category, site_phrase(site.meaning)), template.comment)


def centre_point(vertebra: VertebraFinding, frame_of_reference_uid: str) -> hd.sr.CoordinatesForMeasurement3D:
    """The vertebra's centre as an SCOORD3D POINT (x, y, z in mm, PS3.3 C.18.9.1.2)."""
    point = np.asarray(vertebra.centre, dtype=np.float64).reshape(-1)
    if point.shape != (3,) or not all(math.isfinite(v) for v in point):
        raise ValueError(
            f"vertebra label {vertebra.label}: centre must be three finite (x, y, z) mm, "
            f"got {vertebra.centre!r}"
        )
    return hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=point.reshape(1, 3),
        frame_of_reference_uid=frame_of_reference_uid,
    )


def slice_point(where: SlicePlace, sources: Sequence[Dataset]) -> hd.sr.CoordinatesForMeasurement:
    """A vertebra's centre as a POINT on its slice."""
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.asarray([where.centre], dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion.from_source_image(sources[where.index]),
    )


def slice_outline(where: SlicePlace, sources: Sequence[Dataset]) -> hd.sr.CoordinatesForMeasurement:
    """A vertebra's cross-section outline as a closed POLYLINE on its slice."""
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=where.outline,
        source_image=hd.sr.SourceImageForRegion.from_source_image(sources[where.index]),
    )


def patient_group(
    findings: CSpineFindings,
    sources: Sequence[Dataset],
    places: Mapping[int, SlicePlace],
    producer: Producer[CSpineTemplate],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the patient-level cervical spine fracture finding, inferred from the vertebrae."""
    template = producer.template
    # highest probability first: a viewer that shows one source shows the vertebra that decided
    ranked = sorted(findings.vertebrae, key=lambda v: (-v.fracture_probability, v.label))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=Tracking(template.study_tracking[:64], generate_uid()).content(),
        finding_type=template.finding,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(template.finding_site)],
        measurements=[
            percent_probability(
                findings.fracture_probability,
                template.probability,
                template.probability_unit,
                [slice_point(places[v.label], sources) for v in ranked],
            )
        ],
        qualitative_evaluations=[_evaluation(findings.category, producer)],
    )
    label = _label(findings.category, template.finding_site, producer)
    return with_comment(group, label)


def vertebra_group(
    vertebra: VertebraFinding,
    findings: CSpineFindings,
    seg: Dataset,
    segment_number: int,
    producer: Producer[CSpineTemplate],
    tracking: Tracking,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411: one vertebra, its SEG segment as the ROI (the probability is in its TID 1501)."""
    template = producer.template
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking.content(),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(findings.series_instance_uid),
        ),
        finding_type=template.finding,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(template.vertebra(vertebra.label))],
        qualitative_evaluations=[_evaluation(vertebra.category, producer)],
    )


def vertebra_location_group(
    vertebra: VertebraFinding,
    findings: CSpineFindings,
    sources: Sequence[Dataset],
    where: SlicePlace,
    producer: Producer[CSpineTemplate],
    tracking: Tracking,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the vertebra's probability inferred from its outline on a slice and its centre."""
    template = producer.template
    site = template.vertebra(vertebra.label)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking.content(),
        finding_type=template.finding,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(site)],
        measurements=[
            percent_probability(
                vertebra.fracture_probability,
                template.probability,
                template.probability_unit,
                [
                    slice_outline(where, sources),
                    centre_point(vertebra, findings.frame_of_reference_uid),
                ],
            )
        ],
        qualitative_evaluations=[_evaluation(vertebra.category, producer)],
    )
    return with_comment(
        group, _label(vertebra.category, site, producer)
    )


def build_cspine_sr(
    findings: CSpineFindings,
    sources: Sequence[Dataset],
    seg: Dataset,
    numbers: dict[int, int],
    producer: Producer[CSpineTemplate],
    trackings: dict[int, Tracking],
    places: Mapping[int, SlicePlace],
    series_instance_uid: str,
) -> hd.sr.Comprehensive3DSR:
    """The study's measurement report (see the module docstring); `numbers` maps label → segment,
    `places` label → where the vertebra is on the slices."""
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = [patient_group(findings, sources, places, producer)]
    for vertebra in findings.vertebrae:
        tracking = trackings[vertebra.label]
        groups.append(
            vertebra_group(vertebra, findings, seg, numbers[vertebra.label], producer, tracking)
        )
        groups.append(
            vertebra_location_group(
                vertebra, findings, sources, places[vertebra.label], producer, tracking
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(producer),
        procedure_reported=producer.template.procedure_reported,
        imaging_measurements=groups,
        title=producer.template.title,
    )
    series = producer.template.series["sr"]
    document = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series.number,
        series_description=series.description,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        is_complete=True,
        **producer.equipment,  # type: ignore[arg-type]
    )
    return separate_items(document)
