"""Routing: a pure function from a completed Study and the configured routes to RouteMatches.

Rules are declarative (config.RouteMatchRule): every criterion given must hold for a series;
list criteria mean "any of"; text criteria are regular expressions searched case-insensitively.
No rule string is ever evaluated as code.
"""

from __future__ import annotations

import re
from functools import lru_cache

from node.config import Route, RouteMatchRule
from node.records import RouteMatch, SeriesAttributes, Study


@lru_cache(maxsize=256)
def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex, re.IGNORECASE)


def _text_matches(regex: str | None, value: str) -> bool:
    return regex is None or _pattern(regex).search(value) is not None


def series_matches(rule: RouteMatchRule, series: SeriesAttributes, calling_ae: str) -> bool:
    if rule.modality and series.modality.upper() not in {m.upper() for m in rule.modality}:
        return False
    if rule.calling_ae and calling_ae not in rule.calling_ae:
        return False
    if rule.sop_class and not set(rule.sop_class) & set(series.sop_class_uids):
        return False
    if rule.image_type:
        wanted = {v.upper() for v in rule.image_type}
        if not any(wanted <= set(t.upper().split("\\")) for t in series.image_types):
            return False
    if rule.exclude_body_part is not None and _pattern(rule.exclude_body_part).search(series.body_part_examined):
        return False
    return (
        _text_matches(rule.body_part, series.body_part_examined)
        and _text_matches(rule.series_description, series.series_description)
        and _text_matches(rule.protocol_name, series.protocol_name)
    )


def route_study(study: Study, routes: list[Route]) -> list[RouteMatch]:
    """Every route with at least one matching series, with the series it matched, in config order."""
    matches = []
    for route in routes:
        series_uids = tuple(
            s.series_instance_uid for s in study.series if series_matches(route.match, s, study.calling_ae)
        )
        if series_uids:
            matches.append(RouteMatch(route.name, route.pipeline, tuple(route.destinations), series_uids))
    return matches
