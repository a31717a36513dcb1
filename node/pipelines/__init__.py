"""Pipeline registry: a pipeline turns the routed series of one study into derived DICOM objects.

Pipelines register a factory under a name; routes name the pipeline. Extra modules (for
example a site's own pipeline, or the test suite's) are imported from `pipeline_modules`.
Each worker builds its pipelines once, so models load once and stay warm.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from node.config import Config
from node.records import PipelineInput, PipelineOutcome
from node.redact import trust


class Pipeline(Protocol):
    """One instance per node serves every worker thread: `run` must be safe to call concurrently."""

    name: str

    def run(self, request: PipelineInput) -> PipelineOutcome: ...


PipelineFactory = Callable[[Config], Pipeline]
_REGISTRY: dict[str, PipelineFactory] = {}
_BUNDLES: dict[str, tuple[str, ...]] = {}  # pipeline → the model bundles it loads (by folder name)
BUILTIN_MODULES: tuple[str, ...] = ("node.pipelines.radiograph", "node.pipelines.cspine")


class PipelineNotFound(KeyError):
    pass


def register(name: str, bundles: tuple[str, ...] = ()) -> Callable[[PipelineFactory], PipelineFactory]:
    """Decorator: register `factory(config) -> Pipeline` under `name`; `bundles` names the model
    bundles it loads from `inference.models_dir` (shown with their metrics at start)."""

    def decorator(factory: PipelineFactory) -> PipelineFactory:
        _REGISTRY[name] = factory
        _BUNDLES[name] = bundles
        return factory

    return decorator


def load_modules(modules: list[str]) -> None:
    """Import the built-in pipeline modules and the configured extra ones."""
    for module in (*BUILTIN_MODULES, *modules):
        try:
            imported = importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"pipeline_modules: cannot import {module!r}: {exc}") from exc
        if module in modules and imported.__file__:
            trust(Path(imported.__file__))  # a configured pipeline's own messages are kept


def bundles_of(name: str) -> tuple[str, ...]:
    return _BUNDLES.get(name, ())


def known() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, config: Config) -> Pipeline:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise PipelineNotFound(
            f"unknown pipeline {name!r} (known: {', '.join(known()) or 'none'})"
        ) from None
    return factory(config)


def check_routes(config: Config) -> list[str]:
    """Problems with route → pipeline references, after load_modules()."""
    return [
        f"routes[{i}] ({route.name!r}): unknown pipeline {route.pipeline!r}"
        f" (known: {', '.join(known()) or 'none'})"
        for i, route in enumerate(config.routes)
        if route.pipeline not in _REGISTRY
    ]
