"""Analyse a study on request: `POST /api/v1/studies/{StudyInstanceUID}/analyze`.

Without a peer, the node analyses its spooled copy again (a new revision: an identical resend
would change nothing, as the spool is idempotent). With `{"peer": NAME}` it pulls the study from
that peer first. The node first asks the peer whether it holds the study (QIDO-RS or C-FIND), so an unknown
study (404) or an unreachable peer (502) is answered at once; the retrieval itself (WADO-RS,
C-GET or C-MOVE) runs in the background: 202 Accepted, with the pull's URL in `Location`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydicom.uid import RE_VALID_UID

from node.assembly import StudyNotHeld
from node.pull import PullError
from node.store.pulls import Pull
from node.web.api import MAX_ID, operator_action
from node.web.commands import Commands
from node.web.queries import Queries

router = APIRouter(tags=["pull"])
_VALID_UID = re.compile(RE_VALID_UID)


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    peer: str | None = Field(
        None, min_length=1, examples=["orthanc-web"],
        description="name of a configured peer (dimse or dicomweb) to pull the study from; without"
        " it the node analyses the copy it holds again",
    )


class AnalysisStatus(BaseModel):
    study_uid: str
    queued: bool = Field(description="a new analysis was queued; false: one follows anyway (the"
                         " study is still being received, or already queued)")
    instances: int = Field(description="spooled instances the analysis reads")
    message: str
    study_url: str


class JobSummary(BaseModel):
    id: int
    route: str
    pipeline: str
    state: str
    detail: str


class PullStatus(BaseModel):
    id: int
    study_uid: str
    peer: str
    method: Literal["wado-rs", "c-get", "c-move"]
    state: Literal["queued", "running", "done", "failed"] = Field(
        description="done: retrieved and handed to routing (see jobs); failed: see error")
    expected: int | None = Field(description="instances the peer said the study holds, if it said")
    received: int = Field(description="instances new to the node")
    duplicates: int = Field(description="instances the node already held, identical")
    failed: int
    error: str
    requested_by: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    status_url: str
    jobs: list[JobSummary] = Field(description="the study's jobs created since the pull ended")


def _queries(request: Request) -> Queries:
    return request.app.state.queries  # type: ignore[no-any-return]


def _commands(request: Request) -> Commands:
    return request.app.state.commands  # type: ignore[no-any-return]


def _status(reads: Queries, pull: Pull) -> PullStatus:
    jobs: list[JobSummary] = []
    if pull.finished_at is not None and pull.started_at is not None:
        # since the retrieval started: assembly may complete the study (it is marked retrieved)
        # a moment before the pull records its finish
        jobs = [JobSummary(id=j.job.id, route=j.job.route, pipeline=j.job.pipeline, state=j.state,
                           detail=j.last_error or j.summary)
                for j in reads.jobs_created_since(pull.study_uid, pull.started_at)]
    return PullStatus(**pull.__dict__, status_url=f"/api/v1/pulls/{pull.id}", jobs=jobs)


@router.post(
    "/studies/{study_uid}/analyze",
    status_code=202,
    summary="Analyse a study again from the node's copy, or retrieve it from a peer first",
    responses={
        200: {"description": "an analysis follows already (the study is being received, or being"
              " pulled from this peer: that pull)"},
        400: {"description": "unknown peer (the message lists the configured ones) or invalid UID"},
        404: {"description": "the peer does not hold the study; without a peer: the node does not"},
        409: {"description": "without a peer: the node's copy was purged (retention); name a peer"},
        502: {"description": "the peer cannot be reached, or refused us (the message says why)"},
    },
)
def analyze(
    study_uid: str, request: Request, response: Response,
    body: Annotated[AnalyzeRequest | None, Body()] = None,
) -> PullStatus | AnalysisStatus:
    if len(study_uid) > 64 or not _VALID_UID.match(study_uid):
        raise HTTPException(400, f"{study_uid[:80]!r} is not a valid Study Instance UID")
    commands = _commands(request)
    principal = getattr(request.state, "principal", "")
    what = f"from peer {body.peer[:64]!r}" if body is not None and body.peer is not None else "again from its copy"
    operator_action(request, f"POST /api/v1/studies/{study_uid}/analyze {what}", study_uid)
    if body is None or body.peer is None:
        try:
            asked = commands.analyze_again(study_uid, principal)
        except StudyNotHeld as exc:
            raise HTTPException(409 if exc.purged else 404, str(exc)) from exc
        url = f"/api/v1/studies/{quote(study_uid, safe='')}"
        response.status_code = 202 if asked.queued else 200
        response.headers["Location"] = url
        return AnalysisStatus(study_uid=study_uid, queued=asked.queued, instances=asked.instances,
                              message=asked.message, study_url=url)
    try:
        pull, created = commands.request_pull(study_uid, body.peer, principal)
    except PullError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/api/v1/pulls/{pull.id}"
    return _status(_queries(request), pull)


@router.get("/pulls/{pull_id}", summary="A pull's state, counts and the jobs it led to")
def pull_status(pull_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request) -> PullStatus:
    reads = _queries(request)
    pull = reads.pull(pull_id)
    if pull is None:
        raise HTTPException(404, f"no pull {pull_id}")
    return _status(reads, pull)


@router.get("/pulls", summary="Recent pulls, newest first")
def pulls(request: Request, limit: int = 50) -> list[PullStatus]:
    reads = _queries(request)
    return [_status(reads, p) for p in reads.pulls(max(1, min(limit, 500)))]
