"""Response models of the operator's REST API (`/api/v1`): what the dashboard and scripts read.

Studies and jobs are identified by Study Instance UID and job id only. The index holds no patient
names or IDs, and neither do these models; times are Unix seconds (UTC), durations seconds.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Delivery(BaseModel):
    """A job's result objects for one destination, by outbox state."""

    destination: str
    objects: int
    delivered: int
    pending: int
    failed: int = Field(description="given up: an operator must act (configuration)")
    attempts: int = Field(description="delivery attempts over all objects")
    last_error: str
    last_delivered_at: float | None


class Timings(BaseModel):
    """Seconds per stage of a job; null where the stage has not happened (yet)."""

    assembly_s: float | None = Field(None, description="first instance received → study complete")
    queue_s: float | None = Field(None, description="job created → its last attempt started")
    run_s: float | None = Field(None, description="last attempt started → finished")
    load_s: float | None = Field(None, description="reading the study's index rows (last attempt)")
    pipeline_s: float | None = Field(None, description="the pipeline's run (models and result objects)")
    stage_s: float | None = Field(None, description="writing results to the outbox")
    dispatch_s: float | None = Field(None, description="results staged → last object delivered")


class JobSummary(BaseModel):
    id: int
    study_uid: str
    revision: int
    route: str
    pipeline: str
    destinations: list[str]
    calling_ae: str
    state: str = Field(description="queued, running, done, failed, not_applicable or superseded")
    attempts: int
    max_attempts: int
    last_error: str = Field(description="why the last attempt failed")
    summary: str = Field(description="the pipeline's one-line result, or why it did not apply")
    created_at: float
    started_at: float | None
    finished_at: float | None
    next_attempt_at: float | None = Field(description="when a queued job is due")
    superseded_by: int | None
    retryable: bool = Field(description="POST /jobs/{id}/retry will queue it again")
    timings: Timings
    deliveries: list[Delivery]
    category: str | None = Field(
        None,
        description="the finding's category: fracture, suspicious or negative (the highest of"
        " a study's images); null when the job recorded none",
    )


class JobDetail(JobSummary):
    series_uids: list[str]
    findings: dict[str, Any] | None = Field(
        description="what the pipeline concluded (per image: category, probability, regions in"
        " source pixel coordinates); null when it recorded none"
    )
    previews: list[str] = Field(description="URLs of PNG previews with the regions drawn, one per image")


class Series(BaseModel):
    series_uid: str
    modality: str
    body_part: str
    series_description: str
    instances: int
    sop_classes: list[str]


class StudySummary(BaseModel):
    study_uid: str
    calling_ae: str
    first_received_at: float
    last_received_at: float
    completed_at: float | None
    receiving: bool = Field(description="instances may still arrive (not complete yet)")
    revision: int
    route_status: str = Field(description="routing's decision as recorded: 'routed: …' or 'no route matched'")
    routes: list[str] = Field(description="the routes that matched the latest revision")
    instances: int
    series: int
    modalities: list[str]
    jobs: dict[str, int] = Field(description="jobs of the study per state")
    pipelines: list[str] = Field(default_factory=list, description="pipelines of the latest revision's jobs")
    result: str = Field("", description="the latest job's result (its summary or failure)")
    result_state: str | None = Field(None, description="the latest job's state")
    category: str | None = Field(None, description="the latest finished job's category, if any")


class StudyDetail(StudySummary):
    series_list: list[Series]
    job_list: list[JobDetail]


class DestinationStatus(BaseModel):
    name: str
    type: str
    target: str = Field(description="peer name, folder path, or 'the sending peer'")
    pending: int
    delivered: int
    failed: int
    last_error: str
    last_delivered_at: float | None
    next_attempt_at: float | None
    oldest_pending_age_s: float = Field(description="how long the oldest undelivered result has waited")
    attempts: int = Field(description="the most delivery attempts of an undelivered result")
    in_trouble: bool = Field(description="results given up, or waiting after repeated failed attempts")
    trouble: str = Field(description="what is wrong, for an operator; empty when nothing is")


class Peer(BaseModel):
    name: str
    type: str = Field(description="dimse or dicomweb")
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None


class ConnectivityCheck(BaseModel):
    peer: str
    type: str
    check: str = Field(description="C-ECHO (PS3.4 A) or QIDO-RS (PS3.18 10.6)")
    ok: bool
    latency_ms: float | None
    status: int | None = Field(description="C-ECHO status or HTTP status code")
    message: str


class RetryResult(BaseModel):
    job: JobDetail
    message: str
