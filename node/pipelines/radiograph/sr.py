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

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.pipelines.radiograph.findings import Findings, ImageFinding
from node.pipelines.radiograph.template import FractureTemplate
from node.results.polylines import closed_polyline
from node.results.producer import Producer
from node.results.sr_content import (
    comment,
    finding_sites,
    local_coding_scheme,
    observation_context,
    percent_probability,
    separate_items,
    with_comment,
)
from node.results.tracking import Tracking

POSITIVE = ("fracture", "suspicious")  # the categories whose images may carry regions


def image_tracking(producer: Producer[FractureTemplate], number: int) -> Tracking:
    """A fresh tracking identifier for the `number`-th (1-based) image finding of a study."""
    return Tracking(
        producer.template.image_tracking.format(image=number, region=0)[:64], generate_uid()
    )


def _evaluations(image: ImageFinding, producer: Producer[FractureTemplate]) -> list[hd.sr.QualitativeEvaluation]:
    template = producer.template
    try:
        value = template.presence[image.category]
    except KeyError:
        raise ValueError(
            f"finding {image.sop_instance_uid}: unknown category {image.category!r} "
            f"(known: {sorted(template.presence)})"
        ) from None
    return [hd.sr.QualitativeEvaluation(name=template.finding, value=value)]


def image_frame(source: Dataset) -> np.ndarray:
    """A closed polyline along the edges of the whole image, in SCOORD pixel coordinates."""
    rows, columns = float(source.Rows), float(source.Columns)
    return np.array(
        [[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]], dtype=np.float64
    )


def image_finding_group(
    image: ImageFinding, source: Dataset, producer: Producer[FractureTemplate], tracking: Tracking
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


def region_score(value: float, producer: Producer[FractureTemplate]) -> hd.sr.Measurement:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"region score {value!r} is outside [0, 1]")
    template = producer.template
    return hd.sr.Measurement(
        name=template.region_score, value=float(value), unit=template.region_score_unit
    )


def region_groups(
    image: ImageFinding, source: Dataset, producer: Producer[FractureTemplate], number: int
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
                    graphic_data=closed_polyline(region.polygon),
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
    producer: Producer[FractureTemplate],
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
