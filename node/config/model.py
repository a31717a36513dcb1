"""The whole configuration (`Config`) and the cross-references between its sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ModelWrapValidatorHandler, PrivateAttr, ValidationInfo, model_validator

from node.config.peers import (
    Destination,
    DicomwebDestination,
    DicomwebPeer,
    DimseDestination,
    DimsePeer,
    FolderDestination,
    Peer,
    Route,
    RouteMatchRule,
    SenderDestination,
    peer_type,
)
from node.config.security import AuditSettings
from node.config.settings import (
    AssemblySettings,
    DispatchSettings,
    InferenceSettings,
    JobSettings,
    LoggingSettings,
    NodeSettings,
    StorageSettings,
    Strict,
    WebSettings,
)

REFERENCES_CHECKED_BY_CALLER = "references checked by caller"
# Top-level sections that became a pipeline's own settings: old key → the pipeline that owns them.
LEGACY_SECTIONS = {"cspine": "cspine-fracture"}
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
        e["name"]: peer_type(e) for _, e in _named_entries(raw, "peers") if isinstance(e.get("name"), str)
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


# BodyPartExamined values (PS3.16 Annex L defined terms, searched case-insensitively) of anatomy
# the radiograph model never saw: chest, abdomen, head and spine films are not analysed. HEAD and
# NECK only as whole values: "FEMORAL NECK" or "HUMERAL HEAD" are in scope.
OUT_OF_SCOPE_RADIOGRAPHS = (
    "CHEST|THORAX|LUNG|HEART|BREAST|RIB|STERNUM|ABDOMEN|BOWEL|KIDNEY|SKULL|BRAIN|FACE|ORBIT"
    "|SINUS|JAW|MANDIBLE|TMJ|SPINE|COCCYX|SACRUM|^HEAD$|^NECK$"
)


def _default_destinations() -> list[Destination]:
    return [FolderDestination(type="folder", name="results-folder", path=Path("fracnode-data/results"))]


def _default_routes() -> list[Route]:
    return [
        Route(  # the radiograph model knows limbs, hip and shoulder: other anatomy is routed away
            name="radiographs",
            match=RouteMatchRule(modality=["CR", "DX"], exclude_body_part=OUT_OF_SCOPE_RADIOGRAPHS),
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
    logging: LoggingSettings = LoggingSettings()
    web: WebSettings = WebSettings()
    audit: AuditSettings = AuditSettings()
    peers: list[Peer] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=_default_destinations)
    routes: list[Route] = Field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each pipeline's own settings by pipeline name; the pipeline validates them"
        " (node.pipelines.check_settings)",
    )
    pipeline_modules: list[str] = Field(
        default_factory=list, description="extra Python modules that register pipelines"
    )
    _deprecations: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _legacy_sections(cls, data: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        """Read a section that moved under `pipelines:` from its old place, and say where it goes now."""
        notes = []
        if isinstance(data, dict) and any(key in data for key in LEGACY_SECTIONS):
            data = dict(data)
            sections = dict(data.get("pipelines") or {})
            for key, pipeline in LEGACY_SECTIONS.items():
                if key not in data:
                    continue
                if pipeline in sections:
                    raise ValueError(
                        f"{key}: and pipelines.{pipeline}: are both given; keep pipelines.{pipeline}:"
                        f" only ({key}: is its old, deprecated place)"
                    )
                sections[pipeline] = data.pop(key)
                notes.append(
                    f"the top-level '{key}:' section is deprecated: move its settings under"
                    f" 'pipelines: {{{pipeline}: ...}}' (read as pipelines.{pipeline} for now)"
                )
            data["pipelines"] = sections
        config = handler(data)
        config._deprecations = tuple(notes)
        return config

    @property
    def deprecations(self) -> tuple[str, ...]:
        """What the file says in a deprecated way, for `fracnode config check` and the start-up log."""
        return self._deprecations

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
        if info.context and info.context.get(REFERENCES_CHECKED_BY_CALLER):
            return self  # parse() reports these itself, with YAML lines, beside field errors
        problems = reference_problems(self.model_dump(mode="python"))
        if problems:
            raise ValueError("; ".join(f"{format_loc(loc)}: {message}" for loc, message in problems))
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

    @property
    def audit_path(self) -> Path:
        return self.audit.file or self.storage.data_dir / "audit.log"


def format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"

