"""The node's configuration: one YAML file validated by pydantic (`extra="forbid"`).

Every model default is the embedded default; `config/fracnode.yaml` spells the same
values out (a test keeps the two equal). Errors name the YAML path and line.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

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


class CSpineSettings(Strict):
    """Which CT series the cervical-spine pipeline may analyse (node.pipelines.cspine_select)."""

    max_slice_thickness_mm: float = Field(3.0, gt=0, le=20, description="thicker series are skipped")
    min_slices: int = Field(30, ge=3, description="series with fewer slices are skipped")
    max_obliquity_deg: float = Field(
        30.0, ge=0, le=90, description="largest angle between the slice normal and the patient's long axis"
    )


class DispatchSettings(Strict):
    retry: RetrySettings = RetrySettings()
    batch_size: int = Field(64, ge=1)


class DimsePeer(Strict):
    """A DICOM (DIMSE) application entity: a PACS, Orthanc, a modality (PS3.7, PS3.8)."""

    name: str
    type: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    retrieve: Literal["c-get", "c-move"] = Field(
        "c-get",
        description="how a study is pulled from this peer: c-get (on our association; the peer"
        " needs no entry for fracnode) or c-move (the peer sends to our AE title, which it must"
        " know as a move destination)",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)


class NoAuth(Strict):
    type: Literal["none"] = "none"


def _secret(value: str | None, path: Path | None, what: str) -> str:
    if value is not None:
        return value
    assert path is not None  # the validators ask for one of the two
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc.strerror}") from exc


class BasicAuth(Strict):
    """HTTP Basic (RFC 7617): `password`, or `password_file` (read at each use, e.g. a secret)."""

    type: Literal["basic"]
    user: str = Field(min_length=1)
    password: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give either password or password_file")
        return self

    def secret(self) -> str:
        return _secret(self.password, self.password_file, "password")


class BearerAuth(Strict):
    """OAuth 2.0 bearer token (RFC 6750): `token`, or `token_file` (read at each use)."""

    type: Literal["bearer"]
    token: str | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_token(self) -> BearerAuth:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give either token or token_file")
        return self

    def secret(self) -> str:
        return _secret(self.token, self.token_file, "token")


HttpAuth = Annotated[NoAuth | BasicAuth | BearerAuth, Field(discriminator="type")]


class DicomwebPeer(Strict):
    """A DICOMweb service (PS3.18): STOW-RS for results, QIDO-RS and WADO-RS to pull studies."""

    name: str
    type: Literal["dicomweb"]
    url: str = Field(description="base URL of the service, e.g. http://orthanc:8042/dicom-web")
    auth: HttpAuth = NoAuth()
    verify_tls: bool | Path = Field(
        True, description="true: the system's trusted CAs; false: no check; or a CA bundle (PEM)"
    )
    timeout_s: float = Field(60.0, gt=0, description="connect and read timeout of each request")
    ae_title: str | None = Field(
        None, description="the label its studies carry for routing (calling_ae) and sender replies"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"url {value!r} must start with http:// or https:// and name a host")
        return value.rstrip("/")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)

    @property
    def label(self) -> str:
        """What pulled studies record as their source (the `calling_ae` routing rules see)."""
        return self.ae_title or self.name


def _peer_type(value: Any) -> str:
    """A peer without `type` is a DIMSE peer (configurations written before DICOMweb peers)."""
    found = value.get("type", "dimse") if isinstance(value, dict) else getattr(value, "type", "dimse")
    return found if isinstance(found, str) else "dimse"


Peer = Annotated[
    Annotated[DimsePeer, Tag("dimse")] | Annotated[DicomwebPeer, Tag("dicomweb")],
    Discriminator(
        _peer_type,
        custom_error_type="peer_type_invalid",
        custom_error_message="a peer's type is dimse (the default when absent) or dicomweb",
    ),
]


Overlay = Literal["gsps", "secondary_capture"]


class DestinationBase(Strict):
    name: str
    overlays: list[Overlay] = Field(
        default_factory=list,
        description="extra objects for PACS that show neither SR nor SEG: gsps, secondary_capture",
    )


class FolderDestination(DestinationBase):
    type: Literal["folder"]
    path: Path


class DimseDestination(DestinationBase):
    type: Literal["dimse"]
    peer: str


class DicomwebDestination(DestinationBase):
    """STOW-RS to a `type: dicomweb` peer (PS3.18 10.5)."""

    type: Literal["dicomweb"]
    peer: str


class SenderDestination(DestinationBase):
    """Reply to the configured peer whose AE title sent the study."""

    type: Literal["sender"]


Destination = Annotated[
    FolderDestination | DimseDestination | DicomwebDestination | SenderDestination,
    Field(discriminator="type"),
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


class InferenceSettings(Strict):
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses CUDA (half precision) when present, else the CPU"
    )
    models_dir: Path | None = Field(
        None, description="folder of MONAI bundles; null = the models/ folder shipped with fracnode"
    )
    max_batch: int = Field(8, ge=1, le=256, description="images run through a model at once")
    max_wait_ms: float = Field(
        5.0, ge=0, le=10000, description="how long a batch waits for images of other studies"
    )
    weights_sha256: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of a bundle's weights file by bundle name, for bundles that record none"
        " (a MONAI Model Zoo bundle); checked before loading, as the one in metadata.json is",
    )

    @field_validator("weights_sha256")
    @classmethod
    def _sha256_hex(cls, values: dict[str, str]) -> dict[str, str]:
        for name, value in values.items():
            if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
                raise ValueError(f"{name}: a sha256 is 64 hex digits (`sha256sum models/model.pt`)")
        return values

    def bundle(self, name: str) -> Path:
        base = self.models_dir or Path(__file__).resolve().parent.parent / "models"
        return base / name


class WebUser(Strict):
    name: str = Field(min_length=1)
    password: str = Field(min_length=8, description="compared in constant time; keep the file private")


class WebAuthSettings(Strict):
    """Who may use the HTTP API, the dashboard, STOW-RS and /metrics.

    With neither tokens nor users, the node makes a random token on first start and keeps it in
    `<data_dir>/api-token` (readable by the node's user only): nothing is ever served unauthenticated
    unless `disabled: true` says so explicitly.
    """

    tokens: list[str] = Field(default_factory=list, description="bearer tokens (Authorization: Bearer ...)")
    users: list[WebUser] = Field(default_factory=list, description="HTTP Basic users (the dashboard's login)")
    disabled: bool = Field(False, description="serve without authentication (a closed lab network only)")

    @field_validator("tokens")
    @classmethod
    def _token_length(cls, values: list[str]) -> list[str]:
        for value in values:
            if len(value) < 16:
                raise ValueError("a token must have at least 16 characters; make one with `openssl rand -hex 24`")
        return values


class WebSettings(Strict):
    enabled: bool = Field(True, description="serve DICOMweb (STOW-RS), the REST API, the dashboard and /metrics")
    bind: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (env FRACNODE_HTTP_PORT); 0 picks a free port")
    auth: WebAuthSettings = WebAuthSettings()
    max_request_mb: int = Field(
        4096, ge=1, description="largest STOW-RS request body accepted (413 beyond it)"
    )


class LoggingSettings(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


_REFERENCES_CHECKED_BY_CALLER = "references checked by caller"
Loc = tuple[int | str, ...]


def _named_entries(raw: dict[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, entry) of the list `raw[key]` whose entries are mappings; tolerant of bad shapes."""
    entries = raw.get(key)
    if not isinstance(entries, list):
        return []
    return [(i, e) for i, e in enumerate(entries) if isinstance(e, dict)]


def reference_problems(raw: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Names that must be unique or must exist: (location, message) for each problem.

    Works on the raw mapping so that `parse` reports these together with field errors; entries
    too malformed to have a name are left to field validation.
    """
    if "destinations" not in raw:
        raw = {**raw, "destinations": [d.model_dump() for d in _default_destinations()]}
    problems: list[tuple[Loc, str]] = []
    for kind, key in (("peer", "peers"), ("destination", "destinations"), ("route", "routes")):
        seen: set[str] = set()
        for i, entry in _named_entries(raw, key):
            name = entry.get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                problems.append(((key, i, "name"), f"{kind} names must be unique; {name!r} is repeated"))
            seen.add(name)
    peer_types = {
        e["name"]: _peer_type(e) for _, e in _named_entries(raw, "peers") if isinstance(e.get("name"), str)
    }
    peers = sorted(peer_types)
    for i, dest in _named_entries(raw, "destinations"):
        peer, dest_type = dest.get("peer"), dest.get("type")
        if dest_type not in ("dimse", "dicomweb") or not isinstance(peer, str):
            continue
        if peer not in peer_types:
            message = (
                f"destination {dest.get('name')!r}: unknown peer {peer!r}"
                f" (known: {', '.join(peers) or 'none'})"
            )
            problems.append((("destinations", i, "peer"), message))
        elif peer_types[peer] != dest_type:
            wanted = "'type: dicomweb' and a url" if dest_type == "dicomweb" else "an ae_title, host and port"
            message = (
                f"destination {dest.get('name')!r} (type {dest_type}) names peer {peer!r}, which is a"
                f" {'DICOMweb' if peer_types[peer] == 'dicomweb' else 'DIMSE'} peer; use"
                f" 'type: {peer_types[peer]}' for this destination, or name a peer with {wanted}"
            )
            problems.append((("destinations", i, "peer"), message))
    destinations = sorted(
        {e["name"] for _, e in _named_entries(raw, "destinations") if isinstance(e.get("name"), str)}
    )
    for i, route in _named_entries(raw, "routes"):
        names = route.get("destinations")
        for j, name in enumerate(names if isinstance(names, list) else []):
            if isinstance(name, str) and name not in destinations:
                message = (
                    f"route {route.get('name')!r}: unknown destination {name!r}"
                    f" (known: {', '.join(destinations) or 'none'})"
                )
                problems.append((("routes", i, "destinations", j), message))
    return problems


def _default_destinations() -> list[Destination]:
    return [FolderDestination(type="folder", name="results-folder", path=Path("fracnode-data/results"))]


def _default_routes() -> list[Route]:
    return [
        Route(
            name="radiographs",
            match=RouteMatchRule(modality=["CR", "DX"]),
            pipeline="radiograph-fracture",
            destinations=["results-folder"],
        ),
        Route(  # every CT series: the pipeline picks the axial one and says why it skips the rest
            name="ct",
            match=RouteMatchRule(modality=["CT"]),
            pipeline="cspine-fracture",
            destinations=["results-folder"],
        ),
    ]


class Config(Strict):
    node: NodeSettings = NodeSettings()
    storage: StorageSettings = StorageSettings()
    assembly: AssemblySettings = AssemblySettings()
    jobs: JobSettings = JobSettings()
    dispatch: DispatchSettings = DispatchSettings()
    inference: InferenceSettings = InferenceSettings()
    cspine: CSpineSettings = CSpineSettings()
    logging: LoggingSettings = LoggingSettings()
    web: WebSettings = WebSettings()
    peers: list[Peer] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=_default_destinations)
    routes: list[Route] = Field(default_factory=list)
    pipeline_modules: list[str] = Field(
        default_factory=list, description="extra Python modules that register pipelines"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_route(cls, data: Any) -> Any:
        """Without `routes`, radiographs and CT go to the default folder destination (when there is one)."""
        if not isinstance(data, dict) or "routes" in data:
            return data
        destinations = data.get("destinations")
        if destinations is None or any(
            (d.get("name") if isinstance(d, dict) else getattr(d, "name", None)) == "results-folder"
            for d in destinations
        ):
            return {**data, "routes": [r.model_dump() for r in _default_routes()]}
        return data

    @model_validator(mode="after")
    def _cross_references(self, info: ValidationInfo) -> Config:
        if info.context and info.context.get(_REFERENCES_CHECKED_BY_CALLER):
            return self  # parse() reports these itself, with YAML lines, beside field errors
        problems = reference_problems(self.model_dump(mode="python"))
        if problems:
            raise ValueError("; ".join(f"{_format_loc(loc)}: {message}" for loc, message in problems))
        return self

    def peer(self, name: str) -> DimsePeer | DicomwebPeer:
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(name)

    def peer_by_ae_title(self, ae_title: str) -> DimsePeer | DicomwebPeer | None:
        """The peer whose AE title is `ae_title` (a DICOMweb peer's optional `ae_title` too)."""
        return next((p for p in self.peers if p.ae_title == ae_title), None)

    def destination(
        self, name: str
    ) -> FolderDestination | DimseDestination | DicomwebDestination | SenderDestination:
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
    "FRACNODE_HTTP_PORT": ("web", "port"),
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


def _env_overrides(environ: dict[str, str]) -> list[tuple[tuple[str, ...], str, str]]:
    """(setting path, value, variable name) for every FRACNODE_ variable that names a setting."""
    overrides = []
    for key, value in environ.items():
        if key in ENV_ALIASES:
            overrides.append((ENV_ALIASES[key], value, key))
        elif key.startswith("FRACNODE_") and "__" in key:
            path = tuple(part.lower() for part in key[len("FRACNODE_") :].split("__"))
            overrides.append((path, value, key))
    return overrides


def _apply(raw: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    target = raw
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return
    # Plain text stays text and pydantic converts it to the setting's type ("11200" → 11200,
    # "true" → True); parsing it as YAML would turn AE title "1234" or "NO" into a number or a
    # bool. Only YAML lists and mappings are parsed: FRACNODE_NODE__CALLING_AE_TITLES='[A, B]'.
    stripped = value.strip()
    if stripped.startswith(("[", "{")):
        try:
            target[path[-1]] = yaml.safe_load(stripped)
            return
        except yaml.YAMLError:
            pass
    target[path[-1]] = value


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
    "union_tag_invalid": "type must be one of: folder, dimse, dicomweb, sender",
    "union_tag_not_found": "add a 'type:' (folder, dimse, dicomweb or sender)",
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


_UNION_TAGS = ("folder", "dimse", "dicomweb", "sender")
_AUTH_TAGS = ("none", "basic", "bearer")
# hints that depend on which list the entry is in
_HINTS_AT = {
    ("peers", "peer_type_invalid"): "DIMSE peers have ae_title, host, port; DICOMweb peers a url",
    ("auth", "union_tag_invalid"): "auth type must be one of: none, basic, bearer",
    ("auth", "union_tag_not_found"): "add a 'type:' (none, basic or bearer)",
}


def _hint(loc: tuple[int | str, ...], error_type: str) -> str:
    for part in reversed(loc):
        if isinstance(part, str) and (part, error_type) in _HINTS_AT:
            return _HINTS_AT[(part, error_type)]
    return _HINTS.get(error_type, "")


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic adds the union member's tag ('folder', 'dimse', ...) after a list index
    cleaned: list[int | str] = []
    for i, part in enumerate(loc):
        if i > 0 and part in _UNION_TAGS and isinstance(loc[i - 1], int):
            continue
        if i > 0 and part in _AUTH_TAGS and loc[i - 1] == "auth":
            continue
        cleaned.append(part)
    return tuple(cleaned)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _settings_at(loc: tuple[int | str, ...]) -> list[str]:
    """The valid setting names in the mapping at `loc` (a raw pydantic location), for hints."""
    models: list[type[BaseModel]] = [Config]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [
            m for m in models
            if "type" in m.model_fields and part in get_args(m.model_fields["type"].annotation)
        ]
        if len(models) > 1 and tagged:  # a discriminated union member, e.g. destinations[0].dimse
            models = tagged
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            return []
        models = _models_in(fields[0].annotation)
    return sorted({name for m in models for name in m.model_fields})


def _unknown_setting_hint(loc: tuple[int | str, ...]) -> str:
    known = _settings_at(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if known:
        return f"remove it or fix its spelling; settings here: {', '.join(known)}"
    return _HINTS["extra_forbidden"]


def _overridden_by(loc: tuple[int | str, ...], overrides: dict[tuple[str, ...], str]) -> str | None:
    for path, variable in overrides.items():
        if tuple(loc[: len(path)]) == path:
            return variable
    return None


def parse(text: str, source: str = "<config>", environ: dict[str, str] | None = None) -> Config:
    """Parse and validate YAML text; raise ConfigError listing every problem.

    Field errors and cross-references (route → destination, destination → peer, unique names)
    are reported together, each with its YAML path and line.
    """
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
    overrides: dict[tuple[str, ...], str] = {}
    for path, value, variable in _env_overrides(dict(os.environ) if environ is None else environ):
        _apply(raw, path, value)
        overrides[path] = variable

    def problem(loc: tuple[int | str, ...], message: str, hint: str) -> ConfigProblem:
        variable = _overridden_by(loc, overrides)
        if variable is not None:  # the value came from the environment, not from a line
            return ConfigProblem(_format_loc(loc), None, f"{message} (from {variable})", hint)
        return ConfigProblem(_format_loc(loc), _line_of(root, loc), message, hint)

    problems: list[ConfigProblem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(raw, context={_REFERENCES_CHECKED_BY_CALLER: True})
    except ValidationError as exc:
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            message = err["msg"].removeprefix("Value error, ")
            hint = _hint(loc, err["type"])
            if err["type"] == "extra_forbidden":
                message = f"unknown setting {loc[-1]!r}"
                hint = _unknown_setting_hint(tuple(err["loc"]))
            problems.append(problem(loc, message, hint))
    problems += [problem(loc, message, "") for loc, message in reference_problems(raw)]
    if problems or config is None:
        problems.sort(key=lambda p: (p.line is None, p.line or 0))  # in file order
        raise ConfigError(source, problems)
    return config


def load(path: Path | None, environ: dict[str, str] | None = None) -> Config:
    """Load the configuration file, or the embedded defaults when `path` is None."""
    if path is None:
        return parse("", "<embedded defaults>", environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("(file)", None, f"cannot read: {exc.strerror}", "")]) from exc
    return parse(text, str(path), environ)
