"""`radiograph-fracture`: fracture probability, regions and body region for every radiograph of a study.

Per image: which objects to analyse (`select`: not fracnode's own results, not outside the model's
intended use) → pixels (node.imaging.pixels) → the bundle's model (`model`: letterboxed, batched
across concurrent studies by node.inference.engine) → `Findings` (probability, category at the
bundle's two operating points, regions mapped back to source pixels, the body region) → SR, SEG
and any overlays (`results`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom import Dataset

from node.config import Config
from node.imaging.pixels import Skipped, load_radiograph
from node.pipelines import register
from node.pipelines.radiograph.findings import Findings, ImageFinding, RegionFinding, summarize
from node.pipelines.radiograph.select import HeaderScope, select
from node.records import PipelineFindings, PipelineInput, PipelineOutcome, categorize
from node.sources import read_source

if TYPE_CHECKING:  # torch and SimpleITK load when a node builds the pipeline, not when it registers
    from node.inference.engine import Outputs
    from node.pipelines.radiograph.model import ModelInput, RadiographModel

log = logging.getLogger(__name__)

NAME = "radiograph-fracture"
BUNDLE = "radiograph_fracture"


class RadiographFracturePipeline:
    name = NAME

    def __init__(self, model: RadiographModel) -> None:
        self.model = model
        self.algorithm = model.algorithm

    def analyse(self, request: PipelineInput) -> tuple[Findings, dict[str, Dataset]]:
        sources: dict[str, Dataset] = {}
        prepared, skipped = [], []
        for path in (p for series in request.series for p in series.paths):
            ds = read_source(Path(path))  # malformed header attributes are dropped, not fatal
            uid = str(ds.get("SOPInstanceUID", path.name))
            scope, reason = select(ds)
            loaded = Skipped(reason) if reason else load_radiograph(ds)
            if isinstance(loaded, Skipped):
                skipped.append((uid, loaded.reason))
                continue
            prepared.append((uid, Path(path), ds, scope, self.model.preprocess(loaded)))
        outputs = self.model.infer([p.array for *_, p in prepared])
        images = []
        limit = self.model.atypicality_limit
        for (uid, path, ds, scope, model_input), row in zip(prepared, outputs, strict=True):
            atypicality = _scalar(row["atypicality"]) if "atypicality" in row else None
            # The header, when it names a region the model covers, is trusted over the network: the
            # typicality model knows FracAtlas's acquisition, so a good film from another device may score
            # high. The network decides only where the header is silent or generic (EXTREMITY, OTHER).
            if not scope.region and atypicality is not None and limit is not None and atypicality > limit:
                skipped.append(
                    (
                        uid,
                        (
                            "outside the model's intended use: the image is unlike the musculoskeletal"
                            f" radiographs it was trained on (atypicality {atypicality:.2f}, limit"
                            f" {limit:.2f})"
                        ),
                    )
                )
                continue
            sources[uid] = ds
            images.append(self._finding(uid, path, scope, model_input, row))
        findings = Findings(
            study_instance_uid=request.study_instance_uid,
            algorithm=self.algorithm,
            images=tuple(images),
            skipped=tuple(skipped),
            thresholds=tuple(sorted(self.model.operating_points.items())),
        )
        return findings, sources

    def _finding(self, uid: str, path: Path, scope: HeaderScope, model_input: ModelInput, row: Outputs) -> ImageFinding:
        from node.imaging.regions import extract, on_dense_material

        box = model_input.letterbox
        probability = _scalar(row["fracture"])
        category = categorize(probability, self.model.operating_points)
        plane = np.asarray(row["regions"], np.float32).reshape(box.size, box.size)
        found = extract(plane, self.model.region_threshold) if category != "negative" else []
        dense = self.model.dense_percentile
        if found and category != "fracture" and dense is not None:
            # a region on metal is a fracture finding only at the fracture threshold
            image = model_input.array[0]
            rows, columns = box.crop(image).shape
            area = np.zeros(image.shape, bool)
            area[box.top : box.top + rows, box.left : box.left + columns] = True
            found = [r for r in found if not on_dense_material(r, image, area, dense)]
        regions = tuple(
            RegionFinding(
                polygon=tuple(map(tuple, box.to_image(np.array(r.polygon)).tolist())),
                box=tuple(box.to_image(np.array([r.box[:2], r.box[2:]])).reshape(-1).tolist()),
                probability=r.peak,
            )
            for r in found
        )
        body = np.asarray(row["body_region"], np.float32).reshape(-1)
        site, site_probability = self._site(scope, body)
        return ImageFinding(
            sop_instance_uid=uid,
            path=path,
            fracture_probability=probability,
            category=category,
            regions=regions,
            region_map=(
                self.model.postprocess(row, box)["regions"][0]
                if regions
                else np.zeros((box.rows, box.columns), np.float32)
            ),
            body_region=site,
            body_region_probability=site_probability,
            body_region_source="header" if scope.region else "model" if site else "",
        )

    def _site(self, scope: HeaderScope, body: np.ndarray) -> tuple[str, float]:
        """The finding site: the header's region when it names one; else the network's when confident; else ""."""
        regions = self.model.body_regions
        if scope.region in regions:
            return scope.region, float(body[regions.index(scope.region)])
        if float(body.max()) >= self.model.site_confidence:
            return regions[int(body.argmax())], float(body.max())
        return "", float(body.max())

    def write_previews(self, findings: PipelineFindings, folder: Path) -> dict[str, Path]:
        from node.pipelines.radiograph.preview import write_previews

        return write_previews(findings, folder) if isinstance(findings, Findings) else {}

    def run(self, request: PipelineInput) -> PipelineOutcome:
        from node.pipelines.radiograph.results import build_results

        findings, sources = self.analyse(request)
        if not findings.images:
            reasons = "; ".join(sorted({reason for _, reason in findings.skipped})) or "no instances"
            return PipelineOutcome(not_applicable=f"no radiograph to analyse ({reasons})", findings=findings)
        datasets = build_results(findings, sources, set(request.overlays))
        return PipelineOutcome(datasets=tuple(datasets), summary=summarize(findings), findings=findings)


def _scalar(value: object) -> float:
    return float(np.asarray(value).reshape(-1)[0])


@register(NAME, bundles=(BUNDLE,))
def _factory(config: Config) -> RadiographFracturePipeline:
    from node.inference.engine import configured_bundle
    from node.pipelines.radiograph.model import RadiographModel

    path, options = configured_bundle(config, BUNDLE)
    # radiographs of concurrent studies share forwards: `inference.max_batch` images, waiting
    # at most `inference.max_wait_ms` for them
    options["max_batch"], options["max_wait_ms"] = config.inference.max_batch, config.inference.max_wait_ms
    return RadiographFracturePipeline(RadiographModel(path, **options))
