"""Pipeline registry: a pipeline turns the routed series of one study into derived DICOM objects.

Pipelines register a factory under a name; routes name the pipeline. A pipeline is one package
(node.pipelines.radiograph, node.pipelines.cspine); extra ones (a site's own pipeline, the test
suite's) are imported from `pipeline_modules`. A pipeline with settings registers their pydantic
model: its section `pipelines: {name: {...}}` of the configuration is validated against it
(`check_settings`) and handed to the factory (`settings`). Each worker builds its pipelines once,
so models load once and stay warm.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from node.config import Config
from node.records import PipelineFindings, PipelineInput, PipelineOutcome
from node.redact import trust


class Pipeline(Protocol):
    """One instance per node serves every worker thread: `run` must be safe to call concurrently."""

    name: str

    def run(self, request: PipelineInput) -> PipelineOutcome: ...


@runtime_checkable
class DrawsPreviews(Protocol):
    """A pipeline that draws its findings as PNG pictures (`fracnode analyze` writes them)."""

    def write_previews(self, findings: PipelineFindings, folder: Path) -> dict[str, Path]:
        """PNG files written into `folder`, by the SOP Instance UID of the image each shows."""
        ...


PipelineFactory = Callable[[Config], Pipeline]
SettingsT = TypeVar("SettingsT", bound=BaseModel)
_REGISTRY: dict[str, PipelineFactory] = {}
_BUNDLES: dict[str, tuple[str, ...]] = {}  # pipeline → the model bundles it loads (by folder name)
_SETTINGS: dict[str, type[BaseModel]] = {}  # pipeline → the model of its `pipelines.<name>` section
BUILTIN_MODULES: tuple[str, ...] = ("node.pipelines.radiograph", "node.pipelines.cspine")


class PipelineNotFound(KeyError):
    pass


def register(
    name: str, bundles: tuple[str, ...] = (), settings: type[BaseModel] | None = None
) -> Callable[[PipelineFactory], PipelineFactory]:
    """Decorator: register `factory(config) -> Pipeline` under `name`; `bundles` names the model
    bundles it loads from `inference.models_dir` (shown with their metrics at start), `settings`
    the pydantic model of its section `pipelines.<name>` (extra="forbid"; every field a default)."""

    def decorator(factory: PipelineFactory) -> PipelineFactory:
        _REGISTRY[name] = factory
        _BUNDLES[name] = bundles
        if settings is not None:
            _SETTINGS[name] = settings
        else:
            _SETTINGS.pop(name, None)
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
            # a configured pipeline's own messages are kept: its file, or its package's folder
            source = Path(imported.__file__)
            trust(source.parent if hasattr(imported, "__path__") else source)


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


def settings(config: Config, name: str, model: type[SettingsT]) -> SettingsT:
    """Pipeline `name`'s settings: its section `pipelines.<name>` (defaults where absent)."""
    return model.model_validate(config.pipelines.get(name) or {})


def check_routes(config: Config) -> list[str]:
    """Problems with route → pipeline references, after load_modules()."""
    return [
        f"routes[{i}] ({route.name!r}): unknown pipeline {route.pipeline!r}"
        f" (known: {', '.join(known()) or 'none'})"
        for i, route in enumerate(config.routes)
        if route.pipeline not in _REGISTRY
    ]


def check_settings(config: Config) -> list[str]:
    """Problems with the `pipelines:` sections, after load_modules(): each names its YAML path."""
    problems = []
    for name, section in config.pipelines.items():
        where = f"pipelines.{name}"
        if name not in _REGISTRY:
            problems.append(f"{where}: unknown pipeline {name!r} (known: {', '.join(known()) or 'none'})")
        elif name not in _SETTINGS:
            if section:
                problems.append(f"{where}: pipeline {name!r} has no settings; remove the section")
        else:
            model = _SETTINGS[name]
            try:
                model.model_validate(section or {})
            except ValidationError as exc:
                for error in exc.errors():
                    path = ".".join([where, *(str(part) for part in error["loc"])])
                    message = error["msg"]
                    if error["type"] == "extra_forbidden":
                        message = f"unknown setting; settings of {name}: {', '.join(sorted(model.model_fields))}"
                    problems.append(f"{path}: {message}")
    return problems


def check(config: Config) -> list[str]:
    """Every problem the pipelines find with the configuration: routes, then settings."""
    return check_routes(config) + check_settings(config)
