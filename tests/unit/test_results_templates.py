"""SR templates: the shipped YAML carries the right codes; a broken file fails with its path and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from node.pipelines.radiograph.template import load_template, shipped_template
from node.results.templates import TEMPLATES_DIR, TemplateError

SHIPPED = TEMPLATES_DIR / "radiograph-fracture.yaml"


def codes_of(concept) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    return concept.value, concept.scheme_designator


def test_shipped_template_carries_the_standard_codes():
    template = shipped_template()
    assert codes_of(template.title) == ("126000", "DCM")  # Imaging Measurement Report, CID 7021
    assert codes_of(template.finding) == ("72704001", "SCT")  # Fracture
    assert codes_of(template.segment_type) == ("72704001", "SCT")
    # Morphologically abnormal structure
    assert codes_of(template.segment_category) == ("49755003", "SCT")
    assert {k: codes_of(v) for k, v in template.presence.items()} == {
        "fracture": ("52101004", "SCT"),  # Present
        "suspicious": ("415684004", "SCT"),  # Suspected
        "negative": ("272519000", "SCT"),  # Absent (CID 240)
    }
    assert codes_of(template.probability) == ("122157", "DCM")
    assert codes_of(template.probability_unit) == ("%", "UCUM")
    # the region's number is fracnode's own score, not a DICOM probability
    assert codes_of(template.region_score) == ("REGION-SCORE", "99FRACNODE")
    assert codes_of(template.region_score_unit) == ("{score}", "UCUM")
    assert codes_of(template.comment) == ("121106", "DCM")
    assert codes_of(template.algorithm_family) == ("123110", "DCM")  # Artificial Intelligence


@pytest.mark.parametrize(
    ("body_region", "code"),
    [("hand", "85562004"), ("leg", "61685007"), ("hip", "29836001"), ("shoulder", "16982005")],
)
def test_every_body_region_has_its_snomed_anatomic_region(body_region, code):
    assert codes_of(shipped_template().finding_site(body_region)) == (code, "SCT")


def test_unknown_body_region_is_a_clear_error():
    with pytest.raises(ValueError, match="body region 'knee' has no finding site"):
        shipped_template().finding_site("knee")


def test_empty_body_region_means_site_not_determined():
    assert shipped_template().finding_site("") is None
    assert shipped_template().site_words("") == "site not determined"
    assert shipped_template().site_words("leg") == "lower limb"


@pytest.mark.parametrize(
    ("category", "probability", "body_region", "threshold", "label"),
    [
        ("fracture", 0.866, "leg", 0.07, "AI: fracture likely (87 %), lower limb"),
        ("suspicious", 0.31, "hand", 0.07, "AI: possible fracture (31 %; threshold 7 %), hand"),
        ("negative", 0.004, "", 0.065,
         "AI: no fracture found (<1 %; threshold 6.5 %), site not determined"),
        ("fracture", 0.999, "hip", None, "AI: fracture likely (>99 %), hip"),
        ("suspicious", 0.31, "shoulder", None, "AI: possible fracture (31 %), shoulder"),
    ],
)
def test_label_says_the_category_in_words_and_what_the_number_means(
    category, probability, body_region, threshold, label
):
    assert shipped_template().label(category, probability, body_region, threshold) == label


def test_label_never_hides_an_unknown_category():
    with pytest.raises(ValueError, match="unknown category 'maybe'"):
        shipped_template().label("maybe", 0.5, "hand", 0.1)


def _broken(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    change(raw)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.update(colour="red"), r"colour: Extra inputs are not permitted"),
        (lambda raw: raw["finding"]["type"].update(scheme="SNOMED"), r"finding\.type\.scheme"),
        (
            lambda raw: raw["finding"]["presence"].pop("suspicious"),
            r"finding\.presence: .*categories",
        ),
        (
            lambda raw: raw["series"]["seg"].update(number=9101),
            r"series: .*series numbers must differ",
        ),
        (lambda raw: raw["series"].pop("gsps"), r"series: .*objects"),
        (lambda raw: raw["overlay"].update(content_label="fracnode-ai"), r"overlay\.content_label"),
        (lambda raw: raw["overlay"].update(label="AI {score}"), r"overlay\.label: Extra inputs"),
        (lambda raw: raw["wording"]["categories"].pop("negative"), r"wording\.categories"),
        (lambda raw: raw["finding_sites"].update({"": raw["finding_sites"]["hand"]}),
         r"finding_sites: .*site not determined"),
        (lambda raw: raw["finding"]["region_score"]["name"].update(value="X" * 17),
         r"finding\.region_score\.name\.value"),
        (lambda raw: raw["tracking"].update(image="image {number}"), r"tracking\.image"),
        (lambda raw: raw["document"].pop("title"), r"document\.title: Field required"),
    ],
)
def test_broken_template_names_file_and_key(tmp_path, change, message):
    path = _broken(tmp_path, change)
    with pytest.raises(TemplateError, match=message) as raised:
        load_template(path)
    assert str(raised.value).startswith(str(path))


def test_unreadable_template_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("finding: [unclosed", encoding="utf-8")
    with pytest.raises(TemplateError, match="bad.yaml: cannot read template"):
        load_template(path)
