"""The operator's REST API under /api/v1: jobs (with retry), studies, previews, peers, destinations
and the active configuration. JSON, OpenAPI documented at /api/docs (with the same credentials).

URLs carry job ids and Study Instance UIDs only, never patient names or IDs (they end up in
proxies' and browsers' logs). Every route needs the credentials of `web.auth`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from node.audit import Audit
from node.config import Config
from node.jobs import FINAL_STATES, QUEUED, RUNNING
from node.web import peers, queries
from node.web.commands import Commands
from node.web.models import (
    ConnectivityCheck,
    DestinationStatus,
    JobDetail,
    Peer,
    RetryResult,
    StudyDetail,
    StudySummary,
)
from node.web.queries import Queries

router = APIRouter(tags=["operations"])
STATES = (QUEUED, RUNNING, *FINAL_STATES)
CATEGORIES = queries.CATEGORY_ORDER
SECRET_KEYS = frozenset({"password", "token", "tokens", "secret", "api_key"})
REDACTED = "***"
Limit = Annotated[int, Query(ge=1, le=queries.MAX_LIMIT, description="most recent first")]
MAX_ID = 2**63 - 1  # SQLite's INTEGER: a larger id is no job (422), not an overflow (500)
JobId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _queries(request: Request) -> Queries:
    return request.app.state.queries  # type: ignore[no-any-return]


def _commands(request: Request) -> Commands:
    return request.app.state.commands  # type: ignore[no-any-return]


def _config(request: Request) -> Config:
    return request.app.state.config  # type: ignore[no-any-return]


def operator_action(request: Request, action: str, study_uid: str) -> None:
    """Audit what an operator asked for (IHE ATNA, Use of Restricted Function)."""
    audit: Audit | None = request.app.state.audit
    if audit is not None:
        audit.operator_action(getattr(request.state, "principal", ""),
                              request.client.host if request.client else "", action, study_uid)


def _job_or_404(reads: Queries, job_id: int) -> JobDetail:
    found = reads.job(job_id)
    if found is None:
        raise HTTPException(404, f"no job {job_id}")
    return found


@router.get("/jobs", response_model=list[JobDetail], summary="Recent and running jobs")
def list_jobs(
    request: Request,
    state: Annotated[list[str] | None, Query(description=f"any of: {', '.join(STATES)}")] = None,
    study_uid: str | None = None,
    limit: Limit = 50,
    pipeline: str | None = None,
    since: Annotated[float | None, Query(description="created at or after (Unix seconds)")] = None,
    category: Annotated[list[str] | None, Query(description=f"any of: {', '.join(CATEGORIES)}")] = None,
) -> list[JobDetail]:
    _known(state, STATES, "job state")
    _known(category, CATEGORIES, "category")
    return _queries(request).jobs(states=state or (), study_uid=study_uid, limit=limit, pipeline=pipeline,
                                  since=since, categories=category or ())


def _known(given: list[str] | None, known: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(given or ()) - set(known))
    if unknown:
        raise HTTPException(422, f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}")


@router.get("/jobs/{job_id}", response_model=JobDetail, summary="One job: timings, findings, deliveries")
def get_job(request: Request, job_id: JobId) -> JobDetail:
    return _job_or_404(_queries(request), job_id)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=RetryResult,
    summary="Queue a failed job again with a fresh attempt budget",
    responses={404: {"description": "no such job"}, 409: {"description": "the job has not failed"}},
)
def retry_job(request: Request, job_id: JobId) -> RetryResult:
    reads = _queries(request)
    job = _job_or_404(reads, job_id)
    operator_action(request, f"POST /api/v1/jobs/{job_id}/retry", job.study_uid)
    if not _commands(request).retry_job(job_id):
        current = _job_or_404(reads, job_id)
        raise HTTPException(
            409, f"job {job_id} is {current.state}; only failed jobs can be retried"
            + (" (a newer revision replaced it)" if current.state == "superseded" else ""),
        )
    job = _job_or_404(reads, job_id)
    return RetryResult(job=job, message=f"job {job_id} queued again ({job.max_attempts} attempts)")


@router.get("/studies", response_model=list[StudySummary], summary="Recent studies and their routing")
def list_studies(
    request: Request,
    limit: Limit = 50,
    state: Annotated[list[str] | None, Query(description="studies with a job in any of these states")] = None,
    pipeline: str | None = None,
    since: Annotated[float | None, Query(description="last instance received at or after (Unix s)")] = None,
    category: Annotated[list[str] | None, Query(description=f"any of: {', '.join(CATEGORIES)}")] = None,
) -> list[StudySummary]:
    _known(state, STATES, "job state")
    _known(category, CATEGORIES, "category")
    return _queries(request).studies(limit, states=state or (), pipeline=pipeline, since=since,
                                     categories=category or ())


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=64, description="a Study Instance UID (or its start),"
                      " or an Accession Number; sent in the body so that it stays out of URLs and logs")


@router.post("/studies/search", response_model=list[StudySummary],
             summary="Find studies by Study Instance UID or Accession Number (matched, never shown)")
def search_studies(request: Request, body: SearchRequest, limit: Limit = 50) -> list[StudySummary]:
    return _queries(request).search_studies(body.text, limit)


@router.get("/studies/{study_uid}", response_model=StudyDetail,
            summary="One study: series, matched routes, jobs with findings and deliveries")
def get_study(request: Request, study_uid: str) -> StudyDetail:
    found = _queries(request).study(study_uid)
    if found is None:
        raise HTTPException(404, f"no study {study_uid} in the index")
    return found


@router.get(
    "/studies/{study_uid}/preview.png",
    response_class=Response,
    summary="The source image with the job's regions drawn (PNG, not for diagnostic use)",
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "nothing to preview"}},
)
def study_preview(
    request: Request,
    study_uid: str,
    job: Annotated[int | None, Query(ge=1, le=MAX_ID,
                                     description="the job (default: the latest with image findings)")] = None,
    instance: Annotated[str | None, Query(description="SOP Instance UID (default: one with regions)")] = None,
) -> Response:
    png = _queries(request).preview(study_uid, job, instance)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})  # patient images


@router.get("/peers", response_model=list[Peer], summary="Configured peers")
def list_peers(request: Request) -> list[Peer]:
    return [peers.describe(p) for p in _config(request).peers]


@router.post("/peers/{name}/echo", response_model=ConnectivityCheck,
             summary="Connectivity check: C-ECHO (DIMSE peers) or a QIDO-RS query (DICOMweb peers)")
def echo_peer(
    request: Request, name: str, timeout_s: Annotated[float, Query(gt=0, le=60)] = 10.0
) -> ConnectivityCheck:
    config = _config(request)
    peer = next((p for p in config.peers if p.name == name), None)
    if peer is None:
        known = ", ".join(p.name for p in config.peers) or "none configured"
        raise HTTPException(404, f"no peer {name!r} (known: {known})")
    return peers.check(peer, config.node.ae_title, timeout_s)


@router.get("/destinations", response_model=list[DestinationStatus],
            summary="Result delivery per destination: pending, delivered, failed, and whether it is in trouble")
def list_destinations(request: Request) -> list[DestinationStatus]:
    configured = {d.name: d for d in _config(request).destinations}
    now = time.time()
    found = []
    for health in _queries(request).destinations():
        dest = configured.get(health.name)
        kind = dest.type if dest is not None else "removed from the configuration"
        target = {"folder": str(getattr(dest, "path", "")), "sender": "the sending peer"}.get(
            kind, str(getattr(dest, "peer", "")))
        found.append(DestinationStatus(
            name=health.name, type=kind, target=target, pending=health.pending,
            delivered=health.delivered, failed=health.failed, last_error=health.last_error,
            last_delivered_at=health.last_delivered_at, next_attempt_at=health.next_attempt_at,
            oldest_pending_age_s=round(health.oldest_pending_age_s(now), 1), attempts=health.attempts,
            in_trouble=health.in_trouble(now), trouble=health.trouble(now),
        ))
    return found


def redact(value: Any, key: str = "") -> Any:
    """`value` with every password, token and secret replaced by "***"."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if key in SECRET_KEYS and value:
        return [REDACTED for _ in value] if isinstance(value, list) else REDACTED
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@router.get("/config", summary="The active configuration (read only; secrets shown as ***)")
def get_config(request: Request) -> dict[str, Any]:
    return redact(_config(request).model_dump(mode="json"))  # type: ignore[no-any-return]
