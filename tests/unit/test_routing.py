"""Routing: a pure function of the study's series attributes and the configured routes."""

from __future__ import annotations

from typing import Any

import pytest

from node.config import Route, RouteMatchRule
from node.records import RouteMatch, SeriesAttributes, Study
from node.routing import route_study, series_matches

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"

NECK_CT = SeriesAttributes(
    series_instance_uid="1.2.3.1",
    modality="CT",
    body_part_examined="NECK",
    series_description="CT C-Spine 1.0 Bone",
    protocol_name="Trauma C-Spine",
    sop_class_uids=(CT_IMAGE,),
    image_types=("ORIGINAL\\PRIMARY\\AXIAL",),
    instance_count=200,
)
NECK_CT_LOCALIZER = SeriesAttributes(
    series_instance_uid="1.2.3.0",
    modality="CT",
    body_part_examined="NECK",
    series_description="Topogram 0.6 T20f",
    protocol_name="Trauma C-Spine",
    sop_class_uids=(CT_IMAGE,),
    image_types=("ORIGINAL\\PRIMARY\\LOCALIZER",),
    instance_count=1,
)
HAND_CR = SeriesAttributes(
    series_instance_uid="1.2.4.1",
    modality="CR",
    body_part_examined="HAND",
    series_description="Hand PA",
    protocol_name="",
    sop_class_uids=(CR_IMAGE,),
    image_types=("ORIGINAL\\PRIMARY",),
    instance_count=1,
)


def rule(**criteria: Any) -> RouteMatchRule:
    return RouteMatchRule(**criteria)


@pytest.mark.parametrize(
    ("criteria", "series", "calling_ae", "expected"),
    [
        # no criterion: every series matches
        ({}, NECK_CT, "", True),
        # modality: any of, case-insensitive
        ({"modality": ["CT"]}, NECK_CT, "", True),
        ({"modality": ["ct"]}, NECK_CT, "", True),
        ({"modality": ["CR", "DX"]}, HAND_CR, "", True),
        ({"modality": ["CR", "DX"]}, NECK_CT, "", False),
        # regexes are searched (not anchored) and case-insensitive
        ({"body_part": "neck"}, NECK_CT, "", True),
        ({"body_part": "^(NECK|CSPINE)$"}, NECK_CT, "", True),
        ({"body_part": "^SPINE$"}, NECK_CT, "", False),
        ({"series_description": "bone"}, NECK_CT, "", True),
        ({"series_description": "c-?spine"}, NECK_CT, "", True),
        ({"series_description": "soft"}, NECK_CT, "", False),
        ({"protocol_name": "trauma"}, NECK_CT, "", True),
        (
            {"protocol_name": "trauma"},
            HAND_CR,
            "",
            False,
        ),  # empty attribute never matches a pattern
        ({"protocol_name": ".*"}, HAND_CR, "", True),
        # sop_class: any of the series' SOP classes
        ({"sop_class": [CT_IMAGE, ENHANCED_CT]}, NECK_CT, "", True),
        ({"sop_class": [ENHANCED_CT]}, NECK_CT, "", False),
        ({"sop_class": [CR_IMAGE, DX_IMAGE]}, HAND_CR, "", True),
        # image_type: all values present in one backslash-joined ImageType, case-insensitive
        ({"image_type": ["ORIGINAL", "AXIAL"]}, NECK_CT, "", True),
        ({"image_type": ["axial"]}, NECK_CT, "", True),
        ({"image_type": ["ORIGINAL", "LOCALIZER"]}, NECK_CT, "", False),
        ({"image_type": ["AXIAL"]}, NECK_CT_LOCALIZER, "", False),
        ({"image_type": ["AX"]}, NECK_CT, "", False),  # whole values, not substrings
        # calling_ae: any of, exact
        ({"calling_ae": ["CT01", "CT02"]}, NECK_CT, "CT02", True),
        ({"calling_ae": ["CT01"]}, NECK_CT, "MR01", False),
        ({"calling_ae": ["CT01"]}, NECK_CT, "", False),
        # every criterion must hold
        ({"modality": ["CT"], "body_part": "NECK", "image_type": ["AXIAL"]}, NECK_CT, "", True),
        (
            {"modality": ["CT"], "body_part": "NECK", "image_type": ["AXIAL"]},
            NECK_CT_LOCALIZER,
            "",
            False,
        ),
        ({"modality": ["CT"], "calling_ae": ["CT01"]}, NECK_CT, "CT02", False),
    ],
)
def test_series_matches_rule(
    criteria: dict[str, Any], series: SeriesAttributes, calling_ae: str, expected: bool
) -> None:
    assert series_matches(rule(**criteria), series, calling_ae) is expected


def test_image_type_matches_when_any_instance_of_the_series_has_all_values() -> None:
    mixed = SeriesAttributes("1.9", modality="CT", image_types=("DERIVED\\SECONDARY", "ORIGINAL\\PRIMARY\\AXIAL"))
    assert series_matches(rule(image_type=["ORIGINAL", "AXIAL"]), mixed, "")
    assert not series_matches(rule(image_type=["DERIVED", "AXIAL"]), mixed, "")


def test_sop_class_matches_when_any_instance_of_the_series_has_it() -> None:
    mixed = SeriesAttributes("1.9", modality="CT", sop_class_uids=(CT_IMAGE, ENHANCED_CT))
    assert series_matches(rule(sop_class=[ENHANCED_CT]), mixed, "")


def route(name: str, pipeline: str, destinations: list[str], **criteria: Any) -> Route:
    return Route(name=name, match=RouteMatchRule(**criteria), pipeline=pipeline, destinations=destinations)


CSPINE = route(
    "neck-ct",
    "cspine-fracture",
    ["pacs"],
    modality=["CT"],
    body_part="NECK|C-?SPINE",
    image_type=["AXIAL"],
)
RADIOGRAPHS = route("radiographs", "radiograph-fracture", ["pacs", "back"], modality=["CR", "DX"])
EVERYTHING_FROM_CT01 = route("audit", "archive", ["folder"], calling_ae=["CT01"])


def study(*series: SeriesAttributes, calling_ae: str = "CT01") -> Study:
    return Study("1.2.3", revision=1, calling_ae=calling_ae, series=series)


@pytest.mark.parametrize(
    ("the_study", "routes", "expected"),
    [
        pytest.param(
            study(NECK_CT_LOCALIZER, NECK_CT),
            [CSPINE, RADIOGRAPHS],
            [RouteMatch("neck-ct", "cspine-fracture", ("pacs",), ("1.2.3.1",))],
            id="neck-ct-only-axial-series",
        ),
        pytest.param(
            study(HAND_CR),
            [CSPINE, RADIOGRAPHS],
            [RouteMatch("radiographs", "radiograph-fracture", ("pacs", "back"), ("1.2.4.1",))],
            id="radiograph",
        ),
        pytest.param(
            study(NECK_CT_LOCALIZER, NECK_CT, HAND_CR),
            [EVERYTHING_FROM_CT01, RADIOGRAPHS, CSPINE],
            [
                RouteMatch("audit", "archive", ("folder",), ("1.2.3.0", "1.2.3.1", "1.2.4.1")),
                RouteMatch("radiographs", "radiograph-fracture", ("pacs", "back"), ("1.2.4.1",)),
                RouteMatch("neck-ct", "cspine-fracture", ("pacs",), ("1.2.3.1",)),
            ],
            id="several-routes-in-config-order",
        ),
        pytest.param(study(NECK_CT, calling_ae="MR01"), [EVERYTHING_FROM_CT01], [], id="other-sender"),
        pytest.param(study(NECK_CT_LOCALIZER), [CSPINE, RADIOGRAPHS], [], id="matches-none"),
        pytest.param(study(NECK_CT), [], [], id="no-routes"),
        pytest.param(study(), [CSPINE, EVERYTHING_FROM_CT01], [], id="no-series"),
    ],
)
def test_route_study(the_study: Study, routes: list[Route], expected: list[RouteMatch]) -> None:
    assert route_study(the_study, routes) == expected


def test_matched_series_keep_the_studys_series_order() -> None:
    series = [SeriesAttributes(uid, modality="CT") for uid in ("1.5", "1.1", "1.3")]
    (match,) = route_study(study(*series), [route("all-ct", "p", ["d"], modality=["CT"])])
    assert match.series_uids == ("1.5", "1.1", "1.3")


def test_route_study_does_not_depend_on_earlier_calls() -> None:
    routes = [CSPINE, RADIOGRAPHS]
    first = route_study(study(NECK_CT), routes)
    route_study(study(HAND_CR), routes)
    assert route_study(study(NECK_CT), routes) == first
