"""Read models of the REST API from the node's index: jobs, their deliveries and studies."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from node.db import Database
from node.jobs import FAILED, QUEUED
from node.outcomes import JobOutcome, JobOutcomes, image_findings
from node.web.models import Delivery, JobDetail, Series, StudyDetail, StudySummary, Timings

MAX_LIMIT = 500


def _placeholders(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def deliveries(db: Database, job_ids: Sequence[int]) -> dict[int, list[Delivery]]:
    if not job_ids:
        return {}
    rows = db.query(
        f"""SELECT job_id, destination, COUNT(*) AS objects,
        SUM(state = 'delivered') AS delivered, SUM(state = 'pending') AS pending,
        SUM(state = 'failed') AS failed, SUM(attempts) AS attempts,
        MAX(NULLIF(last_error, '')) AS last_error, MAX(delivered_at) AS last_delivered_at
        FROM outbox WHERE job_id IN ({_placeholders(job_ids)})
        GROUP BY job_id, destination ORDER BY job_id, destination""",
        tuple(job_ids),
    )
    found: dict[int, list[Delivery]] = {}
    for row in rows:
        found.setdefault(row["job_id"], []).append(Delivery(
            destination=row["destination"], objects=row["objects"], delivered=row["delivered"],
            pending=row["pending"], failed=row["failed"], attempts=row["attempts"],
            last_error=row["last_error"] or "", last_delivered_at=row["last_delivered_at"],
        ))
    return found


def _span(start: float | None, end: float | None) -> float | None:
    return round(max(0.0, end - start), 4) if start is not None and end is not None else None


def _timings(row: sqlite3.Row, outcome: JobOutcome | None, delivered: list[Delivery]) -> Timings:
    recorded = outcome.timings if outcome else {}
    dispatch = None
    if delivered and all(d.delivered == d.objects for d in delivered) and outcome is not None:
        last = max(d.last_delivered_at or 0.0 for d in delivered)
        dispatch = _span(row["finished_at"], last)
    return Timings(
        assembly_s=_span(row["first_received_at"], row["completed_at"]),
        queue_s=_span(row["created_at"], row["started_at"]),
        run_s=_span(row["started_at"], row["finished_at"]),
        load_s=recorded.get("load"),
        pipeline_s=recorded.get("pipeline"),
        stage_s=recorded.get("stage"),
        dispatch_s=dispatch,
    )


JOB_COLUMNS = """j.*, s.first_received_at AS first_received_at,
    (SELECT completed_at FROM studies WHERE study_uid = j.study_uid AND revision = j.revision)
    AS completed_at"""


CATEGORY_ORDER = ("negative", "suspicious", "fracture")


def category(findings: dict[str, Any] | None) -> str | None:
    """A job's category: the study-level one (CT), else the highest of its images'."""
    if not findings:
        return None
    if isinstance(findings.get("category"), str):
        return str(findings["category"])
    found = [i.get("category") for i in image_findings(findings) if i.get("category") in CATEGORY_ORDER]
    return max(found, key=CATEGORY_ORDER.index) if found else None


def _job(row: sqlite3.Row, outcome: JobOutcome | None, delivered: list[Delivery]) -> JobDetail:
    findings = outcome.findings if outcome else None
    study = quote(row["study_uid"], safe="")
    previews = [
        f"/api/v1/studies/{study}/preview.png?job={row['id']}&instance={quote(image['sop_instance_uid'], safe='')}"
        for image in image_findings(findings)
    ]
    if findings and findings.get("kind") == "CSpineFindings":
        previews = [f"/api/v1/studies/{study}/preview.png?job={row['id']}"]
    return JobDetail(
        id=row["id"], study_uid=row["study_uid"], revision=row["revision"], route=row["route"],
        pipeline=row["pipeline"], destinations=json.loads(row["destinations"]),
        calling_ae=row["calling_ae"], state=row["state"], attempts=row["attempts"],
        max_attempts=row["max_attempts"], last_error=row["last_error"], summary=row["summary"],
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        next_attempt_at=row["not_before"] if row["state"] == QUEUED else None,
        superseded_by=row["superseded_by"], retryable=row["state"] == FAILED,
        timings=_timings(row, outcome, delivered), deliveries=delivered,
        series_uids=json.loads(row["series_uids"]), findings=findings, previews=previews,
        category=category(findings),
    )


def jobs(
    db: Database,
    outcomes: JobOutcomes,
    *,
    states: Sequence[str] = (),
    study_uid: str | None = None,
    job_id: int | None = None,
    limit: int = 50,
    pipeline: str | None = None,
    since: float | None = None,
    categories: Sequence[str] = (),
) -> list[JobDetail]:
    """Most recent first; running and queued jobs are recent by definition (their id is newer)."""
    where: list[str] = []
    params: list[str | int | float] = []
    if pipeline:
        where.append("j.pipeline = ?")
        params.append(pipeline)
    if since is not None:
        where.append("j.created_at >= ?")
        params.append(since)
    if states:
        where.append(f"j.state IN ({_placeholders(states)})")
        params += list(states)
    if study_uid is not None:
        where.append("j.study_uid = ?")
        params.append(study_uid)
    if job_id is not None:
        where.append("j.id = ?")
        params.append(job_id)
    rows = db.query(
        f"""SELECT {JOB_COLUMNS} FROM jobs j LEFT JOIN studies s ON s.study_uid = j.study_uid
        {"WHERE " + " AND ".join(where) if where else ""} ORDER BY j.id DESC LIMIT ?""",
        (*params, MAX_LIMIT if categories else min(limit, MAX_LIMIT)),
    )
    ids = [row["id"] for row in rows]
    found = outcomes.many(ids)
    sent = deliveries(db, ids)
    listed = [_job(row, found.get(row["id"]), sent.get(row["id"], [])) for row in rows]
    if categories:  # known only from the recorded findings: filtered here, not in SQL
        listed = [job for job in listed if job.category in categories][:limit]
    return listed


STUDY_COLUMNS = """s.*, COUNT(i.sop_instance_uid) AS instances,
    COUNT(DISTINCT i.series_uid) AS series_count,
    GROUP_CONCAT(DISTINCT NULLIF(i.modality, '')) AS modalities"""


def _study(db: Database, row: sqlite3.Row) -> StudySummary:
    uid = row["study_uid"]
    states = db.query("SELECT state, COUNT(*) AS n FROM jobs WHERE study_uid = ? GROUP BY state", (uid,))
    routes = db.query(
        "SELECT DISTINCT route FROM jobs WHERE study_uid = ? AND revision = ? ORDER BY route",
        (uid, row["revision"]),
    )
    latest = db.query(
        """SELECT j.id, j.state, j.summary, j.last_error, o.findings FROM jobs j
        LEFT JOIN job_outcomes o ON o.job_id = j.id WHERE j.study_uid = ? ORDER BY j.id DESC LIMIT 1""",
        (uid,),
    )
    pipelines = db.query(
        "SELECT DISTINCT pipeline FROM jobs WHERE study_uid = ? AND revision = ? ORDER BY pipeline",
        (uid, row["revision"]),
    )
    last = latest[0] if latest else None
    findings = json.loads(last["findings"]) if last is not None and last["findings"] else None
    return StudySummary(
        pipelines=[r["pipeline"] for r in pipelines],
        result=(last["last_error"] or last["summary"]) if last is not None else "",
        result_state=last["state"] if last is not None else None,
        category=category(findings),
        study_uid=uid, calling_ae=row["calling_ae"], first_received_at=row["first_received_at"],
        last_received_at=row["last_received_at"], completed_at=row["completed_at"],
        receiving=bool(row["pending"]), revision=row["revision"], route_status=row["route_status"],
        routes=[r["route"] for r in routes], instances=row["instances"], series=row["series_count"],
        modalities=sorted((row["modalities"] or "").split(",")) if row["modalities"] else [],
        jobs={r["state"]: r["n"] for r in states},
    )


def studies(
    db: Database,
    limit: int = 50,
    *,
    uids: Sequence[str] | None = None,
    states: Sequence[str] = (),
    pipeline: str | None = None,
    since: float | None = None,
    categories: Sequence[str] = (),
) -> list[StudySummary]:
    """Most recently received first; `uids` limits to those studies (a search's matches)."""
    where = ["s.last_received_at >= ?"]
    params: list[str | float] = [since if since is not None else 0.0]
    if uids is not None:
        if not uids:
            return []
        where.append(f"s.study_uid IN ({_placeholders(uids)})")
        params += list(uids)
    filtered = bool(states or pipeline or categories)
    rows = db.query(
        f"""SELECT {STUDY_COLUMNS} FROM studies s LEFT JOIN instances i ON i.study_uid = s.study_uid
        WHERE {" AND ".join(where)} GROUP BY s.study_uid ORDER BY s.last_received_at DESC LIMIT ?""",
        (*params, MAX_LIMIT if filtered else min(limit, MAX_LIMIT)),
    )
    found = [_study(db, row) for row in rows]
    if filtered:  # by the studies' jobs, which SQL above does not join
        found = [
            s for s in found
            if (not states or set(states) & set(s.jobs))
            and (not pipeline or pipeline in s.pipelines)
            and (not categories or s.category in categories)
        ]
    return found[:limit]


def study(db: Database, outcomes: JobOutcomes, study_uid: str) -> StudyDetail | None:
    rows = db.query(
        f"""SELECT {STUDY_COLUMNS} FROM studies s LEFT JOIN instances i ON i.study_uid = s.study_uid
        WHERE s.study_uid = ? GROUP BY s.study_uid""",
        (study_uid,),
    )
    if not rows:
        return None
    series = db.query(
        """SELECT series_uid, MAX(modality) AS modality, MAX(body_part) AS body_part,
        MAX(series_description) AS series_description, COUNT(*) AS instances,
        GROUP_CONCAT(DISTINCT sop_class_uid) AS sop_classes
        FROM instances WHERE study_uid = ? GROUP BY series_uid ORDER BY MIN(received_at)""",
        (study_uid,),
    )
    summary = _study(db, rows[0])
    return StudyDetail(
        **summary.model_dump(),
        series_list=[
            Series(series_uid=s["series_uid"], modality=s["modality"], body_part=s["body_part"],
                   series_description=s["series_description"], instances=s["instances"],
                   sop_classes=sorted(s["sop_classes"].split(",")))
            for s in series
        ],
        job_list=jobs(db, outcomes, study_uid=study_uid, limit=MAX_LIMIT),
    )
