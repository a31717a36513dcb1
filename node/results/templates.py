"""SR templates: the declarative content in `sr_templates/<pipeline>.yaml`, validated and resolved.

A template file carries every concept code a pipeline's result objects use (PS3.16 SNOMED CT /
DCM / UCUM triples, and fracnode's own 99FRACNODE codes where no standard one says what a number
is), series numbers and descriptions and the words every human-readable label uses
(node.results.wording). This module holds what every pipeline's template has: the spec of the
shared keys (`TemplateSpec`: document, finding, algorithm, series, wording), the resolved base
(`Template`: ready-made highdicom `CodedConcept`s, so builders hold no codes of their own) and the
loading (`TemplateFile`). A pipeline's own template (node.pipelines.<name>.template)
extends both with its keys and fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import highdicom as hd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from node.records import CATEGORIES
from node.results.wording import Wording

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "sr_templates"


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file and the offending key."""


class Strict(BaseModel):
    """Every template key is declared: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(Strict):
    value: str = Field(min_length=1, max_length=16)  # Code Value is SH (PS3.3 8.1)
    # 99FRACNODE: fracnode's local coding scheme (PS3.3 8.2: local designators start with "99")
    scheme: Literal["SCT", "DCM", "UCUM", "LN", "99FRACNODE"]
    meaning: str = Field(min_length=1, max_length=64)

    def concept(self) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(
            value=self.value, scheme_designator=self.scheme, meaning=self.meaning
        )


class DocumentSpec(Strict):
    title: CodeSpec
    procedure_reported: CodeSpec


class ProbabilitySpec(Strict):
    name: CodeSpec
    unit: CodeSpec


class FindingSpec(Strict):
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


class WordingSpec(Strict):
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


class AlgorithmSpec(Strict):
    family: CodeSpec


class SeriesSpec(Strict):
    number: int = Field(ge=1, le=2**31 - 1)
    description: str = Field(min_length=1, max_length=64)


class TemplateSpec(Strict):
    """The keys of every pipeline's template; `OBJECTS` are the result objects it gives series."""

    OBJECTS: ClassVar[tuple[str, ...]] = ()

    pipeline: str
    document: DocumentSpec
    finding: FindingSpec
    algorithm: AlgorithmSpec
    series: dict[str, SeriesSpec]
    wording: WordingSpec

    @field_validator("series")
    @classmethod
    def _every_object(cls, value: dict[str, SeriesSpec]) -> dict[str, SeriesSpec]:
        if set(value) != set(cls.OBJECTS):
            raise ValueError(f"needs exactly the objects {list(cls.OBJECTS)}, got {sorted(value)}")
        numbers = [series.number for series in value.values()]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"series numbers must differ, got {numbers}")
        return value


@dataclass(frozen=True)
class Series:
    number: int
    description: str


@dataclass(frozen=True)
class Template:
    """A resolved template's shared part: codes as CodedConcepts, texts as strings."""

    pipeline: str
    title: hd.sr.CodedConcept
    procedure_reported: hd.sr.CodedConcept
    finding: hd.sr.CodedConcept
    presence: dict[str, hd.sr.CodedConcept]  # category → evaluation value
    probability: hd.sr.CodedConcept
    probability_unit: hd.sr.CodedConcept  # UCUM "%": the SR writes probabilities in percent
    comment: hd.sr.CodedConcept
    algorithm_family: hd.sr.CodedConcept
    series: dict[str, Series]  # result object → its series
    wording: Wording

    def evaluation(self, category: str) -> hd.sr.CodedConcept:
        """The qualitative evaluation's value for a category (Present / Suspected / Absent)."""
        try:
            return self.presence[category]
        except KeyError:
            raise ValueError(
                f"unknown category {category!r} (known: {sorted(self.presence)})"
            ) from None


def resolve_shared(spec: TemplateSpec) -> dict[str, Any]:
    """The `Template` fields of a spec, as keyword arguments for a pipeline's template class."""
    return {
        "pipeline": spec.pipeline,
        "title": spec.document.title.concept(),
        "procedure_reported": spec.document.procedure_reported.concept(),
        "finding": spec.finding.type.concept(),
        "presence": {k: v.concept() for k, v in spec.finding.presence.items()},
        "probability": spec.finding.probability.name.concept(),
        "probability_unit": spec.finding.probability.unit.concept(),
        "comment": spec.finding.comment.concept(),
        "algorithm_family": spec.algorithm.family.concept(),
        "series": {k: Series(v.number, v.description) for k, v in spec.series.items()},
        "wording": Wording(spec.wording.prefix, dict(spec.wording.categories), spec.wording.site_not_determined),
    }


SpecT = TypeVar("SpecT", bound=BaseModel)
TemplateT = TypeVar("TemplateT", bound=Template)


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


class TemplateFile(Generic[SpecT, TemplateT]):
    """How a pipeline reads its template: the spec that validates it and how it resolves.

    `load(path)` reads any file (a site's own translation, a test's broken copy); `shipped()` reads
    `sr_templates/<pipeline>.yaml` once per process and checks that it names the pipeline.
    """

    def __init__(self, pipeline: str, spec: type[SpecT], resolve: Callable[[SpecT], TemplateT]) -> None:
        self.pipeline, self.spec, self.resolve = pipeline, spec, resolve
        self._shipped: TemplateT | None = None  # two threads may both read it once: same result

    def load(self, path: Path) -> TemplateT:
        """Read, validate and resolve one template file; `TemplateError` names the file and key."""
        return self.resolve(read_spec(path, self.spec))

    def shipped(self) -> TemplateT:
        if self._shipped is None:
            path = TEMPLATES_DIR / f"{self.pipeline}.yaml"
            template = self.load(path)
            if template.pipeline != self.pipeline:
                raise TemplateError(f"{path}: pipeline: {template.pipeline!r} is not {self.pipeline!r}")
            self._shipped = template
        return self._shipped
