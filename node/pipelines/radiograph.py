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
from node.pipelines.radiograph_scope import HeaderScope, header_scope
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
        # Set on validation by `fracnode evaluate radiograph --write`; bundles from before 1.0 have none
        # (then the network always names its likeliest region, and refuses nothing).
        self.site_confidence = float(bundle.extras.get("site_confidence", 0.0))
        limit = bundle.extras.get("atypicality_limit")
        self.atypicality_limit = float(limit) if limit is not None else None
        dense = bundle.extras.get("dense_percentile")
        self.dense_percentile = float(dense) if dense is not None else None
        self.algorithm = Algorithm(name=bundle.name, version=bundle.version, weights_sha256=engine.weights_sha256)

    def analyse(self, request: PipelineInput) -> tuple[Findings, dict[str, Dataset]]:
        from node.inference.pixels import Skipped, load_radiograph

        sources: dict[str, Dataset] = {}
        prepared, skipped = [], []
        for path in (p for series in request.series for p in series.paths):
            ds = read_source(Path(path))  # malformed header attributes are dropped, not fatal
            uid = str(ds.get("SOPInstanceUID", path.name))
            reason = own_result(ds)
            scope = header_scope(ds)
            if not reason and scope.out_of_scope:
                reason = (f"outside the model's intended use: {scope.attribute} names the {scope.out_of_scope}"
                          " (the model covers hand/wrist, leg/foot, hip/pelvis and shoulder/arm radiographs)")
            loaded = Skipped(reason) if reason else load_radiograph(ds)
            if isinstance(loaded, Skipped):
                skipped.append((uid, loaded.reason))
                continue
            prepared.append((uid, Path(path), ds, scope, self.engine.preprocess(loaded)))
        outputs = self.engine.infer([p.array for *_, p in prepared])
        images = []
        for (uid, path, ds, scope, model_input), row in zip(prepared, outputs, strict=True):
            atypicality = _scalar(row["atypicality"]) if "atypicality" in row else None
            # The header, when it names a region the model covers, is trusted over the network: the
            # typicality model knows FracAtlas's acquisition, so a good film from another device may score
            # high. The network decides only where the header is silent or generic (EXTREMITY, OTHER).
            if (not scope.region and atypicality is not None and self.atypicality_limit is not None
                    and atypicality > self.atypicality_limit):
                skipped.append((uid, ("outside the model's intended use: the image is unlike the musculoskeletal"
                                     f" radiographs it was trained on (atypicality {atypicality:.2f}, limit"
                                     f" {self.atypicality_limit:.2f})")))
                continue
            sources[uid] = ds
            images.append(self._finding(uid, path, scope, model_input, row))
        findings = Findings(
            study_instance_uid=request.study_instance_uid,
            algorithm=self.algorithm,
            images=tuple(images),
            skipped=tuple(skipped),
            thresholds=tuple(sorted(self.operating_points.items())),
        )
        return findings, sources

    def _finding(self, uid: str, path: Path, scope: HeaderScope, model_input, row) -> ImageFinding:  # type: ignore[no-untyped-def]
        from node.inference.regions import extract, on_dense_material

        box = model_input.letterbox
        probability = _scalar(row["fracture"])
        category = categorize(probability, self.operating_points)
        plane = np.asarray(row["regions"], np.float32).reshape(box.size, box.size)
        found = extract(plane, self.region_threshold) if category != "negative" else []
        if found and category != "fracture" and self.dense_percentile is not None:
            # a region on metal is a fracture finding only at the fracture threshold
            image = model_input.array[0]
            area = np.zeros(image.shape, bool)
            area[box.top : box.top + box.crop(image).shape[0], box.left : box.left + box.crop(image).shape[1]] = True
            found = [r for r in found if not on_dense_material(r, image, area, self.dense_percentile)]
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
                self.engine.postprocess(row, box)["regions"][0] if regions else np.zeros((box.rows, box.columns), np.float32)
            ),
            body_region=site,
            body_region_probability=site_probability,
            body_region_source="header" if scope.region else "model" if site else "",
        )

    def _site(self, scope: HeaderScope, body: np.ndarray) -> tuple[str, float]:
        """The finding site: the header's region when it names one; else the network's when confident; else ""."""
        if scope.region in self.body_regions:
            return scope.region, float(body[self.body_regions.index(scope.region)])
        if float(body.max()) >= self.site_confidence:
            return self.body_regions[int(body.argmax())], float(body.max())
        return "", float(body.max())

    def run(self, request: PipelineInput) -> PipelineOutcome:
        from node.results.radiograph import build_results

        findings, sources = self.analyse(request)
        if not findings.images:
            reasons = "; ".join(sorted({reason for _, reason in findings.skipped})) or "no instances"
            return PipelineOutcome(not_applicable=f"no radiograph to analyse ({reasons})", findings=findings)
        datasets = build_results(findings, sources, set(request.overlays))
        return PipelineOutcome(datasets=tuple(datasets), summary=summarize(findings), findings=findings)


def _scalar(value: object) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def summarize(findings: Findings) -> str:
    """One line for the job table: counts per category, the highest probability, skipped images."""
    counts: dict[str, int] = {}
    for image in findings.images:
        counts[image.category] = counts.get(image.category, 0) + 1
    top = max(image.fracture_probability for image in findings.images)
    text = f"{len(findings.images)} image(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    text += f"; highest fracture probability {top:.2f}"
    outside = sum(reason.startswith("outside the model's intended use") for _, reason in findings.skipped)
    if outside:
        text += f"; {outside} not analysed (outside the model's intended use)"
    if len(findings.skipped) > outside:
        text += f"; {len(findings.skipped) - outside} skipped"
    return text


@register("radiograph-fracture", bundles=(BUNDLE,))
def _factory(config: Config) -> RadiographFracturePipeline:
    from node.inference.engine import Engine

    engine = Engine(
        config.inference.bundle(BUNDLE),
        device=config.inference.device,
        max_batch=config.inference.max_batch,
        max_wait_ms=config.inference.max_wait_ms,
    )
    return RadiographFracturePipeline(engine)
