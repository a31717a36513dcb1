"""The job lifecycle: claim a job, build its pipeline's input, run the pipeline, stage the results.

A worker holds its job's lease while the pipeline runs and renews it; a worker whose lease ran
out (another took the job over) records nothing. The outcome of each attempt (findings, timings)
is kept for the dashboard. Each pipeline is built once and shared by every worker, so a model
loads once and images of concurrent studies share its batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from node import pipelines
from node.config import Config
from node.dispatch.outbox import Outbox
from node.jobs import NOT_APPLICABLE, JobQueue, LeaseLost
from node.logs import event
from node.outcomes import JobOutcomes
from node.records import Job, PipelineInput, SeriesInput
from node.redact import error_text
from node.store import Database, instances

log = logging.getLogger("fracnode.node")


class WorkerMetrics(Protocol):
    """The metrics a worker reports (node.metrics.Metrics)."""

    def job_claimed(self, job: Job, now: float) -> None: ...

    def job_ended(self, job: Job, outcome: str, seconds: float) -> None: ...

    def watch_engines(self, pipeline: object) -> None: ...


def overlays_of(config: Config, destinations: Iterable[str]) -> dict[str, frozenset[str]]:
    """The optional objects (gsps, secondary_capture, radiograph_seg) each destination asked for."""
    configured = {d.name: d for d in config.destinations}
    return {name: frozenset(configured[name].overlays) for name in destinations if name in configured}


def pipeline_input(db: Database, config: Config, job: Job) -> PipelineInput:
    """The job's routed series as they are in the spool now, and the overlays its destinations take."""
    series = tuple(
        SeriesInput(attributes, paths)
        for attributes, paths in instances.series_files(db, job.study_instance_uid, job.series_uids)
    )
    overlays = frozenset().union(*overlays_of(config, job.destinations).values())
    return PipelineInput(job.study_instance_uid, job.revision, job.calling_ae, series, overlays)


class Worker:
    def __init__(
        self,
        config: Config,
        db: Database,
        jobs: JobQueue,
        outbox: Outbox,
        outcomes: JobOutcomes,
        metrics: WorkerMetrics,
        on_staged: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.config = config
        self.db = db
        self.jobs = jobs
        self.outbox = outbox
        self.outcomes = outcomes
        self.metrics = metrics
        self.on_staged = on_staged  # results of the job wait in the outbox now
        self._pipelines: dict[str, pipelines.Pipeline] = {}
        self._pipelines_lock = threading.Lock()
        self.warmed = threading.Event()
        self.warm_results: dict[str, str] = {}

    def pipeline(self, name: str) -> pipelines.Pipeline:
        """The one instance of a pipeline, shared by every worker; built on first use."""
        with self._pipelines_lock:
            if name not in self._pipelines:
                self._pipelines[name] = pipelines.create(name, self.config)
                self.metrics.watch_engines(self._pipelines[name])
            return self._pipelines[name]

    def warm_up(self) -> None:
        """Build the routed pipelines (load their models) before the first study needs them;
        `warmed` is set after, with each pipeline's load time or failure in `warm_results`."""
        for name in dict.fromkeys(route.pipeline for route in self.config.routes):
            started = time.monotonic()
            try:
                self.pipeline(name)
            except Exception as exc:
                self.warm_results[name] = f"failed: {type(exc).__name__}: {exc}"
                log.exception(
                    "pipeline failed to load; its jobs will fail until this is fixed",
                    extra={"fields": {"pipeline": name}},
                )
                continue
            seconds = round(time.monotonic() - started, 2)
            self.warm_results[name] = f"ready in {seconds} s"
            event(log, logging.INFO, "pipeline ready", pipeline=name, seconds=seconds)
        self.warmed.set()

    def work_once(self, owner: str, now: float | None = None) -> bool:
        """Claim and run one job. Returns False when no job was due."""
        now = time.time() if now is None else now
        job = self.jobs.claim(owner, now)
        if job is None:
            return False
        self.metrics.job_claimed(job, now)
        started = time.monotonic()
        timings: dict[str, float] = {}
        job_ended = threading.Event()
        renewer = threading.Thread(target=self._renew_lease, args=(job, owner, job_ended), daemon=True)
        renewer.start()
        try:
            if self.jobs.is_superseded(job):
                self.jobs.supersede(job.id, time.time(), owner)
                return True
            request = pipeline_input(self.db, self.config, job)
            if not request.series:
                raise RuntimeError("the routed series are no longer in the spool")
            timings["load"] = time.monotonic() - started
            outcome = self.pipeline(job.pipeline).run(request)
            timings["pipeline"] = time.monotonic() - started - timings["load"]
            if not self._still_owns(job, owner):
                return True
            if outcome.not_applicable:
                self.jobs.finish(job.id, NOT_APPLICABLE, outcome.not_applicable, time.time(), owner)
                self._job_ended(job, NOT_APPLICABLE, outcome.findings, timings)
                event(
                    log,
                    logging.INFO,
                    "job not applicable",
                    job=job.id,
                    pipeline=job.pipeline,
                    study_uid=job.study_instance_uid,
                    reason=outcome.not_applicable,
                )
                return True
            staging = time.monotonic()
            staged = self.outbox.stage(
                job, outcome.datasets, outcome.summary, time.time(), overlays_of(self.config, job.destinations), owner
            )
            timings["stage"] = time.monotonic() - staging
            self._job_ended(job, "done", outcome.findings, timings)
            event(
                log,
                logging.INFO,
                "job done",
                job=job.id,
                pipeline=job.pipeline,
                study_uid=job.study_instance_uid,
                revision=job.revision,
                objects=len(outcome.datasets),
                deliveries=staged,
                seconds=round(time.monotonic() - started, 3),
            )
            self.on_staged(job)
        except LeaseLost:
            self._lease_lost(job, owner)
        except Exception as exc:
            if not self._still_owns(job, owner):
                return True
            try:
                state = self.jobs.fail(job.id, error_text(exc), time.time(), owner)  # tags, never values
            except LeaseLost:
                self._lease_lost(job, owner)
                return True
            timings.setdefault("pipeline", time.monotonic() - started - timings.get("load", 0.0))
            self._job_ended(job, "failed" if state == "failed" else "retried", None, timings)
            log.warning(
                "job failed",
                exc_info=True,
                extra={
                    "fields": {
                        "job": job.id,
                        "pipeline": job.pipeline,
                        "study_uid": job.study_instance_uid,
                        "attempt": job.attempts,
                        "new_state": state,
                    }
                },
            )
        finally:
            job_ended.set()
            renewer.join()
        return True

    def _job_ended(self, job: Job, outcome: str, findings: object, timings: dict[str, float]) -> None:
        """Keep the attempt's findings and timings for the dashboard; count it in the metrics.

        Display data only: a failure here is logged and never changes the job's outcome."""
        try:
            self.outcomes.record(job.id, findings, timings, time.time())
            self.metrics.job_ended(job, outcome, timings.get("pipeline", 0.0))
        except Exception:
            log.exception("cannot record the job's findings", extra={"fields": {"job": job.id}})

    def _still_owns(self, job: Job, owner: str) -> bool:
        """A worker whose lease ran out (another worker took the job) must not record an outcome.

        Renewing first makes the lease last through the recording; the recording transaction
        checks it again (LeaseLost), so a worker that was paused past its lease records nothing."""
        if self.jobs.renew(job.id, owner, time.time()):
            return True
        self._lease_lost(job, owner)
        return False

    def _lease_lost(self, job: Job, owner: str) -> None:
        event(
            log,
            logging.WARNING,
            "job lease lost; outcome discarded",
            job=job.id,
            owner=owner,
            pipeline=job.pipeline,
            study_uid=job.study_instance_uid,
        )

    def _renew_lease(self, job: Job, owner: str, job_ended: threading.Event) -> None:
        """Keep the job's lease while it runs, so no other worker takes it over."""
        interval = max(0.5, self.config.jobs.lease_s / 3)
        while not job_ended.wait(interval):
            if not self.jobs.renew(job.id, owner, time.time()):
                return
