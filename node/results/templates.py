"""SR templates: the declarative content in `sr_templates/*.yaml`, validated and resolved to codes.

A template file carries every concept code the result objects use (PS3.16 SNOMED CT / DCM /
UCUM triples, and fracnode's own 99FRACNODE codes where no standard one says what a number is),
the finding sites per body region, tracking identifiers, series numbers and descriptions and the
words every human-readable label uses (node.results.wording). `load_template` validates it with pydantic (unknown keys are
errors) and returns a `FractureTemplate` whose fields are ready-made highdicom `CodedConcept`s,
so the builders in `node.results` hold no codes of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal, TypeVar

import highdicom as hd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from node.results.wording import Wording, site_phrase

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "sr_templates"
RADIOGRAPH_FRACTURE = "radiograph-fracture"
CATEGORIES = ("fracture", "suspicious", "negative")
OBJECTS = ("sr", "seg", "gsps", "secondary_capture")


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file and the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(_Strict):
    value: str = Field(min_length=1, max_length=16)  # Code Value is SH (PS3.3 8.1)
    # 99FRACNODE: fracnode's local coding scheme (PS3.3 8.2: local designators start with "99")
    scheme: Literal["SCT", "DCM", "UCUM", "LN", "99FRACNODE"]
    meaning: str = Field(min_length=1, max_length=64)

    def concept(self) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(
            value=self.value, scheme_designator=self.scheme, meaning=self.meaning
        )


class DocumentSpec(_Strict):
    title: CodeSpec
    procedure_reported: CodeSpec


class ProbabilitySpec(_Strict):
    name: CodeSpec
    unit: CodeSpec


class FindingSpec(_Strict):
    type: CodeSpec
    presence: dict[str, CodeSpec]
    probability: ProbabilitySpec
    comment: CodeSpec  # the human-readable label (TEXT) each finding group carries

    @field_validator("presence")
    @classmethod
    def _every_category(cls, value: dict[str, CodeSpec]) -> dict[str, CodeSpec]:
        if set(value) != set(CATEGORIES):
            raise ValueError(
                f"needs exactly the categories {list(CATEGORIES)}, got {sorted(value)}"
            )
        return value


class TrackingSpec(_Strict):
    image: str = Field(min_length=1)
    region: str = Field(min_length=1)

    @field_validator("image", "region")
    @classmethod
    def _formats(cls, value: str) -> str:
        try:
            value.format(image=1, region=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{value!r} may use only {{image}} and {{region}}: {exc}") from None
        return value


class RadiographFindingSpec(FindingSpec):
    """The radiograph finding: plus the region score each TID 1410 region carries."""

    region_score: ProbabilitySpec


class WordingSpec(_Strict):
    """The words of every human-readable label (SR comment, overlays, previews)."""

    prefix: str = Field(min_length=1, max_length=16)
    categories: dict[str, str]
    site_not_determined: str = Field(min_length=1, max_length=32)

    @field_validator("categories")
    @classmethod
    def _every_category(cls, value: dict[str, str]) -> dict[str, str]:
        if set(value) != set(CATEGORIES) or not all(value.values()):
            raise ValueError(
                f"needs words for exactly the categories {list(CATEGORIES)}, got {sorted(value)}"
            )
        return value


class AlgorithmSpec(_Strict):
    family: CodeSpec


class SegmentationSpec(_Strict):
    category: CodeSpec
    type: CodeSpec
    label: str = Field(min_length=1, max_length=64)


class SeriesSpec(_Strict):
    number: int = Field(ge=1, le=2**31 - 1)
    description: str = Field(min_length=1, max_length=64)


class OverlaySpec(_Strict):
    disclaimer: str = Field(min_length=1, max_length=64)
    content_label: str

    @field_validator("content_label")
    @classmethod
    def _code_string(cls, value: str) -> str:
        # PS3.5 6.2: CS is upper case letters, digits, space and underscore, 16 characters at most
        if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", value):
            raise ValueError(f"{value!r} is not a DICOM code string (A-Z, 0-9, _ and space, ≤ 16)")
        return value


class TemplateSpec(_Strict):
    pipeline: str
    document: DocumentSpec
    finding: RadiographFindingSpec
    finding_sites: dict[str, CodeSpec] = Field(min_length=1)
    tracking: TrackingSpec
    algorithm: AlgorithmSpec
    segmentation: SegmentationSpec
    series: dict[str, SeriesSpec]
    wording: WordingSpec
    overlay: OverlaySpec

    @field_validator("finding_sites")
    @classmethod
    def _no_empty_region(cls, value: dict[str, CodeSpec]) -> dict[str, CodeSpec]:
        if "" in value:
            raise ValueError('"" means "site not determined" and cannot have a finding site')
        return value

    @field_validator("series")
    @classmethod
    def _every_object(cls, value: dict[str, SeriesSpec]) -> dict[str, SeriesSpec]:
        if set(value) != set(OBJECTS):
            raise ValueError(f"needs exactly the objects {list(OBJECTS)}, got {sorted(value)}")
        numbers = [series.number for series in value.values()]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"series numbers must differ, got {numbers}")
        return value


@dataclass(frozen=True)
class Series:
    number: int
    description: str


@dataclass(frozen=True)
class FractureTemplate:
    """The resolved radiograph-fracture template: codes as CodedConcepts, texts as strings."""

    pipeline: str
    title: hd.sr.CodedConcept
    procedure_reported: hd.sr.CodedConcept
    finding: hd.sr.CodedConcept
    presence: dict[str, hd.sr.CodedConcept]  # category → evaluation value
    probability: hd.sr.CodedConcept
    probability_unit: hd.sr.CodedConcept  # UCUM "%": the SR writes probabilities in percent
    region_score: hd.sr.CodedConcept
    region_score_unit: hd.sr.CodedConcept
    comment: hd.sr.CodedConcept
    finding_sites: dict[str, hd.sr.CodedConcept]  # body region → anatomic region
    image_tracking: str
    region_tracking: str
    algorithm_family: hd.sr.CodedConcept
    segment_category: hd.sr.CodedConcept
    segment_type: hd.sr.CodedConcept
    segment_label: str
    series: dict[str, Series]  # sr, seg, gsps, secondary_capture
    wording: Wording
    disclaimer: str
    content_label: str

    def finding_site(self, body_region: str) -> hd.sr.CodedConcept | None:
        """The anatomic region of a body region; None when the site was not determined ("")."""
        if body_region == "":
            return None
        try:
            return self.finding_sites[body_region]
        except KeyError:
            raise ValueError(
                f"body region {body_region!r} has no finding site in the template "
                f"(known: {sorted(self.finding_sites)}, or \"\" for not determined)"
            ) from None

    def site_words(self, body_region: str) -> str:
        """The finding site as a label says it: "lower limb", or "site not determined"."""
        site = self.finding_site(body_region)
        return site_phrase(site.meaning) if site is not None else self.wording.site_not_determined

    def label(
        self, category: str, probability: float, body_region: str, threshold: float | None
    ) -> str:
        """The one-line label of an image finding on overlays and previews."""
        return self.wording.label(category, probability, self.site_words(body_region), threshold)

    def finding_words(self, category: str, body_region: str) -> str:
        """The image finding in words, the SR's Comment."""
        return self.wording.finding(category, self.site_words(body_region))


def resolve(spec: TemplateSpec) -> FractureTemplate:
    return FractureTemplate(
        pipeline=spec.pipeline,
        title=spec.document.title.concept(),
        procedure_reported=spec.document.procedure_reported.concept(),
        finding=spec.finding.type.concept(),
        presence={k: v.concept() for k, v in spec.finding.presence.items()},
        probability=spec.finding.probability.name.concept(),
        probability_unit=spec.finding.probability.unit.concept(),
        region_score=spec.finding.region_score.name.concept(),
        region_score_unit=spec.finding.region_score.unit.concept(),
        comment=spec.finding.comment.concept(),
        finding_sites={k: v.concept() for k, v in spec.finding_sites.items()},
        image_tracking=spec.tracking.image,
        region_tracking=spec.tracking.region,
        algorithm_family=spec.algorithm.family.concept(),
        segment_category=spec.segmentation.category.concept(),
        segment_type=spec.segmentation.type.concept(),
        segment_label=spec.segmentation.label,
        series={k: Series(v.number, v.description) for k, v in spec.series.items()},
        wording=resolve_wording(spec.wording),
        disclaimer=spec.overlay.disclaimer,
        content_label=spec.overlay.content_label,
    )


def resolve_wording(spec: WordingSpec) -> Wording:
    return Wording(spec.prefix, dict(spec.categories), spec.site_not_determined)


SpecT = TypeVar("SpecT", bound=BaseModel)


def read_spec(path: Path, model: type[SpecT]) -> SpecT:
    """Read and validate one template file against `model`; `TemplateError` names file and key."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"{path}: cannot read template: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise TemplateError(f"{path}: {problems}") from exc


def load_template(path: Path) -> FractureTemplate:
    """Read, validate and resolve one template file; `TemplateError` names the file and key."""
    return resolve(read_spec(path, TemplateSpec))


@cache
def shipped_template(name: str = RADIOGRAPH_FRACTURE) -> FractureTemplate:
    """A template shipped in `sr_templates/`, loaded once per process."""
    path = TEMPLATES_DIR / f"{name}.yaml"
    template = load_template(path)
    if template.pipeline != name:
        raise TemplateError(f"{path}: pipeline: {template.pipeline!r} is not {name!r}")
    return template
