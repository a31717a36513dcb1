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

from node.store import Database
from node.store import outcomes as table


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


class JobOutcomes:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, job_id: int, findings: object | None, timings: dict[str, float], now: float) -> None:
        """Keep the latest attempt's findings and timings (a retry replaces them)."""
        data = json.dumps(jsonable(findings)) if findings is not None else ""
        table.record(self.db, job_id, data, json.dumps({k: round(v, 4) for k, v in timings.items()}), now)

    def get(self, job_id: int) -> JobOutcome | None:
        found = self.many([job_id])
        return found.get(job_id)

    def many(self, job_ids: list[int]) -> dict[int, JobOutcome]:
        return {
            row.job_id: JobOutcome(
                row.job_id, json.loads(row.findings) if row.findings else None, json.loads(row.timings),
                row.recorded_at,
            )
            for row in table.of_jobs(self.db, job_ids)
        }
