"""What the HTTP side reads, over the node's index: `Queries`, the one interface it holds for
reading (jobs with their deliveries and findings, studies, previews, destinations, disk, pulls,
the audit trail, metrics), and the read models it builds them from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from node.config import Config
from node.dispatch.health import DestinationHealth, destination_health
from node.outcomes import JobOutcome, JobOutcomes, image_findings
from node.search import StudySearch
from node.store import Database, instances, outbox
from node.store import jobs as job_rows
from node.store import pulls as pull_rows
from node.store import studies as study_rows
from node.store.jobs import FAILED, QUEUED, FinishedJob, JobRow, ListedJob
from node.store.outbox import ResultObject
from node.store.pulls import Pull
from node.store.studies import StudyRow
from node.web.audit import AtnaFileTrail, AuditEvent
from node.web.models import Delivery, JobDetail, Series, StudyDetail, StudySummary, Timings
from node.web.previews import PreviewCache, preview_png

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
    job = listed.row
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
    row, job = listed.row, listed.row.job
    findings = outcome.findings if outcome else None
    study = quote(job.study_instance_uid, safe="")
    previews = [
        f"/api/v1/studies/{study}/preview.png?job={job.id}&instance={quote(image['sop_instance_uid'], safe='')}"
        for image in image_findings(findings)
    ]
    if findings and findings.get("kind") == "CSpineFindings":
        previews = [f"/api/v1/studies/{study}/preview.png?job={job.id}"]
    return JobDetail(
        id=job.id, study_uid=job.study_instance_uid, revision=job.revision, route=job.route,
        pipeline=job.pipeline, destinations=list(job.destinations),
        calling_ae=job.calling_ae, state=row.state, attempts=job.attempts,
        max_attempts=row.max_attempts, last_error=row.last_error, summary=row.summary,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
        next_attempt_at=row.not_before if row.state == QUEUED else None,
        superseded_by=row.superseded_by, retryable=row.state == FAILED,
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
    ids = [listed.row.job.id for listed in rows]
    found = outcomes.many(ids)
    sent = deliveries(db, ids)
    details = [_job(listed, found.get(listed.row.job.id), sent.get(listed.row.job.id, [])) for listed in rows]
    if categories:  # known only from the recorded findings: filtered here, not in SQL
        details = [job for job in details if job.category in categories][:limit]
    return details


def _study(db: Database, outcomes: JobOutcomes, row: StudyRow) -> StudySummary:
    uid = row.study_uid
    current = job_rows.of_revision(db, uid, row.revision)
    last = job_rows.latest_of_study(db, uid)
    recorded = outcomes.get(last.job.id) if last is not None else None
    return StudySummary(
        pipelines=sorted({j.job.pipeline for j in current}),
        result=(last.last_error or last.summary) if last is not None else "",
        result_state=last.state if last is not None else None,
        category=category(recorded.findings if recorded is not None else None),
        study_uid=uid, calling_ae=row.calling_ae, first_received_at=row.first_received_at,
        last_received_at=row.last_received_at, completed_at=row.completed_at,
        receiving=row.pending, revision=row.revision, route_status=row.route_status,
        routes=sorted({j.job.route for j in current}), instances=row.instances, series=row.series,
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


class Queries:
    """Everything the REST API, the dashboard and /metrics read."""

    def __init__(self, config: Config, db: Database, outcomes: JobOutcomes, search: StudySearch,
                 exposition: Callable[[], bytes]) -> None:
        self.config = config
        self.db = db
        self.outcomes = outcomes
        self.search = search
        self.exposition = exposition  # the Prometheus text of node.metrics
        self.audit_trail = AtnaFileTrail(config.audit_path)  # what node.audit writes
        self.previews = PreviewCache()

    def jobs(self, *, states: Sequence[str] = (), study_uid: str | None = None, limit: int = 50,
             pipeline: str | None = None, since: float | None = None,
             categories: Sequence[str] = ()) -> list[JobDetail]:
        return jobs(self.db, self.outcomes, states=states, study_uid=study_uid, limit=limit, pipeline=pipeline,
                    since=since, categories=categories)

    def job(self, job_id: int) -> JobDetail | None:
        found = jobs(self.db, self.outcomes, job_id=job_id, limit=1)
        return found[0] if found else None

    def job_exists(self, job_id: int) -> bool:
        return job_rows.get(self.db, job_id) is not None

    def jobs_created_since(self, study_uid: str, since: float) -> list[JobRow]:
        return job_rows.created_since(self.db, study_uid, since)

    def jobs_finished_since(self, start: float) -> list[FinishedJob]:
        return job_rows.finished_since(self.db, start)

    def results(self, job_id: int) -> list[ResultObject]:
        return outbox.results_of_job(self.db, job_id)

    def studies(self, limit: int = 50, *, states: Sequence[str] = (), pipeline: str | None = None,
                since: float | None = None, categories: Sequence[str] = ()) -> list[StudySummary]:
        return studies(self.db, self.outcomes, limit, states=states, pipeline=pipeline, since=since,
                       categories=categories)

    def search_studies(self, text: str, limit: int) -> list[StudySummary]:
        return studies(self.db, self.outcomes, limit, uids=self.search.find(text, limit))

    def study(self, study_uid: str) -> StudyDetail | None:
        return study(self.db, self.outcomes, study_uid)

    def preview(self, study_uid: str, job_id: int | None, instance: str | None) -> bytes:
        """The PNG, or an HTTPException (404) that says what is missing."""
        return preview_png(self.db, self.outcomes, self.previews, study_uid, job_id, instance)

    def destinations(self) -> list[DestinationHealth]:
        return destination_health(self.db, [d.name for d in self.config.destinations])

    def spool_usage(self) -> instances.SpoolUsage:
        return instances.usage(self.db)

    def pull(self, pull_id: int) -> Pull | None:
        return pull_rows.get(self.db, pull_id)

    def pulls(self, limit: int) -> list[Pull]:
        return pull_rows.recent(self.db, limit)

    def audit(self, limit: int) -> list[AuditEvent]:
        return self.audit_trail.recent(limit)

    def metrics(self) -> bytes:
        return self.exposition()
