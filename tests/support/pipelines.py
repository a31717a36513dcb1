"""Pipelines defined by the test suite (loaded through `pipeline_modules`).

`test-kos` produces a real derived object: a Key Object Selection document (PS3.3 A.59) that
references every instance of the routed series, so a test can check which instances the node
processed. `test-flaky` fails a set number of times first; `test-decline` is never applicable.
`test-regions` adds findings: every image a "fracture" with one square region (REGION_BOX).
"""

from __future__ import annotations

import threading

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.config import Config
from node.pipelines import register
from node.records import (
    Algorithm,
    CSpineFindings,
    Findings,
    ImageFinding,
    PipelineInput,
    PipelineOutcome,
    RegionFinding,
    VertebraFinding,
)

FLAKY_FAILURES = {"remaining": 0}
_flaky_lock = threading.Lock()


class KeyObjectPipeline:
    name = "test-kos"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        evidence = [
            dcmread(path, stop_before_pixels=True) for series in request.series for path in series.paths
        ]
        content = hd.ko.KeyObjectSelection(
            document_title=codes.DCM.OfInterest,
            referenced_objects=evidence,
            description=f"fracnode test pipeline, revision {request.revision}",
        )
        document = hd.ko.KeyObjectSelectionDocument(
            evidence=evidence,
            content=content,
            series_instance_uid=generate_uid(),
            series_number=990,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="fracnode",
        )
        return PipelineOutcome(datasets=(document,), summary=f"{len(evidence)} instance(s) selected")


class FlakyPipeline(KeyObjectPipeline):
    name = "test-flaky"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        with _flaky_lock:
            if FLAKY_FAILURES["remaining"] > 0:
                FLAKY_FAILURES["remaining"] -= 1
                raise RuntimeError("simulated model failure")
        return super().run(request)


class DecliningPipeline:
    name = "test-decline"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        return PipelineOutcome(not_applicable="the test pipeline declines every study")


REGION_BOX = (0.4, 0.4, 0.6, 0.6)  # column0, row0, column1, row1 as fractions of the image


class RegionPipeline(KeyObjectPipeline):
    name = "test-regions"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        outcome = super().run(request)
        images = []
        for path in (p for series in request.series for p in series.paths):
            ds = dcmread(path, stop_before_pixels=True)
            c0, r0, c1, r1 = (f * n for f, n in zip(REGION_BOX, (ds.Columns, ds.Rows) * 2, strict=True))
            region = RegionFinding(polygon=((c0, r0), (c1, r0), (c1, r1), (c0, r1)), box=(c0, r0, c1, r1),
                                   probability=0.9)
            images.append(ImageFinding(
                sop_instance_uid=str(ds.SOPInstanceUID), path=path, fracture_probability=0.9,
                category="fracture", regions=(region,), region_map=None, body_region="hand",
                body_region_probability=0.8,
            ))
        findings = Findings(request.study_instance_uid, Algorithm("test-regions", "1", "0" * 64), tuple(images))
        return PipelineOutcome(datasets=outcome.datasets, summary=f"{len(images)} image(s): fracture",
                               findings=findings)


class VertebraePipeline(KeyObjectPipeline):
    """A CT pipeline's findings without the models: C1-C3 at the routed series' centre line, with
    one vertebra of each category (the dashboard's vertebra table and CT preview draw them)."""

    name = "test-vertebrae"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        outcome = super().run(request)
        series = request.series[0]
        first = dcmread(series.paths[0], stop_before_pixels=True)
        x = float(first.ImagePositionPatient[0]) + first.Columns * float(first.PixelSpacing[1]) / 2
        y = float(first.ImagePositionPatient[1]) + first.Rows * float(first.PixelSpacing[0]) / 2
        zs = sorted(float(dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in series.paths)
        levels = [zs[len(zs) * k // 4] for k in (3, 2, 1)]  # C1 at the top
        vertebrae = tuple(
            VertebraFinding(label=i + 1, fracture_probability=p, category=c, centre=(x, y, z), voxels=1000)
            for i, (p, c, z) in enumerate(zip((0.05, 0.3, 0.8), ("negative", "suspicious", "fracture"),
                                              levels, strict=True))
        )
        algorithm = Algorithm("test-vertebrae", "1", "0" * 64)
        findings = CSpineFindings(
            study_instance_uid=request.study_instance_uid,
            series_instance_uid=series.attributes.series_instance_uid,
            frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
            segmentation_algorithm=algorithm, fracture_algorithm=algorithm, fracture_probability=0.8,
            category="fracture", vertebrae=vertebrae,
        )
        return PipelineOutcome(datasets=outcome.datasets, summary="cervical spine fracture (probability 0.80)",
                               findings=findings)


def referenced_instances(document: Dataset) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for study in document.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


@register("test-kos")
def _kos(config: Config) -> KeyObjectPipeline:
    return KeyObjectPipeline()


@register("test-flaky")
def _flaky(config: Config) -> FlakyPipeline:
    return FlakyPipeline()


@register("test-regions")
def _regions(config: Config) -> RegionPipeline:
    return RegionPipeline()


@register("test-vertebrae")
def _vertebrae(config: Config) -> VertebraePipeline:
    return VertebraePipeline()


@register("test-decline")
def _decline(config: Config) -> DecliningPipeline:
    return DecliningPipeline()
