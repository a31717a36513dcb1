"""Comprehensive 3D SR with a TID 1500 Measurement Report of the fracture findings of one study.

Content, per source image in study order (PS3.16 TID 1500 → Imaging Measurements):

- one image-level finding, TID 1501: finding type Fracture, finding site from the body region,
  the qualitative evaluation "Fracture" = Present / Suspected / Absent by model category, the
  fracture probability as a TID 300 measurement, the source image (Source Image for Measurement
  Group), the algorithm (TID 4019); every image gets one, with regions or without;
- one TID 1410 planar ROI per predicted region: a closed POLYLINE SCOORD on the source image
  (first point repeated last, pixel coordinates with 0,0 the top-left corner of the top-left
  pixel, PS3.3 C.18.6.1.1), the same evaluation, and the region's peak probability.

Every source image and every SEG made for the study are listed as evidence (Current Requested
Procedure Evidence Sequence, PS3.3 C.17.2.2): TID 1410 holds either a region or a segment, never
both, and the polylines are what viewers draw. The segment carries the image finding's tracking
UID, which pairs it with the SR finding.

Image Library (TID 1600): highdicom writes TID 1603 projection radiography descriptors, which
need Patient Orientation and Imager Pixel Spacing. Images lacking either are left out of the
library (the library is optional); they stay referenced by their findings and as evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.records import Findings, ImageFinding, RegionFinding
from node.results.producer import Producer


@dataclass(frozen=True)
class Tracking:
    """TID 4108 Tracking Identifier: a readable id and a UID."""

    identifier: str
    uid: str

    def content(self) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(uid=self.uid, identifier=self.identifier)


def image_tracking(producer: Producer, number: int) -> Tracking:
    """A fresh tracking identifier for the `number`-th (1-based) image finding of a study."""
    return Tracking(
        producer.template.image_tracking.format(image=number, region=0)[:64], generate_uid()
    )


def closed_polyline(region: RegionFinding) -> np.ndarray:
    """The region polygon as SCOORD graphic data: (column, row) points, the first repeated last."""
    points = np.asarray(region.polygon, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise ValueError(
            f"region polygon needs at least 3 (column, row) points, got {region.polygon!r}"
        )
    if np.array_equal(points[0], points[-1]):
        raise ValueError(
            "region polygon must not repeat its first point (RegionFinding convention)"
        )
    return np.vstack([points, points[:1]])


def observation_context(producer: Producer) -> hd.sr.ObservationContext:
    """TID 1001 with a device observer (TID 1004): the algorithm, by a UID stable per model build."""
    algorithm = producer.algorithm
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(
                    entropy_srcs=[algorithm.name, algorithm.version, algorithm.weights_sha256]
                ),
                name=algorithm.name,
                manufacturer_name=producer.equipment["manufacturer"],  # type: ignore[arg-type]
                model_name=algorithm.name,
            ),
        )
    )


def _evaluations(image: ImageFinding, producer: Producer) -> list[hd.sr.QualitativeEvaluation]:
    template = producer.template
    try:
        value = template.presence[image.category]
    except KeyError:
        raise ValueError(
            f"finding {image.sop_instance_uid}: unknown category {image.category!r} "
            f"(known: {sorted(template.presence)})"
        ) from None
    return [hd.sr.QualitativeEvaluation(name=template.finding, value=value)]


def _probability(value: float, producer: Producer) -> hd.sr.Measurement:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability {value!r} is outside [0, 1]")
    template = producer.template
    return hd.sr.Measurement(
        name=template.probability, value=float(value), unit=template.probability_unit
    )


def image_finding_group(
    image: ImageFinding, source: Dataset, producer: Producer, tracking: Tracking
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the image-level fracture finding with its probability."""
    template = producer.template
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking.content(),
        finding_type=template.finding,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(template.finding_site(image.body_region))],
        measurements=[_probability(image.fracture_probability, producer)],
        qualitative_evaluations=_evaluations(image, producer),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def region_groups(
    image: ImageFinding, source: Dataset, producer: Producer, number: int
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """TID 1410 per region: a closed polyline on the source image with the region's probability."""
    template = producer.template
    groups = []
    for index, region in enumerate(image.regions, start=1):
        tracking = Tracking(
            template.region_tracking.format(image=number, region=index)[:64], generate_uid()
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking.content(),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=closed_polyline(region),
                    source_image=hd.sr.SourceImageForRegion.from_source_image(source),
                ),
                finding_type=template.finding,
                algorithm_id=producer.sr_algorithm(),
                finding_sites=[hd.sr.FindingSite(template.finding_site(image.body_region))],
                measurements=[_probability(region.probability, producer)],
                qualitative_evaluations=_evaluations(image, producer),
            )
        )
    return groups


def library_images(sources: Sequence[Dataset]) -> list[Dataset]:
    """The sources highdicom can describe in the Image Library (see the module docstring)."""
    return [
        ds
        for ds in sources
        if "PatientOrientation" in ds
        and "ImagerPixelSpacing" in ds
        and len(ds.PatientOrientation) == 2
    ]


def build_sr(
    findings: Findings,
    sources: Mapping[str, Dataset],
    producer: Producer,
    trackings: Mapping[str, Tracking],
    segmentations: Sequence[Dataset],
    series_instance_uid: str,
    instance_number: int = 1,
) -> hd.sr.Comprehensive3DSR:
    """The study's measurement report; `trackings` holds each image finding's identifiers by SOP UID."""
    if not findings.images:
        raise ValueError(f"study {findings.study_instance_uid}: no image findings to report")
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for number, image in enumerate(findings.images, start=1):
        source = sources[image.sop_instance_uid]
        groups.append(
            image_finding_group(image, source, producer, trackings[image.sop_instance_uid])
        )
        groups.extend(region_groups(image, source, producer, number))
    evidence = [sources[image.sop_instance_uid] for image in findings.images]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(producer),
        procedure_reported=producer.template.procedure_reported,
        imaging_measurements=groups,
        title=producer.template.title,
        referenced_images=library_images(evidence) or None,
    )
    series = producer.template.series["sr"]
    return hd.sr.Comprehensive3DSR(
        evidence=[*evidence, *segmentations],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series.number,
        series_description=series.description,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        is_complete=True,
        **producer.equipment,  # type: ignore[arg-type]
    )
