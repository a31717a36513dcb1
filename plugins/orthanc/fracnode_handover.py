"""What fracnode's Orthanc plugin decides and remembers: settings, which instances to hand over, state.

Pure functions and a small SQLite store, importable without Orthanc (the plugin's unit tests
import this module directly); `fracnode_orthanc.py` beside it is the Orthanc glue.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

OWN_MANUFACTURER = "fracnode"  # node/results/producer.py MANUFACTURER: every fracnode result has it
# Orthanc 1.10's series-level main DICOM tags: the only tags /studies/{id}/series reports
SERIES_TAGS = frozenset(
    {
        "Manufacturer",
        "Modality",
        "SeriesDate",
        "SeriesTime",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "BodyPartExamined",
        "ProtocolName",
        "StationName",
        "SequenceName",
        "OperatorsName",
        "PerformedProcedureStepDescription",
        "AcquisitionDeviceProcessingDescription",
        "ContrastBolusAgent",
        "ImagesInAcquisition",
        "CardiacNumberOfImages",
        "NumberOfSlices",
        "NumberOfTemporalPositions",
    }
)
STATUS_LIMIT = 50  # hand-overs listed by GET /fracnode/status
EXPLORER_BUTTON = "Analyze with fracnode"


# -- configuration ("Fracnode" in Orthanc's JSON configuration) ----------------------------------


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    automatic: bool = True  # hand over stable studies; false: only the Explorer button / REST route
    mode: str = "store"  # "store" (C-STORE job) or "pull" (fracnode fetches over DICOMweb)
    modality: str = "fracnode"  # the DicomModalities entry for fracnode (store mode)
    modalities: tuple[str, ...] = ("CR", "DX")  # series modalities handed over; empty: any
    exclude: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (series tag, patterns) never handed over
    skip_own_results: bool = True
    state_file: str = ""
    max_attempts: int = 5
    retry_delay_s: float = 30.0  # doubled after each failed attempt
    url: str = ""  # pull mode, and store mode's forced hand-overs: fracnode's HTTP base URL
    token: str = ""  # with `url`: a bearer token from fracnode's web.auth.tokens
    peer: str = ""  # pull mode: the name of fracnode's peer for this Orthanc (its DICOMweb or DIMSE side)
    timeout_s: float = 30.0
    ae_title: str = "FRACNODE"  # with `host`: the plugin defines the modality itself (one snippet)
    host: str = ""
    port: int = 11112

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        """Read Orthanc's whole configuration; raise ValueError naming the key to fix."""
        raw = config.get("Fracnode", {})
        if not isinstance(raw, dict):
            raise ValueError('"Fracnode" must be a JSON object')  # noqa: TRY004 - a configuration error
        known = {
            "Enabled",
            "Automatic",
            "Mode",
            "Modality",
            "Modalities",
            "Exclude",
            "SkipOwnResults",
            "StateFile",
            "MaxAttempts",
            "RetryDelay",
            "Url",
            "Token",
            "Timeout",
            "AeTitle",
            "Host",
            "Port",
            "Peer",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f'"Fracnode": unknown key(s) {unknown}; known: {sorted(known)}')

        def typed(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
            value = raw.get(key, default)
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f'"Fracnode.{key}" must be a {getattr(kind, "__name__", "number")}, not {value!r}')
            return value

        mode = typed("Mode", str, "store")
        if mode not in ("store", "pull"):
            raise ValueError(f'"Fracnode.Mode" must be "store" or "pull", not {mode!r}')
        modalities = typed("Modalities", list, list(cls.modalities))
        if not all(isinstance(m, str) for m in modalities):
            raise ValueError(f'"Fracnode.Modalities" must be a list of modality codes such as "CR", not {modalities!r}')
        exclude = typed("Exclude", dict, {})
        for tag, patterns in exclude.items():
            if tag not in SERIES_TAGS:
                raise ValueError(
                    f'"Fracnode.Exclude": {tag!r} is not a series tag Orthanc indexes; use one of {sorted(SERIES_TAGS)}'
                )
            if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                raise ValueError(f'"Fracnode.Exclude.{tag}" must be a list of patterns (* and ? allowed)')
        storage = str(config.get("StorageDirectory", "OrthancStorage"))
        settings = cls(
            enabled=typed("Enabled", bool, True),
            automatic=typed("Automatic", bool, True),
            mode=mode,
            modality=typed("Modality", str, cls.modality),
            modalities=tuple(str(m).upper() for m in modalities),
            exclude=tuple((tag, tuple(p.upper() for p in pats)) for tag, pats in sorted(exclude.items())),
            skip_own_results=typed("SkipOwnResults", bool, True),
            state_file=os.path.abspath(typed("StateFile", str, os.path.join(storage, "fracnode-plugin.sqlite"))),
            max_attempts=typed("MaxAttempts", int, cls.max_attempts),
            retry_delay_s=float(typed("RetryDelay", (int, float), cls.retry_delay_s)),
            url=typed("Url", str, "").rstrip("/"),
            token=typed("Token", str, ""),
            peer=typed("Peer", str, ""),
            timeout_s=float(typed("Timeout", (int, float), cls.timeout_s)),
            ae_title=typed("AeTitle", str, cls.ae_title),
            host=typed("Host", str, ""),
            port=typed("Port", int, cls.port),
        )
        if settings.max_attempts < 1:
            raise ValueError('"Fracnode.MaxAttempts" must be at least 1')
        settings._check_modality(config)
        if mode == "pull" and not settings.url.startswith(("http://", "https://")):
            raise ValueError('"Fracnode.Url" must be fracnode\'s http(s):// base URL in pull mode')
        if mode == "pull" and not settings.peer:
            raise ValueError('"Fracnode.Peer" must name fracnode\'s peer for this Orthanc in pull mode')
        return settings

    def _check_modality(self, config: dict[str, Any]) -> None:
        """Store mode needs fracnode as a modality: from DicomModalities, or defined by the plugin."""
        if self.mode != "store":
            return
        declared = self.modality in (config.get("DicomModalities") or {})
        if self.host and declared:
            raise ValueError(
                f'"Fracnode.Host" defines modality {self.modality!r}, which "DicomModalities"'
                " defines too: keep one of them"
            )
        if not self.host and not declared and not config.get("DicomModalitiesInDatabase", False):
            raise ValueError(
                f'"Fracnode.Modality" {self.modality!r} is not in "DicomModalities": add it there,'
                ' or give fracnode\'s "Host" (and "Port", "AeTitle") in "Fracnode"'
            )
        if self.host and not (1 <= self.port <= 65535 and 1 <= len(self.ae_title.strip()) <= 16):
            raise ValueError('"Fracnode.Port" must be 1-65535 and "Fracnode.AeTitle" 1-16 characters')

    @property
    def modality_definition(self) -> dict[str, Any]:
        """The body of Orthanc's `PUT /modalities/{Modality}` for fracnode (when `Host` is given)."""
        return {"AET": self.ae_title.strip(), "Host": self.host, "Port": self.port}


# -- the decision: pure functions of the study's series and what was handed over before ----------


@dataclass(frozen=True)
class Series:
    id: str
    tags: dict[str, str]
    instances: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    instances: tuple[str, ...]  # empty: nothing to hand over
    reason: str


def series_of(answer: list[dict[str, Any]]) -> list[Series]:
    """Orthanc's `GET /studies/{id}/series` answer as Series records."""
    return [
        Series(s["ID"], {k: str(v) for k, v in s.get("MainDicomTags", {}).items()}, tuple(s.get("Instances", [])))
        for s in answer
    ]


def exclusion(series: Series, settings: Settings) -> str | None:
    """Why a series is never handed over, or None."""
    if settings.skip_own_results and series.tags.get("Manufacturer", "").strip().lower() == OWN_MANUFACTURER:
        return "fracnode's own results"
    for tag, patterns in settings.exclude:
        value = series.tags.get(tag, "").strip().upper()
        if any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns):
            return f"{tag} excluded"
    return None


def decide(series: list[Series], handed: frozenset[str], settings: Settings, forced: bool) -> Decision:
    """The instances to hand over now: the study's originals, unless all were handed over before.

    A forced hand-over (the Explorer button) ignores `Modalities` and earlier hand-overs, never
    the exclusions: fracnode's own results are not sent back to it.
    """
    originals = [s for s in series if exclusion(s, settings) is None]
    if not forced and settings.modalities:
        originals = [s for s in originals if s.tags.get("Modality", "").upper() in settings.modalities]
    instances = tuple(sorted(i for s in originals for i in s.instances))
    if not instances:
        return Decision((), "no series to hand over (Modalities, Exclude, or only fracnode results)")
    if forced:
        return Decision(instances, "forced")
    if set(instances) <= handed:
        return Decision((), "already handed over")
    return Decision(instances, "new instances")


def digest(instances: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(sorted(instances)).encode()).hexdigest()


def retry_delay(settings: Settings, attempts: int) -> float:
    return float(settings.retry_delay_s * 2 ** max(attempts - 1, 0))


# -- durable state: the plugin's own SQLite file beside Orthanc's storage -------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS handovers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL,              -- Orthanc's study ID (a hash, no patient data)
    instances TEXT NOT NULL,          -- JSON list of Orthanc instance IDs handed over
    instances_sha256 TEXT NOT NULL,
    reason TEXT NOT NULL,             -- stable | forced | catch-up
    mode TEXT NOT NULL,
    job TEXT NOT NULL DEFAULT '',     -- Orthanc job ID (store mode)
    state TEXT NOT NULL,              -- submitted | sent | retrying | failed
    attempts INTEGER NOT NULL DEFAULT 1,
    error TEXT NOT NULL DEFAULT '',
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS handovers_study ON handovers (study);
CREATE INDEX IF NOT EXISTS handovers_job ON handovers (job);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class State:
    """Hand-overs and the change-log cursor; every write is one committed transaction."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, params).fetchall()]

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            return int(self._db.execute(sql, params).lastrowid or 0)

    def handed(self, study: str) -> frozenset[str]:
        rows = self._rows("SELECT instances FROM handovers WHERE study = ?", (study,))
        return frozenset(i for r in rows for i in json.loads(r["instances"]))

    def record(self, study: str, instances: tuple[str, ...], reason: str, mode: str, job: str, state: str) -> int:
        now = time.time()
        return self._write(
            "INSERT INTO handovers (study, instances, instances_sha256, reason, mode, job, state,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (study, json.dumps(instances), digest(instances), reason, mode, job, state, now, now),
        )

    def update(self, handover: int, **values: Any) -> None:
        columns = ", ".join(f"{k} = ?" for k in values)
        self._write(
            f"UPDATE handovers SET {columns}, updated_at = ? WHERE id = ?", (*values.values(), time.time(), handover)
        )

    def by_job(self, job: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM handovers WHERE job = ? AND job != ''", (job,))
        return rows[0] if rows else None

    def in_state(self, *states: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(states))
        return self._rows(f"SELECT * FROM handovers WHERE state IN ({marks}) ORDER BY id", states)

    def recent(self, limit: int = STATUS_LIMIT) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT id, study, instances_sha256, json_array_length(instances) AS count, reason,"
            " mode, job, state, attempts, error, created_at, updated_at FROM handovers"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return rows

    def meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()
