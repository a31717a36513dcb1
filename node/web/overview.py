"""What the dashboard's Overview page reads: models and their measured accuracy, disk usage,
recent throughput and latency, the audit trail, and a job's result files for download."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from node import pipelines
from node.banner import NOTICE
from node.config import Config, FolderDestination
from node.dispatch.folder import SUPERSEDED, file_name, held, kind
from node.inference.cards import read_card
from node.store.outbox import ResultObject
from node.web.api import JobId
from node.web.audit import AuditEvent
from node.web.queries import Queries

router = APIRouter(tags=["overview"])


def _queries(request: Request) -> Queries:
    return request.app.state.queries  # type: ignore[no-any-return]


def _config(request: Request) -> Config:
    return request.app.state.config  # type: ignore[no-any-return]


class Metric(BaseModel):
    what: str
    value: str


class ModelInfo(BaseModel):
    pipeline: str
    bundle: str
    name: str
    version: str
    metrics: list[Metric] = Field(description="headline accuracy measured on held-out data, from"
                                  " the bundle's metadata.json (eval_metrics)")
    measured_on: str
    intended_use: str
    problem: str


class Models(BaseModel):
    notice: str
    models: list[ModelInfo]


@router.get("/models", response_model=Models, summary="The routed pipelines' models, versions and measured accuracy")
def models(request: Request) -> Models:
    config = _config(request)
    found = []
    for name in dict.fromkeys(route.pipeline for route in config.routes):
        if not pipelines.bundles_of(name):
            found.append(ModelInfo(pipeline=name, bundle="", name="", version="", metrics=[], measured_on="",
                                   intended_use="", problem="this pipeline names no model bundle"))
        for bundle in pipelines.bundles_of(name):
            card = read_card(config.inference.bundle(bundle))
            found.append(ModelInfo(
                pipeline=name, bundle=card.bundle, name=card.name, version=card.version,
                metrics=[Metric(what=w, value=v) for w, v in card.metrics], measured_on=card.measured_on,
                intended_use=card.intended_use, problem=card.problem,
            ))
    return Models(notice=NOTICE, models=found)


class DiskUsage(BaseModel):
    data_dir: str
    size_bytes: int
    free_bytes: int
    min_free_bytes: int = Field(description="storage.min_free_mb: below it instances are refused (0xA700)")
    spool_bytes: int = Field(description="instances held in the spool")
    studies_held: int


@router.get("/disk", response_model=DiskUsage, summary="The data folder's disk: size, free, spool")
def disk(request: Request) -> DiskUsage:
    storage = _config(request).storage
    usage = shutil.disk_usage(storage.data_dir)
    held = _queries(request).spool_usage()
    return DiskUsage(data_dir=str(storage.data_dir.resolve()), size_bytes=usage.total,
                     free_bytes=usage.free, min_free_bytes=storage.min_free_mb * 2**20,
                     spool_bytes=held.bytes, studies_held=held.studies)


class ActivityBucket(BaseModel):
    start: float
    finished: int = Field(description="jobs that ended (done, not applicable or failed)")
    failed: int
    median_latency_s: float | None = Field(description="study complete → job finished, median")
    max_latency_s: float | None


class Activity(BaseModel):
    bucket_s: float
    buckets: list[ActivityBucket]


@router.get("/activity", response_model=Activity, summary="Jobs finished and their latency over time")
def activity(
    request: Request,
    hours: Annotated[float, Query(gt=0, le=24 * 14)] = 24,
    buckets: Annotated[int, Query(ge=1, le=200)] = 24,
) -> Activity:
    now = time.time()
    start = now - hours * 3600
    width = hours * 3600 / buckets
    rows = _queries(request).jobs_finished_since(start)
    finished: list[list[float]] = [[] for _ in range(buckets)]
    failed = [0] * buckets
    counts = [0] * buckets
    for row in rows:
        i = min(buckets - 1, int((row.finished_at - start) // width))
        counts[i] += 1
        failed[i] += row.state == "failed"
        if row.completed_at is not None and row.finished_at >= row.completed_at:
            finished[i].append(row.finished_at - row.completed_at)
    return Activity(bucket_s=width, buckets=[
        ActivityBucket(start=start + i * width, finished=counts[i], failed=failed[i],
                       median_latency_s=round(statistics.median(finished[i]), 3) if finished[i] else None,
                       max_latency_s=round(max(finished[i]), 3) if finished[i] else None)
        for i in range(buckets)
    ])


@router.get("/audit", response_model=list[AuditEvent], summary="The audit trail, newest first")
def audit(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[AuditEvent]:
    return _queries(request).audit(limit)


class ResultFile(BaseModel):
    sop_instance_uid: str
    sop_class_uid: str
    kind: str = Field(description="SR, SEG, GSPS, SC, ...")
    size: int | None = Field(description="bytes; null when the node holds no copy: delivered to peers"
                             " only (a delivered result leaves the outbox), or purged (retention)")
    url: str


def _held(config: Config, job_id: int, result: ResultObject) -> Path:
    """Where the node still holds a result: the outbox until it is delivered everywhere, then a
    folder destination it went to (current, or set aside as superseded). Else the outbox path, gone."""
    if result.path.exists():
        return result.path
    for name in result.delivered_to:
        dest = next((d for d in config.destinations if d.name == name), None)  # may be removed
        if not isinstance(dest, FolderDestination):
            continue
        study = dest.path / result.study_uid
        found = held(study, result.sop_instance_uid) or next(
            iter(study.glob(f"{SUPERSEDED}/job{job_id}-rev*/*_{result.sop_instance_uid}.dcm")), None)
        if found is not None:
            return found
    return result.path


def _results(request: Request, job_id: int) -> list[tuple[str, str, Path]]:
    reads = _queries(request)
    found = reads.results(job_id)
    if not found and not reads.job_exists(job_id):
        raise HTTPException(404, f"no job {job_id}")
    return [(r.sop_instance_uid, r.sop_class_uid, _held(_config(request), job_id, r)) for r in found]


@router.get("/jobs/{job_id}/results", response_model=list[ResultFile],
            summary="The DICOM objects a job produced (SR, SEG, ...), for download")
def results(request: Request, job_id: JobId) -> list[ResultFile]:
    found = []
    for uid, sop_class, path in _results(request, job_id):
        size = path.stat().st_size if path.exists() else None
        found.append(ResultFile(sop_instance_uid=uid, sop_class_uid=sop_class, kind=kind(sop_class, ""),
                                size=size, url=f"/api/v1/jobs/{job_id}/results/{uid}"))
    return found


@router.get(
    "/jobs/{job_id}/results/{sop_instance_uid}",
    response_class=Response,
    summary="One result object as a DICOM file (PS3.10)",
    responses={200: {"content": {"application/dicom": {}}}, 404: {"description": "no such result, or purged"}},
)
def result_file(request: Request, job_id: JobId, sop_instance_uid: str) -> Response:
    for uid, sop_class, path in _results(request, job_id):
        if uid != sop_instance_uid:
            continue
        if not path.exists():
            raise HTTPException(404, f"the node holds no copy of result {uid} of job {job_id}: delivered"
                                " to peers only (a delivered result leaves the outbox), or purged (retention)")
        name = file_name(path, uid, sop_class)
        return Response(path.read_bytes(), media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    raise HTTPException(404, f"job {job_id} has no result {sop_instance_uid}")
