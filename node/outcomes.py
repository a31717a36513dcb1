"""What each job concluded, kept for the operator: the findings (without pixel data) and timings.

The DICOM results in the outbox are what the PACS gets; this is what the dashboard shows and
draws previews from: per image the category, probability and region outlines in source pixel
coordinates, and how long the job's steps took. Findings hold UIDs and numbers, never patient
data. A pipeline's findings record (a frozen dataclass such as `Findings`) is stored as JSON:
numpy arrays (region maps, label volumes) and spool paths are left out.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.db import Database
from node.records import ImageFinding, RegionFinding

SCHEMA = """
CREATE TABLE IF NOT EXISTS job_outcomes (
    job_id INTEGER PRIMARY KEY,
    findings TEXT NOT NULL DEFAULT '',
    timings TEXT NOT NULL DEFAULT '{}',
    recorded_at REAL NOT NULL
);
"""


def jsonable(value: Any) -> Any:
    """`value` as JSON data: dataclasses become objects (with a "kind"), arrays and paths go."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not isinstance(getattr(value, f.name), np.ndarray | Path)
        }
        return {"kind": type(value).__name__, **fields}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return None  # anything else (arrays nested in containers, handles) is not display data


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    findings: dict[str, Any] | None  # jsonable(findings), or None when the pipeline gave none
    timings: dict[str, float]  # seconds: load, pipeline, stage (the last attempt)
    recorded_at: float


def image_findings(findings: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The per-image findings (radiograph pipelines); [] for other kinds."""
    if not findings:
        return []
    return [i for i in findings.get("images", []) if isinstance(i, dict) and "sop_instance_uid" in i]


def image_finding(stored: dict[str, Any], path: Path) -> ImageFinding:
    """An `ImageFinding` rebuilt from its stored form, enough to draw it (no region map)."""
    regions = tuple(
        RegionFinding(
            polygon=tuple((float(x), float(y)) for x, y in region["polygon"]),
            box=tuple(float(v) for v in region["box"]),  # type: ignore[arg-type]
            probability=float(region["probability"]),
        )
        for region in stored.get("regions", [])
    )
    return ImageFinding(
        sop_instance_uid=str(stored["sop_instance_uid"]),
        path=path,
        fracture_probability=float(stored["fracture_probability"]),
        category=str(stored["category"]),
        regions=regions,
        region_map=None,
        body_region=str(stored.get("body_region", "")),
        body_region_probability=float(stored.get("body_region_probability", 0.0)),
        body_region_source=str(stored.get("body_region_source", "")),
    )


class JobOutcomes:
    def __init__(self, db: Database) -> None:
        self.db = db
        with db.transaction() as conn:
            conn.execute(SCHEMA)

    def record(self, job_id: int, findings: object | None, timings: dict[str, float], now: float) -> None:
        """Keep the latest attempt's findings and timings (a retry replaces them)."""
        data = json.dumps(jsonable(findings)) if findings is not None else ""
        self.db.execute(
            """INSERT OR REPLACE INTO job_outcomes (job_id, findings, timings, recorded_at)
            VALUES (?, ?, ?, ?)""",
            (job_id, data, json.dumps({k: round(v, 4) for k, v in timings.items()}), now),
        )

    def get(self, job_id: int) -> JobOutcome | None:
        found = self.many([job_id])
        return found.get(job_id)

    def many(self, job_ids: list[int]) -> dict[int, JobOutcome]:
        if not job_ids:
            return {}
        rows = self.db.query(
            f"SELECT * FROM job_outcomes WHERE job_id IN ({','.join('?' * len(job_ids))})",
            tuple(job_ids),
        )
        return {
            row["job_id"]: JobOutcome(
                row["job_id"],
                json.loads(row["findings"]) if row["findings"] else None,
                json.loads(row["timings"] or "{}"),
                row["recorded_at"],
            )
            for row in rows
        }
