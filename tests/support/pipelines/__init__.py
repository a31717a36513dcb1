"""The test suite's pipelines: one folder, registered through `pipeline_modules`
(`pipeline_modules: [tests.support.pipelines]`) as a site's own pipeline would be.

It uses the node's public interfaces only: `node.pipelines.register`, the stage records of
`node.records`, `node.config.Config`, and the findings records the built-in pipeline packages
export (tests/unit/test_pipeline_folder.py checks that).
"""

from __future__ import annotations

from node.config import Config
from node.pipelines import register
from tests.support.pipelines.findings import REGION_BOX, RegionPipeline, VertebraePipeline
from tests.support.pipelines.kos import (
    FLAKY_FAILURES,
    DecliningPipeline,
    FlakyPipeline,
    KeyObjectPipeline,
    referenced_instances,
)

__all__ = ["FLAKY_FAILURES", "REGION_BOX", "referenced_instances"]


@register("test-kos")
def _kos(config: Config) -> KeyObjectPipeline:
    return KeyObjectPipeline()


@register("test-flaky")
def _flaky(config: Config) -> FlakyPipeline:
    return FlakyPipeline()


@register("test-regions")
def _regions(config: Config) -> RegionPipeline:
    return RegionPipeline()


@register("test-vertebrae")
def _vertebrae(config: Config) -> VertebraePipeline:
    return VertebraePipeline()


@register("test-decline")
def _decline(config: Config) -> DecliningPipeline:
    return DecliningPipeline()
