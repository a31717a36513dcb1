"""Comprehensive 3D SR with a TID 1500 Measurement Report of a cervical spine CT's fracture findings.

Content (PS3.16 TID 1500 → Imaging Measurements):

- one patient-level finding, TID 1501: finding type Fracture with finding site Cervical spine
  ("cervical spine fracture", post-coordinated), the qualitative evaluation "Fracture" =
  Present / Suspected / Absent at the fracture model's operating points, the patient-level
  fracture probability (TID 300), the algorithm (TID 4019);
- per present vertebra, two groups with the vertebra's tracking identifier and UID (the one its
  SEG segment carries, so all three pair up):
  - TID 1411 volumetric ROI: the ROI is the vertebra's SEG segment (Referenced Segment, with the
    CT series as Source Series for Segmentation), finding type Fracture, finding site the
    vertebra (CID 7602), its fracture probability and qualitative evaluation, the algorithm;
  - TID 1501: the same finding, site, probability and evaluation, the probability INFERRED FROM
    the vertebra's centre, an SCOORD3D POINT in the CT's frame of reference (TID 300 → TID 320
    "Source", SCT 260753009). A point cannot go into the TID 1411 group: TID 1419 measurements
    exclude TID 320 (the ROI is the segment) and TID 1411 takes one ROI reference only.

The observer is the fracture model as a device (TID 1004). Every CT instance and the SEG are
listed as evidence (Current Requested Procedure Evidence Sequence, PS3.3 C.17.2.2): that is the
reference to all sources. The Image Library (TID 1600) is optional and left out: highdicom would
write TID 1602 descriptors for every slice, about 1 kB each, for no reader we know of; the
segments already reference the CT series and the points its frame of reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.records import CSpineFindings, VertebraFinding
from node.results.cspine_template import CSpineTemplate
from node.results.producer import Producer
from node.results.sr import Tracking, observation_context

__all__ = ["Tracking", "build_cspine_sr", "vertebra_trackings"]


def vertebra_trackings(template: CSpineTemplate, labels: Sequence[int]) -> dict[int, Tracking]:
    """Fresh TID 4108 identifiers per vertebra label, shared by its SEG segment and SR group."""
    return {label: Tracking(template.tracking_identifier(label), generate_uid()) for label in labels}


def _probability(
    value: float, producer: Producer[CSpineTemplate], centre: hd.sr.CoordinatesForMeasurement3D | None = None
) -> hd.sr.Measurement:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability {value!r} is outside [0, 1]")
    template = producer.template
    return hd.sr.Measurement(
        name=template.probability,
        value=float(value),
        unit=template.probability_unit,
        referenced_coordinates=[centre] if centre is not None else None,
    )


def _evaluation(category: str, producer: Producer[CSpineTemplate]) -> hd.sr.QualitativeEvaluation:
    template = producer.template
    return hd.sr.QualitativeEvaluation(name=template.finding, value=template.evaluation(category))


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


def patient_group(
    findings: CSpineFindings, producer: Producer[CSpineTemplate]
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the patient-level cervical spine fracture finding with its probability."""
    template = producer.template
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=Tracking(template.study_tracking[:64], generate_uid()).content(),
        finding_type=template.finding,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(template.finding_site)],
        measurements=[_probability(findings.fracture_probability, producer)],
        qualitative_evaluations=[_evaluation(findings.category, producer)],
    )


def vertebra_group(
    vertebra: VertebraFinding,
    findings: CSpineFindings,
    seg: Dataset,
    segment_number: int,
    producer: Producer[CSpineTemplate],
    tracking: Tracking,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411: one vertebra, its SEG segment as the ROI, its fracture probability."""
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
        measurements=[_probability(vertebra.fracture_probability, producer)],
        qualitative_evaluations=[_evaluation(vertebra.category, producer)],
    )


def vertebra_centre_group(
    vertebra: VertebraFinding,
    findings: CSpineFindings,
    producer: Producer[CSpineTemplate],
    tracking: Tracking,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the vertebra's fracture probability inferred from its centre (SCOORD3D POINT)."""
    template = producer.template
    centre = centre_point(vertebra, findings.frame_of_reference_uid)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking.content(),
        finding_type=template.finding,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(template.vertebra(vertebra.label))],
        measurements=[_probability(vertebra.fracture_probability, producer, centre)],
        qualitative_evaluations=[_evaluation(vertebra.category, producer)],
    )


def build_cspine_sr(
    findings: CSpineFindings,
    sources: Sequence[Dataset],
    seg: Dataset,
    numbers: dict[int, int],
    producer: Producer[CSpineTemplate],
    trackings: dict[int, Tracking],
    series_instance_uid: str,
) -> hd.sr.Comprehensive3DSR:
    """The study's measurement report (see the module docstring); `numbers` maps label → segment."""
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = [patient_group(findings, producer)]
    for vertebra in findings.vertebrae:
        tracking = trackings[vertebra.label]
        groups.append(
            vertebra_group(vertebra, findings, seg, numbers[vertebra.label], producer, tracking)
        )
        groups.append(vertebra_centre_group(vertebra, findings, producer, tracking))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(producer),
        procedure_reported=producer.template.procedure_reported,
        imaging_measurements=groups,
        title=producer.template.title,
    )
    series = producer.template.series["sr"]
    return hd.sr.Comprehensive3DSR(
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
