"""The test suite's pipelines: one folder, registered through `pipeline_modules`
(`pipeline_modules: [tests.support.pipelines]`) as a site's own pipeline would be.

It uses the node's public interfaces only: `node.pipelines.register`, the stage records of
`node.records`, `node.config.Config`, and the findings records the built-in pipeline packages
export (tests/unit/test_pipeline_folder.py checks that).
"""

from __future__ import annotations

from collections.abc import Callable

from node.config import Config
from node.pipelines import Pipeline, register
from tests.support.pipelines.findings import REGION_BOX, RegionPipeline, VertebraePipeline
from tests.support.pipelines.kos import (
    FLAKY_FAILURES,
    DecliningPipeline,
    FlakyPipeline,
    KeyObjectPipeline,
    SlowPipeline,
    referenced_instances,
)

__all__ = ["FLAKY_FAILURES", "REGION_BOX", "referenced_instances"]


def _factory(pipeline: type[Pipeline]) -> Callable[[Config], Pipeline]:
    def build(config: Config) -> Pipeline:
        return pipeline()  # no models, no settings: a fresh instance per node

    return build


for _pipeline in (
    KeyObjectPipeline,
    SlowPipeline,
    FlakyPipeline,
    RegionPipeline,
    VertebraePipeline,
    DecliningPipeline,
):
    register(_pipeline.name)(_factory(_pipeline))
