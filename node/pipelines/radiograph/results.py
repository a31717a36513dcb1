"""Results of the radiograph-fracture pipeline: Findings + source datasets → derived DICOM objects.

Always an SR (TID 1500) for the study. On request (a destination's `overlays`): a GSPS and/or a
secondary capture per source image, and `radiograph_seg`, a SEG per source image that has
regions. The SEG is opt-in because no standard-conformant radiograph SEG displays in OHIF 3.13
(see node.pipelines.radiograph.seg); the SR's outlines are what viewers draw. Pure: nothing is written or
sent here. Each kind of object goes into its own new series (numbers and descriptions from the
SR template), and every object gets a new SOP Instance UID.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from pydicom import Dataset
from pydicom.uid import generate_uid

from node.pipelines.radiograph.capture import build_secondary_capture
from node.pipelines.radiograph.findings import Findings, ImageFinding
from node.pipelines.radiograph.gsps import build_presentation_state
from node.pipelines.radiograph.seg import build_segmentation
from node.pipelines.radiograph.sr import build_sr, image_tracking
from node.pipelines.radiograph.template import FractureTemplate, shipped_template
from node.results import no_name_warnings
from node.results.producer import Producer

Overlay = Callable[[ImageFinding, Dataset, Producer[FractureTemplate], str, int], Dataset]
OVERLAYS: dict[str, Overlay] = {
    "gsps": build_presentation_state,
    "secondary_capture": build_secondary_capture,
}
RADIOGRAPH_SEG = "radiograph_seg"  # the optional object that is not an overlay of one image
OPTIONAL = (*OVERLAYS, RADIOGRAPH_SEG)


def _paired_sources(findings: Findings, sources: Mapping[str, Dataset]) -> dict[str, Dataset]:
    paired = {}
    for image in findings.images:
        source = sources.get(image.sop_instance_uid)
        if source is None:
            raise ValueError(f"finding for {image.sop_instance_uid} has no source dataset")
        if source.SOPInstanceUID != image.sop_instance_uid:
            raise ValueError(f"source under {image.sop_instance_uid} is {source.SOPInstanceUID}")
        if source.StudyInstanceUID != findings.study_instance_uid:
            raise ValueError(
                f"source {image.sop_instance_uid} is in study {source.StudyInstanceUID}, "
                f"findings are for {findings.study_instance_uid}"
            )
        paired[image.sop_instance_uid] = source
    return paired


def build_results(
    findings: Findings,
    sources: Mapping[str, Dataset],
    overlays: Collection[str] = frozenset(),
    template: FractureTemplate | None = None,
) -> list[Dataset]:
    """SR and the requested optional objects for one study: SEGs first, then the SR, then overlays.

    `sources` maps SOP Instance UID → source dataset (with pixel data when overlays are wanted);
    `overlays` ⊆ {"gsps", "secondary_capture", "radiograph_seg"}. No image with a region → no SEG.
    """
    with no_name_warnings():
        return _build(findings, sources, overlays, template)


def _build(
    findings: Findings,
    sources: Mapping[str, Dataset],
    overlays: Collection[str],
    template: FractureTemplate | None,
) -> list[Dataset]:
    unknown = sorted(set(overlays) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"overlays: unknown {unknown} (known: {sorted(OPTIONAL)})")
    if not findings.images:
        raise ValueError(
            f"study {findings.study_instance_uid}: no image findings, nothing to report"
        )
    paired = _paired_sources(findings, sources)
    producer = Producer(findings.algorithm, template or shipped_template(), findings.thresholds)

    trackings = {
        image.sop_instance_uid: image_tracking(producer, number)
        for number, image in enumerate(findings.images, start=1)
    }
    segmentations: list[Dataset] = []
    seg_series = generate_uid()
    wanted = findings.images if RADIOGRAPH_SEG in overlays else ()
    for image in (i for i in wanted if i.regions):
        tracking = trackings[image.sop_instance_uid]
        segmentations.append(
            build_segmentation(
                image,
                paired[image.sop_instance_uid],
                producer,
                seg_series,
                len(segmentations) + 1,
                tracking_id=tracking.identifier,
                tracking_uid=tracking.uid,
            )
        )
    report = build_sr(findings, paired, producer, trackings, segmentations, generate_uid())

    results: list[Dataset] = [*segmentations, report]
    for name in (n for n in OVERLAYS if n in overlays):
        series = generate_uid()
        for number, image in enumerate(findings.images, start=1):
            results.append(
                OVERLAYS[name](image, paired[image.sop_instance_uid], producer, series, number)
            )
    return results
