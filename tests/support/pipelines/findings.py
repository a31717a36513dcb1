"""Test pipelines that conclude like the built-in ones, without models: their findings records are
the ones the dashboard draws (the radiograph pipeline's `Findings`, the cervical spine pipeline's
`CSpineFindings`, from those packages' public names), their DICOM is test-kos's.

`test-regions`: every image a "fracture" with one square region (REGION_BOX).
`test-vertebrae`: C1-C3 at the routed series' centre line, one vertebra of each category.
"""

from __future__ import annotations

from pydicom import dcmread

from node.pipelines.cspine import CSpineFindings, VertebraFinding
from node.pipelines.radiograph import Findings, ImageFinding, RegionFinding
from node.records import Algorithm, PipelineInput, PipelineOutcome
from tests.support.pipelines.kos import KeyObjectPipeline

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
