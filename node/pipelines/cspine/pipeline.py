"""`cspine-fracture`: cervical spine CT → vertebrae C1–C7 → fracture probabilities → SEG + SR.

Per study (one job):

1. select: the routed series are summarised from a few headers and the axial CT series are
   ranked (`node.pipelines.cspine.select`); every other series gets a reason.
2. volume: the best series becomes an HU volume (`node.imaging.volume.build_volume`). A series
   the volume builder refuses (gantry tilt, gaps, mixed geometry …) is a property of the data,
   not a transient error: the next eligible series is tried, and when none is left the study is
   *not applicable* with every reason (retrying the job would only fail again).
3. analyze: one `CSpineModels.analyze` call (node.pipelines.cspine.models) labels C1–C7 on the CT grid
   and gives a fracture probability per vertebra and for the patient. No vertebra found → not
   applicable: "CT does not cover the cervical spine: no C1–C7 found". The category (fracture /
   suspicious / negative) comes from the fracture model's two operating points.
4. results: SEG (one segment per vertebra found) and SR (TID 1500), `node.pipelines.cspine.results`.

Stage seconds (the models' own included) go into one "cspine stages" log event (no patient data)
and into the findings the job records; the job summary names the result and every series that was
passed over, with its reason. One CT at a time goes through steps 2–4 (a lock): a 512×512×600 CT
holds about 1 GB of volume and labels, and concurrent workers must not multiply that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from node import pipelines
from node.config import Config
from node.logs import event
from node.pipelines import register
from node.pipelines.cspine.findings import CSpineFindings, VertebraFinding, reasons, summarize
from node.pipelines.cspine.select import SelectionRules, select_cspine_series, summarize_ct_series
from node.pipelines.cspine.settings import CSpineSettings
from node.records import Algorithm, PipelineInput, PipelineOutcome, SeriesInput, categorize

if TYPE_CHECKING:
    from node.imaging.volume import Volume
    from node.pipelines.cspine.models import CSpineAnalysis

log = logging.getLogger(__name__)

NAME = "cspine-fracture"
NO_CERVICAL_VERTEBRAE = "CT does not cover the cervical spine: no C1–C7 found"
NO_SERIES = "no CT series to analyse for the cervical spine"
# the volume for the models: float32 is what they compute in (int16 would only add a float copy)
VOLUME_DTYPE = np.float32
DEFAULT_RULES = SelectionRules()


class CSpineModelSet(Protocol):
    """What the pipeline needs of `node.pipelines.cspine.models.CSpineModels`."""

    @property
    def operating_points(self) -> dict[str, float]: ...
    @property
    def vertebra_algorithm(self) -> Algorithm: ...
    @property
    def fracture_algorithm(self) -> Algorithm: ...

    def analyze(self, volume: Volume) -> CSpineAnalysis: ...


@dataclass
class Stopwatch:
    """Seconds per named stage of one run, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def rounded(self) -> tuple[tuple[str, float], ...]:
        return tuple((name, round(value, 3)) for name, value in self.seconds.items())

    def fields(self) -> dict[str, float]:
        return {f"{name}_s": value for name, value in self.rounded()}


def unreferenceable(volume: Volume) -> str:
    """Why results could not reference this series (PS3.3 C.7.2.1, C.7.3.1, C.7.4.1), or ""."""
    missing = [
        keyword
        for keyword, value in (
            ("StudyInstanceUID", volume.study_instance_uid),
            ("SeriesInstanceUID", volume.series_instance_uid),
            ("FrameOfReferenceUID", volume.frame_of_reference_uid),
        )
        if not value
    ]
    if not missing:
        return ""
    return f"{' and '.join(missing)} missing: a SEG and SR could not reference the series"


class CSpineFracturePipeline:
    name = NAME

    def __init__(self, models: CSpineModelSet, rules: SelectionRules = DEFAULT_RULES) -> None:
        self.models = models
        self.rules = rules
        self._one_ct = threading.Lock()

    def choose_volume(
        self, request: PipelineInput, watch: Stopwatch, skipped: list[tuple[str, str]]
    ) -> Volume | None:
        """The best eligible series that builds into a volume; None (with every reason in
        `skipped`) when none does."""
        from node.imaging.volume import VolumeRefused, build_volume

        with watch.stage("select"):
            by_uid: dict[str, SeriesInput] = {
                s.attributes.series_instance_uid: s for s in request.series
            }
            selection = select_cspine_series(
                [summarize_ct_series(s) for s in request.series], self.rules
            )
            # the ranked-lower eligible series get their reason only if the better one is used
            skipped.extend(
                (uid, reason) for uid, reason in selection.skipped if uid not in selection.ranked
            )
        for position, uid in enumerate(selection.ranked):
            try:
                with watch.stage("volume"):
                    volume = build_volume(by_uid[uid].paths, dtype=VOLUME_DTYPE)
            except VolumeRefused as refused:
                skipped.append((uid, f"refused as a volume: {refused.reason}"))
                continue
            missing = unreferenceable(volume)
            if missing:
                del volume
                skipped.append((uid, missing))
                continue
            lower = set(selection.ranked[position + 1 :])
            skipped.extend((u, r) for u, r in selection.skipped if u in lower)
            return volume
        return None

    def run(self, request: PipelineInput) -> PipelineOutcome:
        with self._one_ct:
            return self._run(request)

    def _run(self, request: PipelineInput) -> PipelineOutcome:
        from node.pipelines.cspine.results import build_cspine_results

        watch = Stopwatch()
        skipped: list[tuple[str, str]] = []
        volume = self.choose_volume(request, watch, skipped)
        if volume is None:
            return self._not_applicable(request, watch, f"{NO_SERIES} ({reasons(skipped)})")
        with watch.stage("analyze"):
            analysis = self.models.analyze(volume)
        for name, seconds in analysis.seconds.items():
            watch.add(f"model_{name}", seconds)
        segmentation = analysis.segmentation
        headers, series_uid, slices = volume.headers, volume.series_instance_uid, volume.shape[0]
        warnings = volume.warnings
        if not segmentation.vertebrae:
            dropped = ", ".join(f"{name} {why}" for name, why in segmentation.dropped)
            reason = f"{NO_CERVICAL_VERTEBRAE} in series {series_uid}"
            reason += f" (too small, dropped: {dropped})" if dropped else ""
            reason += f"; other series: {reasons(skipped)}" if skipped else ""
            return self._not_applicable(request, watch, reason, series_uid)
        findings = self.findings(volume, analysis, skipped)
        del volume  # the HU volume (the largest array) is not needed for the results
        with watch.stage("results"):
            datasets = build_cspine_results(findings, headers, segmentation.labels)
        findings = replace(findings, seconds=watch.rounded())
        event(log, logging.INFO, "cspine stages", study_uid=request.study_instance_uid,
              series_uid=series_uid, slices=slices, vertebrae=len(findings.vertebrae),
              header_warnings=len(warnings), **watch.fields())
        return PipelineOutcome(datasets=tuple(datasets), summary=summarize(findings), findings=findings)

    def findings(
        self,
        volume: Volume,
        analysis: CSpineAnalysis,
        skipped: list[tuple[str, str]],
    ) -> CSpineFindings:
        """The models' outputs as the record the results are built from."""
        points = self.models.operating_points
        probability = {p.label: float(p.probability) for p in analysis.fracture.vertebrae}
        found = []
        for mask in analysis.segmentation.vertebrae:
            if mask.label not in probability:
                raise RuntimeError(f"the fracture model gave no probability for {mask.name}")
            found.append(
                VertebraFinding(
                    label=mask.label,
                    fracture_probability=probability[mask.label],
                    category=categorize(probability[mask.label], points),
                    centre=tuple(float(v) for v in mask.centre),  # type: ignore[arg-type]
                    voxels=int(mask.voxels),
                )
            )
        patient = float(analysis.fracture.patient_probability)
        return CSpineFindings(
            study_instance_uid=volume.study_instance_uid,
            series_instance_uid=volume.series_instance_uid,
            frame_of_reference_uid=volume.frame_of_reference_uid,
            segmentation_algorithm=self.models.vertebra_algorithm,
            fracture_algorithm=self.models.fracture_algorithm,
            fracture_probability=patient,
            category=categorize(patient, points),
            vertebrae=tuple(found),
            thresholds=tuple(sorted(points.items())),
            skipped=tuple(skipped),
        )

    def _not_applicable(
        self, request: PipelineInput, watch: Stopwatch, reason: str, series_uid: str = ""
    ) -> PipelineOutcome:
        event(log, logging.INFO, "cspine not applicable", study_uid=request.study_instance_uid,
              series_uid=series_uid, **watch.fields())
        return PipelineOutcome(not_applicable=reason)


@register(NAME, bundles=("cspine_vertebrae", "cspine_fracture"), settings=CSpineSettings)
def _factory(config: Config) -> CSpineFracturePipeline:
    from node.pipelines.cspine.models import CSpineModels

    settings = pipelines.settings(config, NAME, CSpineSettings)
    rules = SelectionRules(max_slice_thickness=settings.max_slice_thickness_mm, min_slices=settings.min_slices,
                           max_obliquity_deg=settings.max_obliquity_deg)
    return CSpineFracturePipeline(CSpineModels.from_config(config), rules)
