"""The radiograph model's intended use read from the header: in-scope regions, out-of-scope regions, silence."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from node.pipelines.radiograph.select import classify_text, header_scope


@pytest.mark.parametrize(
    ("text", "region", "outside"),
    [
        ("HAND", "hand", ""),
        ("Wrist PA + lateral", "hand", ""),
        ("L-SPINE", "", "spine"),
        ("C SPINE 3 VIEWS", "", "spine"),
        ("CHEST", "", "chest"),
        ("THORAX", "", "chest"),
        ("Non-ossifying fibroma of distal tibia", "leg", ""),
        ("ANKLE", "leg", ""),
        ("Right femoral neck", "hip", ""),  # "neck" alone does not make it a spine film
        ("PELVIS AP", "hip", ""),
        ("SHOULDER", "shoulder", ""),
        ("Lower limb", "leg", ""),
        ("SKULL", "", "head"),
        ("ABDOMEN", "", "abdomen"),
        ("CHEST AND SHOULDER", "", ""),  # both kinds: the header does not decide
        ("HAND AND FOOT", "", ""),  # two regions: the header does not decide
        ("", "", ""),
        ("FOLLOW-UP", "", ""),
    ],
)
def test_words_name_a_region_in_scope_out_of_scope_or_none(text: str, region: str, outside: str) -> None:
    assert classify_text(text) == (region, outside)


def _dataset(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_body_part_examined_decides_first() -> None:
    scope = header_scope(_dataset(BodyPartExamined="CHEST", StudyDescription="HAND"))
    assert (scope.out_of_scope, scope.attribute) == ("chest", "BodyPartExamined")


def test_a_generic_body_part_leaves_it_to_the_descriptions() -> None:
    scope = header_scope(_dataset(BodyPartExamined="EXTREMITY", StudyDescription="Fibroma of distal tibia"))
    assert (scope.region, scope.attribute) == ("leg", "StudyDescription")


def test_the_anatomic_region_sequence_is_read_by_code_meaning() -> None:
    item = _dataset(CodeValue="85562004", CodingSchemeDesignator="SCT", CodeMeaning="Hand")
    scope = header_scope(_dataset(AnatomicRegionSequence=Sequence([item])))
    assert (scope.region, scope.attribute) == ("hand", "AnatomicRegionSequence")


def test_a_silent_header_decides_nothing() -> None:
    scope = header_scope(_dataset(BodyPartExamined="OTHER", SeriesDescription="AP"))
    assert not scope.decided and scope.region == scope.out_of_scope == ""
