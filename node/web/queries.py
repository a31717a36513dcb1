"""Read models of the REST API from the node's index: jobs, their deliveries and studies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from node.outcomes import JobOutcome, JobOutcomes, image_findings
from node.store import Database, instances, outbox
from node.store import jobs as job_rows
from node.store import studies as study_rows
from node.store.jobs import FAILED, QUEUED, ListedJob
from node.store.studies import StudyRow
from node.web.models import Delivery, JobDetail, Series, StudyDetail, StudySummary, Timings

MAX_LIMIT = 500


def deliveries(db: Database, job_ids: Sequence[int]) -> dict[int, list[Delivery]]:
    found: dict[int, list[Delivery]] = {}
    for d in outbox.per_job(db, job_ids):
        found.setdefault(d.job_id, []).append(Delivery(
            destination=d.destination, objects=d.objects, delivered=d.delivered, pending=d.pending,
            failed=d.failed, attempts=d.attempts, last_error=d.last_error, last_delivered_at=d.last_delivered_at,
        ))
    return found


def _span(start: float | None, end: float | None) -> float | None:
    return round(max(0.0, end - start), 4) if start is not None and end is not None else None


def _timings(listed: ListedJob, outcome: JobOutcome | None, delivered: list[Delivery]) -> Timings:
    job = listed.job
    recorded = outcome.timings if outcome else {}
    dispatch = None
    if delivered and all(d.delivered == d.objects for d in delivered) and outcome is not None:
        last = max(d.last_delivered_at or 0.0 for d in delivered)
        dispatch = _span(job.finished_at, last)
    return Timings(
        assembly_s=_span(listed.first_received_at, listed.completed_at),
        queue_s=_span(job.created_at, job.started_at),
        run_s=_span(job.started_at, job.finished_at),
        load_s=recorded.get("load"),
        pipeline_s=recorded.get("pipeline"),
        stage_s=recorded.get("stage"),
        dispatch_s=dispatch,
    )


CATEGORY_ORDER = ("negative", "suspicious", "fracture")


def category(findings: dict[str, Any] | None) -> str | None:
    """A job's category: the study-level one (CT), else the highest of its images'."""
    if not findings:
        return None
    if isinstance(findings.get("category"), str):
        return str(findings["category"])
    found = [i.get("category") for i in image_findings(findings) if i.get("category") in CATEGORY_ORDER]
    return max(found, key=CATEGORY_ORDER.index) if found else None


def _job(listed: ListedJob, outcome: JobOutcome | None, delivered: list[Delivery]) -> JobDetail:
    job = listed.job
    findings = outcome.findings if outcome else None
    study = quote(job.study_uid, safe="")
    previews = [
        f"/api/v1/studies/{study}/preview.png?job={job.id}&instance={quote(image['sop_instance_uid'], safe='')}"
        for image in image_findings(findings)
    ]
    if findings and findings.get("kind") == "CSpineFindings":
        previews = [f"/api/v1/studies/{study}/preview.png?job={job.id}"]
    return JobDetail(
        id=job.id, study_uid=job.study_uid, revision=job.revision, route=job.route,
        pipeline=job.pipeline, destinations=list(job.destinations),
        calling_ae=job.calling_ae, state=job.state, attempts=job.attempts,
        max_attempts=job.max_attempts, last_error=job.last_error, summary=job.summary,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        next_attempt_at=job.not_before if job.state == QUEUED else None,
        superseded_by=job.superseded_by, retryable=job.state == FAILED,
        timings=_timings(listed, outcome, delivered), deliveries=delivered,
        series_uids=list(job.series_uids), findings=findings, previews=previews,
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
    rows = job_rows.listed(db, MAX_LIMIT if categories else min(limit, MAX_LIMIT), states=states,
                           study_uid=study_uid, job_id=job_id, pipeline=pipeline, since=since)
    ids = [row.job.id for row in rows]
    found = outcomes.many(ids)
    sent = deliveries(db, ids)
    listed = [_job(row, found.get(row.job.id), sent.get(row.job.id, [])) for row in rows]
    if categories:  # known only from the recorded findings: filtered here, not in SQL
        listed = [job for job in listed if job.category in categories][:limit]
    return listed


def _study(db: Database, outcomes: JobOutcomes, row: StudyRow) -> StudySummary:
    uid = row.study_uid
    current = job_rows.of_revision(db, uid, row.revision)
    last = job_rows.latest_of_study(db, uid)
    recorded = outcomes.get(last.id) if last is not None else None
    return StudySummary(
        pipelines=sorted({j.pipeline for j in current}),
        result=(last.last_error or last.summary) if last is not None else "",
        result_state=last.state if last is not None else None,
        category=category(recorded.findings if recorded is not None else None),
        study_uid=uid, calling_ae=row.calling_ae, first_received_at=row.first_received_at,
        last_received_at=row.last_received_at, completed_at=row.completed_at,
        receiving=row.pending, revision=row.revision, route_status=row.route_status,
        routes=sorted({j.route for j in current}), instances=row.instances, series=row.series,
        modalities=list(row.modalities), jobs=job_rows.state_counts(db, uid),
    )


def studies(
    db: Database,
    outcomes: JobOutcomes,
    limit: int = 50,
    *,
    uids: Sequence[str] | None = None,
    states: Sequence[str] = (),
    pipeline: str | None = None,
    since: float | None = None,
    categories: Sequence[str] = (),
) -> list[StudySummary]:
    """Most recently received first; `uids` limits to those studies (a search's matches)."""
    filtered = bool(states or pipeline or categories)
    rows = study_rows.listed(db, MAX_LIMIT if filtered else min(limit, MAX_LIMIT),
                             since if since is not None else 0.0, uids)
    found = [_study(db, outcomes, row) for row in rows]
    if filtered:  # by the studies' jobs, which the listing does not join
        found = [
            s for s in found
            if (not states or set(states) & set(s.jobs))
            and (not pipeline or pipeline in s.pipelines)
            and (not categories or s.category in categories)
        ]
    return found[:limit]


def study(db: Database, outcomes: JobOutcomes, study_uid: str) -> StudyDetail | None:
    row = study_rows.get(db, study_uid)
    if row is None:
        return None
    summary = _study(db, outcomes, row)
    return StudyDetail(
        **summary.model_dump(),
        series_list=[
            Series(series_uid=s.series_uid, modality=s.modality, body_part=s.body_part,
                   series_description=s.series_description, instances=s.instances,
                   sop_classes=list(s.sop_classes))
            for s in instances.series_summaries(db, study_uid)
        ],
        job_list=jobs(db, outcomes, study_uid=study_uid, limit=MAX_LIMIT),
    )
