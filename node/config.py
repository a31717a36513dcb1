"""The node's configuration: one YAML file validated by pydantic (`extra="forbid"`).

Every model default is the embedded default; `config/fracnode.yaml` spells the same
values out (a test keeps the two equal). Errors name the YAML path and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

AE_TITLE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, no backslash


def _check_ae_title(value: str) -> str:
    if not AE_TITLE_PATTERN.match(value) or not value.strip():
        raise ValueError(
            f"AE title {value!r} is not valid: 1-16 printable ASCII characters, no backslash"
        )
    return value.strip()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(Strict):
    ae_title: str = "FRACNODE"
    bind: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535, description="0 picks a free port (tests)")
    calling_ae_titles: list[str] = Field(
        default_factory=list, description="accepted calling AE titles; empty accepts any"
    )
    max_associations: int = Field(32, ge=1, le=1000)
    max_pdu: int = Field(0, ge=0, description="maximum PDU length to receive; 0 = unlimited")
    network_timeout_s: float = Field(60.0, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("calling_ae_titles")
    @classmethod
    def _calling(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]


class StorageSettings(Strict):
    data_dir: Path = Path("fracnode-data")
    min_free_mb: int = Field(
        200, ge=0, description="refuse instances (0xA700) when less space than this is free"
    )
    retention_days: float = Field(
        7.0, ge=0, description="delete spooled studies this long after their last job ended; 0 keeps"
    )


class AssemblySettings(Strict):
    quiet_period_s: float = Field(5.0, gt=0, le=86400)
    complete_on_release: bool = False


class RetrySettings(Strict):
    initial_s: float = Field(2.0, gt=0)
    factor: float = Field(2.0, ge=1.0)
    max_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> RetrySettings:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be at least initial_s ({self.initial_s})")
        return self


class JobSettings(Strict):
    workers: int = Field(1, ge=1, le=64)
    max_attempts: int = Field(3, ge=1, le=100)
    lease_s: float = Field(600.0, gt=0)
    retry: RetrySettings = RetrySettings(initial_s=5.0, factor=3.0, max_s=300.0)


class DispatchSettings(Strict):
    retry: RetrySettings = RetrySettings()
    batch_size: int = Field(64, ge=1)


class DimsePeer(Strict):
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)


class FolderDestination(Strict):
    type: Literal["folder"]
    name: str
    path: Path


class DimseDestination(Strict):
    type: Literal["dimse"]
    name: str
    peer: str


class SenderDestination(Strict):
    """Reply to the configured peer whose AE title sent the study."""

    type: Literal["sender"]
    name: str


Destination = Annotated[
    FolderDestination | DimseDestination | SenderDestination, Field(discriminator="type")
]


class RouteMatchRule(Strict):
    """All given criteria must hold for a series; lists mean "any of"; strings are regexes."""

    modality: list[str] = Field(default_factory=list)
    body_part: str | None = None
    series_description: str | None = None
    protocol_name: str | None = None
    sop_class: list[str] = Field(default_factory=list)
    image_type: list[str] = Field(
        default_factory=list, description="values that must all appear in ImageType"
    )
    calling_ae: list[str] = Field(default_factory=list)

    @field_validator("body_part", "series_description", "protocol_name")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class Route(Strict):
    name: str
    match: RouteMatchRule = RouteMatchRule()
    pipeline: str
    destinations: list[str] = Field(min_length=1)


class LoggingSettings(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


def _default_destinations() -> list[Destination]:
    return [FolderDestination(type="folder", name="results-folder", path=Path("fracnode-data/results"))]


class Config(Strict):
    node: NodeSettings = NodeSettings()
    storage: StorageSettings = StorageSettings()
    assembly: AssemblySettings = AssemblySettings()
    jobs: JobSettings = JobSettings()
    dispatch: DispatchSettings = DispatchSettings()
    logging: LoggingSettings = LoggingSettings()
    peers: list[DimsePeer] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=_default_destinations)
    routes: list[Route] = Field(default_factory=list)
    pipeline_modules: list[str] = Field(
        default_factory=list, description="extra Python modules that register pipelines"
    )

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        errors: list[str] = []
        for kind, names in (
            ("peer", [p.name for p in self.peers]),
            ("destination", [d.name for d in self.destinations]),
            ("route", [r.name for r in self.routes]),
        ):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                errors.append(f"{kind} names must be unique; repeated: {', '.join(duplicates)}")
        peers = {p.name for p in self.peers}
        for dest in self.destinations:
            if isinstance(dest, DimseDestination) and dest.peer not in peers:
                errors.append(
                    f"destination {dest.name!r}: unknown peer {dest.peer!r}"
                    f" (known: {', '.join(sorted(peers)) or 'none'})"
                )
        destinations = {d.name for d in self.destinations}
        for route in self.routes:
            for name in route.destinations:
                if name not in destinations:
                    errors.append(
                        f"route {route.name!r}: unknown destination {name!r}"
                        f" (known: {', '.join(sorted(destinations)) or 'none'})"
                    )
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def peer(self, name: str) -> DimsePeer:
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(name)

    def peer_by_ae_title(self, ae_title: str) -> DimsePeer | None:
        return next((p for p in self.peers if p.ae_title == ae_title), None)

    def destination(self, name: str) -> FolderDestination | DimseDestination | SenderDestination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise KeyError(name)

    @property
    def spool_dir(self) -> Path:
        return self.storage.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.storage.data_dir / "outbox"

    @property
    def database_path(self) -> Path:
        return self.storage.data_dir / "fracnode.sqlite"


# Short environment variables for the settings operators change most; any other setting can be
# given as FRACNODE_<SECTION>__<KEY> (e.g. FRACNODE_ASSEMBLY__QUIET_PERIOD_S=2).
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "FRACNODE_AE_TITLE": ("node", "ae_title"),
    "FRACNODE_BIND": ("node", "bind"),
    "FRACNODE_PORT": ("node", "port"),
    "FRACNODE_DATA_DIR": ("storage", "data_dir"),
    "FRACNODE_WORKERS": ("jobs", "workers"),
    "FRACNODE_LOG_LEVEL": ("logging", "level"),
}


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    line: int | None
    message: str
    hint: str

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        text = f"{where}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every error found."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"configuration {source}: {len(problems)} problem(s)"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


def _env_overrides(environ: dict[str, str]) -> list[tuple[tuple[str, ...], str]]:
    overrides = []
    for key, value in environ.items():
        if key in ENV_ALIASES:
            overrides.append((ENV_ALIASES[key], value))
        elif key.startswith("FRACNODE_") and "__" in key:
            path = tuple(part.lower() for part in key[len("FRACNODE_") :].split("__"))
            overrides.append((path, value))
    return overrides


def _apply(raw: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    target = raw
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return
    # YAML parsing turns "11112" into int and "true" into bool, as in the file itself
    target[path[-1]] = yaml.safe_load(value) if value.strip() else value


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Find the YAML line of a pydantic error location by walking the composed node tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


_HINTS = {
    "extra_forbidden": "remove it or fix its spelling; see the configuration reference in README.md",
    "missing": "this setting is required here",
    "union_tag_invalid": "type must be one of: folder, dimse, sender",
    "union_tag_not_found": "add a 'type:' (folder, dimse or sender)",
    "int_parsing": "give a whole number",
    "float_parsing": "give a number",
    "bool_parsing": "give true or false",
    "literal_error": "use one of the listed values",
}


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic adds the union member's tag ('folder', 'dimse', ...) after a list index
    cleaned: list[int | str] = []
    for i, part in enumerate(loc):
        if i > 0 and part in ("folder", "dimse", "sender") and isinstance(loc[i - 1], int):
            continue
        cleaned.append(part)
    return tuple(cleaned)


def parse(text: str, source: str = "<config>", environ: dict[str, str] | None = None) -> Config:
    """Parse and validate YAML text; raise ConfigError listing every problem."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            source,
            [ConfigProblem("(file)", mark.line + 1 if mark else None, f"not valid YAML: {exc}", "")],
        ) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem("(top level)", 1, "must be a mapping", "")])
    for path, value in _env_overrides(dict(os.environ) if environ is None else environ):
        _apply(raw, path, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = f"unknown setting {loc[-1]!r}"
            problems.append(
                ConfigProblem(_format_loc(loc), _line_of(root, loc), message, _HINTS.get(err["type"], ""))
            )
        raise ConfigError(source, problems) from None


def load(path: Path | None, environ: dict[str, str] | None = None) -> Config:
    """Load the configuration file, or the embedded defaults when `path` is None."""
    if path is None:
        return parse("", "<embedded defaults>", environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("(file)", None, f"cannot read: {exc.strerror}", "")]) from exc
    return parse(text, str(path), environ)
