"""The cspine-fracture template (`sr_templates/cspine-fracture.yaml`), validated and resolved.

On top of what every template has (node.results.templates): the patient-level finding site, the
vertebrae's SNOMED CT codes, tracking identifiers per study and vertebra, the SEG's segment
category and label, and the series of its two result objects (SEG, SR). `CSpineTemplate` holds
them as ready-made highdicom `CodedConcept`s so the builders hold no codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import highdicom as hd
from pydantic import Field, field_validator

from node.pipelines.cspine.findings import VERTEBRAE, vertebra_name
from node.results.templates import (
    CodeSpec,
    FindingSpec,
    Strict,
    Template,
    TemplateFile,
    TemplateSpec,
    resolve_shared,
)

CSPINE_FRACTURE = "cspine-fracture"
CSPINE_OBJECTS = ("sr", "seg")


def _formats_with_vertebra(value: str) -> str:
    try:
        value.format(vertebra="C1")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{value!r} may use only {{vertebra}}: {exc}") from None
    return value


class CSpineFindingSpec(FindingSpec):
    """The shared finding spec plus a finding site (the cervical spine)."""

    site: CodeSpec


class CSpineTrackingSpec(Strict):
    study: str = Field(min_length=1, max_length=64)
    vertebra: str = Field(min_length=1)

    _vertebra = field_validator("vertebra")(_formats_with_vertebra)


class CSpineSegmentationSpec(Strict):
    category: CodeSpec
    label: str = Field(min_length=1)

    _label = field_validator("label")(_formats_with_vertebra)


class CSpineTemplateSpec(TemplateSpec):
    OBJECTS: ClassVar[tuple[str, ...]] = CSPINE_OBJECTS

    finding: CSpineFindingSpec
    vertebrae: dict[str, CodeSpec]
    tracking: CSpineTrackingSpec
    segmentation: CSpineSegmentationSpec

    @field_validator("vertebrae")
    @classmethod
    def _every_vertebra(cls, value: dict[str, CodeSpec]) -> dict[str, CodeSpec]:
        if list(value) != list(VERTEBRAE):
            raise ValueError(f"needs exactly the vertebrae {list(VERTEBRAE)} in order, got {list(value)}")
        return value


@dataclass(frozen=True)
class CSpineTemplate(Template):
    """The resolved cspine-fracture template: codes as CodedConcepts, texts as strings."""

    finding_site: hd.sr.CodedConcept  # cervical spine: patient-level site, SEG anatomic region
    vertebrae: dict[str, hd.sr.CodedConcept]  # C1 … C7 → SCT vertebra
    study_tracking: str
    vertebra_tracking: str
    segment_category: hd.sr.CodedConcept
    segment_label_format: str

    def vertebra(self, label: int) -> hd.sr.CodedConcept:
        """The SNOMED CT concept of the vertebra with label value `label` (1 = C1)."""
        return self.vertebrae[vertebra_name(label)]

    def segment_label(self, label: int) -> str:
        return self.segment_label_format.format(vertebra=vertebra_name(label))[:64]

    def tracking_identifier(self, label: int) -> str:
        return self.vertebra_tracking.format(vertebra=vertebra_name(label))[:64]


def resolve_cspine(spec: CSpineTemplateSpec) -> CSpineTemplate:
    return CSpineTemplate(
        **resolve_shared(spec),
        finding_site=spec.finding.site.concept(),
        vertebrae={k: v.concept() for k, v in spec.vertebrae.items()},
        study_tracking=spec.tracking.study,
        vertebra_tracking=spec.tracking.vertebra,
        segment_category=spec.segmentation.category.concept(),
        segment_label_format=spec.segmentation.label,
    )


TEMPLATE = TemplateFile(CSPINE_FRACTURE, CSpineTemplateSpec, resolve_cspine)
load_cspine_template = TEMPLATE.load
shipped_cspine_template = TEMPLATE.shipped  # sr_templates/cspine-fracture.yaml, read once per process
