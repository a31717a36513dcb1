"""The radiograph-fracture template (`sr_templates/radiograph-fracture.yaml`), validated and resolved.

On top of what every template has (node.results.templates): the region score each TID 1410
region carries, the finding sites per body region, tracking identifiers per image and region,
the SEG's segment codes, the series of all four result objects (SR, SEG, GSPS, secondary
capture) and the overlays' disclaimer and content label. `FractureTemplate` holds them as
ready-made highdicom `CodedConcept`s, so the builders of this package hold no codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import highdicom as hd
from pydantic import Field, field_validator

from node.pipelines.radiograph.findings import ImageFinding
from node.results.templates import (
    CodeSpec,
    FindingSpec,
    ProbabilitySpec,
    Strict,
    Template,
    TemplateFile,
    TemplateSpec,
    resolve_shared,
)
from node.results.wording import site_phrase

RADIOGRAPH_FRACTURE = "radiograph-fracture"
OBJECTS = ("sr", "seg", "gsps", "secondary_capture")


class RadiographFindingSpec(FindingSpec):
    """The radiograph finding: plus the region score each TID 1410 region carries."""

    region_score: ProbabilitySpec


class TrackingSpec(Strict):
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


class SegmentationSpec(Strict):
    category: CodeSpec
    type: CodeSpec
    label: str = Field(min_length=1, max_length=64)


class OverlaySpec(Strict):
    disclaimer: str = Field(min_length=1, max_length=64)
    content_label: str

    @field_validator("content_label")
    @classmethod
    def _code_string(cls, value: str) -> str:
        # PS3.5 6.2: CS is upper case letters, digits, space and underscore, 16 characters at most
        if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", value):
            raise ValueError(f"{value!r} is not a DICOM code string (A-Z, 0-9, _ and space, ≤ 16)")
        return value


class FractureTemplateSpec(TemplateSpec):
    OBJECTS: ClassVar[tuple[str, ...]] = OBJECTS

    finding: RadiographFindingSpec
    finding_sites: dict[str, CodeSpec] = Field(min_length=1)
    tracking: TrackingSpec
    segmentation: SegmentationSpec
    overlay: OverlaySpec

    @field_validator("finding_sites")
    @classmethod
    def _no_empty_region(cls, value: dict[str, CodeSpec]) -> dict[str, CodeSpec]:
        if "" in value:
            raise ValueError('"" means "site not determined" and cannot have a finding site')
        return value


@dataclass(frozen=True)
class FractureTemplate(Template):
    """The resolved radiograph-fracture template: codes as CodedConcepts, texts as strings."""

    region_score: hd.sr.CodedConcept
    region_score_unit: hd.sr.CodedConcept
    finding_sites: dict[str, hd.sr.CodedConcept]  # body region → anatomic region
    image_tracking: str
    region_tracking: str
    segment_category: hd.sr.CodedConcept
    segment_type: hd.sr.CodedConcept
    segment_label: str
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

    def image_label(self, image: ImageFinding, threshold: float | None) -> str:
        """`label` of an image finding."""
        return self.label(image.category, image.fracture_probability, image.body_region, threshold)

    def finding_words(self, category: str, body_region: str) -> str:
        """The image finding in words, the SR's Comment."""
        return self.wording.finding(category, self.site_words(body_region))


def resolve(spec: FractureTemplateSpec) -> FractureTemplate:
    return FractureTemplate(
        **resolve_shared(spec),
        region_score=spec.finding.region_score.name.concept(),
        region_score_unit=spec.finding.region_score.unit.concept(),
        finding_sites={k: v.concept() for k, v in spec.finding_sites.items()},
        image_tracking=spec.tracking.image,
        region_tracking=spec.tracking.region,
        segment_category=spec.segmentation.category.concept(),
        segment_type=spec.segmentation.type.concept(),
        segment_label=spec.segmentation.label,
        disclaimer=spec.overlay.disclaimer,
        content_label=spec.overlay.content_label,
    )


TEMPLATE = TemplateFile(RADIOGRAPH_FRACTURE, FractureTemplateSpec, resolve)
load_template = TEMPLATE.load
shipped_template = TEMPLATE.shipped  # sr_templates/radiograph-fracture.yaml, read once per process
