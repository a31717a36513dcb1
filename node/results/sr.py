"""Comprehensive 3D SR with a TID 1500 Measurement Report of the fracture findings of one study.

Content, per source image in study order (PS3.16 TID 1500 → Imaging Measurements):

- one image finding, TID 1501, for every image, positive or negative: finding type Fracture, the
  finding site from the body region (none when the site was not determined), the qualitative
  evaluation "Fracture" = Present / Suspected / Absent by model category, the image's fracture
  probability in percent (TID 300) INFERRED FROM a closed POLYLINE SCOORD around the whole image
  (the area the model read), the finding in words as a Comment (TEXT; TID 1501 is extensible),
  the source image (Source Image for Measurement Group) and the algorithm (TID 4019);
- per predicted region (only images at or above the suspicious operating point have any), one
  TID 1410 planar ROI: a closed POLYLINE SCOORD on the source image (first point repeated last,
  pixel coordinates with 0,0 the top-left corner of the top-left pixel, PS3.3 C.18.6.1.1), the
  image's evaluation and the region score: the peak of the model's region map inside the outline,
  coded as a score (99FRACNODE), not as a second probability of the finding. No finding site:
  the image finding carries it, and a site in every region would only repeat it.

Why every group has spatial coordinates: viewers draw TID 1500 groups by their SCOORDs. OHIF 3.13
merges groups by tracking UID and reads the first SCOORD of each; a group without one (the old
image finding) broke its viewport. With a frame around the image, a negative image shows its
probability too. OHIF prints a group's Comment and NUM items as the label ("AI: possible fracture,
lower limb", "Probability: 31.00 %"), which is why the probability's unit is % and the finding
is also a comment: it prints finding-site codes and qualitative evaluations poorly or not at all.

Every source image and every SEG made for the study are listed as evidence (Current Requested
Procedure Evidence Sequence, PS3.3 C.17.2.2). The SEG's segment carries the image finding's
tracking UID, which pairs it with the SR finding.

Image Library (TID 1600): highdicom writes TID 1603 projection radiography descriptors, which
need Patient Orientation and Imager Pixel Spacing. Images lacking either are left out of the
library (the library is optional); they stay referenced by their findings and as evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.records import Findings, ImageFinding, RegionFinding
from node.results.producer import Producer

LOCAL_SCHEME = "99FRACNODE"
POSITIVE = ("fracture", "suspicious")  # the categories whose images may carry regions
GroupT = TypeVar("GroupT", bound=hd.sr.templates.Template)
DocumentT = TypeVar("DocumentT", bound=Dataset)


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


def percent_probability(
    value: float,
    name: hd.sr.CodedConcept,
    unit: hd.sr.CodedConcept,
    coordinates: Sequence[
        hd.sr.CoordinatesForMeasurement | hd.sr.CoordinatesForMeasurement3D
    ] = (),
) -> hd.sr.Measurement:
    """TID 300: a probability in [0, 1] written in percent (`unit` is UCUM %)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability {value!r} is outside [0, 1]")
    return hd.sr.Measurement(
        name=name,
        value=100.0 * float(value),
        unit=unit,
        referenced_coordinates=list(coordinates) or None,
    )


def comment(text: str, name: hd.sr.CodedConcept) -> hd.sr.TextContentItem:
    """The finding in words (CONTAINS TEXT "Comment"), the label viewers print first."""
    return hd.sr.TextContentItem(
        name=name, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def with_comment(group: GroupT, text: hd.sr.TextContentItem) -> GroupT:
    """`group` with a Comment appended: TID 1501 and 1410 are extensible (PS3.16 6.2.4) and
    highdicom's constructors have no argument for it."""
    group[0].ContentSequence.append(text)
    return group


def image_frame(source: Dataset) -> np.ndarray:
    """A closed polyline along the edges of the whole image, in SCOORD pixel coordinates."""
    rows, columns = float(source.Rows), float(source.Columns)
    return np.array(
        [[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]], dtype=np.float64
    )


def finding_sites(site: hd.sr.CodedConcept | None) -> list[hd.sr.FindingSite] | None:
    return [hd.sr.FindingSite(site)] if site is not None else None


def image_finding_group(
    image: ImageFinding, source: Dataset, producer: Producer, tracking: Tracking
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the image-level fracture finding, its probability inferred from the whole image."""
    template = producer.template
    frame = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=image_frame(source),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking.content(),
        finding_type=template.finding,
        algorithm_id=producer.sr_algorithm(),
        finding_sites=finding_sites(template.finding_site(image.body_region)),
        measurements=[
            percent_probability(
                image.fracture_probability,
                template.probability,
                template.probability_unit,
                [frame],
            )
        ],
        qualitative_evaluations=_evaluations(image, producer),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    label = template.finding_words(image.category, image.body_region)
    return with_comment(group, comment(label, template.comment))


def region_score(value: float, producer: Producer) -> hd.sr.Measurement:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"region score {value!r} is outside [0, 1]")
    template = producer.template
    return hd.sr.Measurement(
        name=template.region_score, value=float(value), unit=template.region_score_unit
    )


def region_groups(
    image: ImageFinding, source: Dataset, producer: Producer, number: int
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """TID 1410 per region: a closed polyline on the source image with the region's score."""
    if image.regions and image.category not in POSITIVE:
        raise ValueError(
            f"finding {image.sop_instance_uid}: category {image.category!r} has regions; "
            f"regions belong only to images at or above the suspicious operating point"
        )
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
                measurements=[region_score(region.probability, producer)],
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
    document = hd.sr.Comprehensive3DSR(
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
    document.CodingSchemeIdentificationSequence = [local_coding_scheme()]
    return separate_items(document)


def separate_items(document: DocumentT) -> DocumentT:
    """Mark the document and its containers SEPARATE (PS3.3 C.17.3.2.2, Continuity of Content):
    a measurement group is a list of statements, not one sentence. highdicom writes CONTINUOUS,
    which renderers such as DCMTK's dsr2html honour by running the values together without their
    names ("87.0 % Present"); SEPARATE gets "Probability: 87.0 %", "Fracture: Present"."""
    pending: list[Dataset] = [document]
    while pending:
        item = pending.pop()
        if item.get("ValueType") == "CONTAINER":
            item.ContinuityOfContent = "SEPARATE"
        pending.extend(item.get("ContentSequence", []))
    return document


def local_coding_scheme() -> Dataset:
    """PS3.3 C.12.1.1.2: identifies the local scheme 99FRACNODE that the region score uses."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "fracnode result codes"
    item.CodingSchemeResponsibleOrganization = "fracnode"
    return item
