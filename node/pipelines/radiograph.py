"""`radiograph-fracture`: fracture probability, regions and body region for every radiograph of a study.

Per image: pixels (node.inference.pixels) → the bundle's model (node.inference.engine, batched
across concurrent studies) → Findings (probability, category at the bundle's two operating
points, regions mapped back to source pixels) → SR, SEG and any overlays (node.results).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom import Dataset

from node.config import Config
from node.pipelines import register
from node.records import (
    Algorithm,
    Findings,
    ImageFinding,
    PipelineInput,
    PipelineOutcome,
    RegionFinding,
)
from node.sources import read_source

log = logging.getLogger(__name__)

BUNDLE = "radiograph_fracture"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def categorize(probability: float, operating_points: dict[str, float]) -> str:
    """"fracture" at the high-specificity threshold, "suspicious" at the high-sensitivity one."""
    if probability >= operating_points["fracture"]:
        return "fracture"
    if probability >= operating_points["suspicious"]:
        return "suspicious"
    return "negative"


def own_result(ds: Dataset) -> str:
    """Why an object is one of fracnode's own results (never analysed again), or ""."""
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX) and ds.get("Manufacturer") == "fracnode":
        return "a fracnode result (secondary capture), not analysed again"
    return ""


class RadiographFracturePipeline:
    name = "radiograph-fracture"

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        bundle = engine.bundle
        self.operating_points = {k: float(v) for k, v in bundle.extras["operating_points"].items()}
        self.region_threshold = float(bundle.extras.get("region_threshold", 0.5))
        self.body_regions = bundle.channels("body_region")
        self.algorithm = Algorithm(name=bundle.name, version=bundle.version, weights_sha256=engine.weights_sha256)

    def analyse(self, request: PipelineInput) -> tuple[Findings, dict[str, Dataset]]:
        from node.inference.pixels import Skipped, load_radiograph
        from node.inference.regions import extract

        sources: dict[str, Dataset] = {}
        prepared, skipped = [], []
        for path in (p for series in request.series for p in series.paths):
            ds = read_source(Path(path))  # malformed header attributes are dropped, not fatal
            uid = str(ds.get("SOPInstanceUID", path.name))
            reason = own_result(ds)
            loaded = Skipped(reason) if reason else load_radiograph(ds)
            if isinstance(loaded, Skipped):
                skipped.append((uid, loaded.reason))
                continue
            sources[uid] = ds
            prepared.append((uid, Path(path), self.engine.preprocess(loaded)))
        outputs = self.engine.infer([p.array for _, _, p in prepared])
        images = []
        for (uid, path, model_input), row in zip(prepared, outputs):
            box = model_input.letterbox
            probability = float(np.asarray(row["fracture"]).reshape(-1)[0])
            category = categorize(probability, self.operating_points)
            plane = np.asarray(row["regions"], np.float32).reshape(box.size, box.size)
            regions: tuple[RegionFinding, ...] = ()
            if category != "negative":
                regions = tuple(
                    RegionFinding(
                        polygon=tuple(map(tuple, box.to_image(np.array(r.polygon)).tolist())),
                        box=tuple(box.to_image(np.array([r.box[:2], r.box[2:]])).reshape(-1).tolist()),
                        probability=r.peak,
                    )
                    for r in extract(plane, self.region_threshold)
                )
            body = np.asarray(row["body_region"], np.float32).reshape(-1)
            images.append(
                ImageFinding(
                    sop_instance_uid=uid,
                    path=path,
                    fracture_probability=probability,
                    category=category,
                    regions=regions,
                    region_map=(
                        self.engine.postprocess(row, box)["regions"][0]
                        if regions
                        else np.zeros((box.rows, box.columns), np.float32)
                    ),
                    body_region=self.body_regions[int(body.argmax())],
                    body_region_probability=float(body.max()),
                )
            )
        findings = Findings(
            study_instance_uid=request.study_instance_uid,
            algorithm=self.algorithm,
            images=tuple(images),
            skipped=tuple(skipped),
            thresholds=tuple(sorted(self.operating_points.items())),
        )
        return findings, sources

    def run(self, request: PipelineInput) -> PipelineOutcome:
        from node.results.radiograph import build_results

        findings, sources = self.analyse(request)
        if not findings.images:
            reasons = "; ".join(sorted({reason for _, reason in findings.skipped})) or "no instances"
            return PipelineOutcome(not_applicable=f"no radiograph to analyse ({reasons})", findings=findings)
        datasets = build_results(findings, sources, set(request.overlays))
        return PipelineOutcome(datasets=tuple(datasets), summary=summarize(findings), findings=findings)


def summarize(findings: Findings) -> str:
    """One line for the job table: counts per category, the highest probability, skipped images."""
    counts: dict[str, int] = {}
    for image in findings.images:
        counts[image.category] = counts.get(image.category, 0) + 1
    top = max(image.fracture_probability for image in findings.images)
    text = f"{len(findings.images)} image(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    text += f"; highest fracture probability {top:.2f}"
    if findings.skipped:
        text += f"; {len(findings.skipped)} skipped"
    return text


@register("radiograph-fracture")
def _factory(config: Config) -> RadiographFracturePipeline:
    from node.inference.engine import Engine

    engine = Engine(
        config.inference.bundle(BUNDLE),
        device=config.inference.device,
        max_batch=config.inference.max_batch,
        max_wait_ms=config.inference.max_wait_ms,
    )
    return RadiographFracturePipeline(engine)
