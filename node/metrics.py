"""Prometheus metrics of one node, in the node's own registry (served at `/metrics`).

Counters and histograms are moved where things happen (ingest, assembly, workers, outbox,
model forwards); queue sizes are read from SQLite at scrape time, so they are right after a
restart too. The registry belongs to the node, not to prometheus_client's global one, so
several nodes in one process (tests) keep separate numbers.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.dispatch.health import destination_health
from node.store import Database, instances, jobs, outbox, studies

if TYPE_CHECKING:
    from node.records import Job
    from node.store.outbox import OutboxItem

JOB_STATES = ("queued", "running", "done", "failed", "not_applicable", "superseded")
TRANSPORTS = ("dimse", "stow")
STAGES = ("assembly", "queue", "pipeline", "dispatch")
# seconds: from a fast forward pass (milliseconds) to a study that waits out a long quiet period
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _QueueCollector(Collector):
    """Jobs per state, outbox items waiting per destination, how long the oldest has waited, and
    the data folder's disk, read when scraped."""

    def __init__(self, db: Database, destinations: Iterable[str], data_dir: Path | None,
                 min_free_bytes: int) -> None:
        self.db = db
        self.destinations = tuple(destinations)
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes

    def collect(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("fracnode_jobs", "Jobs in each state", labels=["state"])
        counts = jobs.state_counts(self.db)
        for state in dict.fromkeys((*JOB_STATES, *counts)):
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        pending = GaugeMetricFamily(
            "fracnode_outbox_pending", "Result objects waiting for delivery, per destination",
            labels=["destination"],
        )
        waiting = outbox.pending_by_destination(self.db)
        for name in dict.fromkeys((*self.destinations, *waiting)):
            pending.add_metric([name], waiting.get(name, 0))
        yield pending
        receiving = GaugeMetricFamily("fracnode_studies_pending", "Studies still receiving (not complete)")
        receiving.add_metric([], studies.count_pending(self.db))
        yield receiving
        yield from self._destinations()
        yield from self._disk()

    def _destinations(self) -> Iterator[Metric]:
        now = time.time()
        oldest = GaugeMetricFamily(
            "fracnode_outbox_oldest_pending_seconds",
            "Age of the oldest result waiting for delivery, per destination (0 when none waits)",
            labels=["destination"])
        attempts = GaugeMetricFamily(
            "fracnode_outbox_pending_attempts_max",
            "The most delivery attempts of a result still waiting, per destination", labels=["destination"])
        failed = GaugeMetricFamily(
            "fracnode_outbox_failed",
            "Results given up (retrying cannot help; an operator must act), per destination",
            labels=["destination"])
        trouble = GaugeMetricFamily(
            "fracnode_destination_in_trouble",
            "1 when a destination has given-up results or results waiting after repeated failures",
            labels=["destination"])
        for health in destination_health(self.db, self.destinations):
            oldest.add_metric([health.name], round(health.oldest_pending_age_s(now), 3))
            attempts.add_metric([health.name], health.attempts)
            failed.add_metric([health.name], health.failed)
            trouble.add_metric([health.name], int(health.in_trouble(now)))
        yield from (oldest, attempts, failed, trouble)

    def _disk(self) -> Iterator[Metric]:
        spool = GaugeMetricFamily("fracnode_spool_bytes", "Bytes of the instances held in the spool")
        spool.add_metric([], instances.usage(self.db).bytes)
        yield spool
        if self.data_dir is None:
            return
        try:
            usage = shutil.disk_usage(self.data_dir)
        except OSError:
            return  # the folder is gone: the scrape still answers, the alert on absence fires
        free = GaugeMetricFamily(
            "fracnode_disk_free_bytes", "Free bytes on the file system of storage.data_dir")
        free.add_metric([], usage.free)
        size = GaugeMetricFamily(
            "fracnode_disk_size_bytes", "Size of the file system of storage.data_dir in bytes")
        size.add_metric([], usage.total)
        floor = GaugeMetricFamily(
            "fracnode_disk_min_free_bytes",
            "storage.min_free_mb in bytes: below this the node refuses instances (0xA700)")
        floor.add_metric([], self.min_free_bytes)
        yield from (free, size, floor)


class Metrics:
    """The node's metrics; the `*` methods are the hooks the stages call."""

    def __init__(self, db: Database, destinations: Iterable[str] = (), data_dir: Path | None = None,
                 min_free_bytes: int = 0) -> None:
        self.db = db
        self.registry = CollectorRegistry(auto_describe=True)
        destinations = tuple(destinations)
        self.instances_received = Counter(
            "fracnode_instances_received", "Instances stored in the spool (an identical resend is not counted)",
            ["transport"], registry=self.registry,
        )
        self.studies_completed = Counter(
            "fracnode_studies_completed", "Study revisions declared complete and routed",
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "fracnode_jobs_finished", "Job attempts that ended, by pipeline and outcome",
            ["pipeline", "outcome"], registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "fracnode_stage_seconds",
            "Time spent per stage: assembly (first instance to study complete), queue (job due to"
            " claimed), pipeline (one run), dispatch (result staged to delivered)",
            ["stage"], buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.deliveries = Counter(
            "fracnode_results_delivered", "Result objects delivered, per destination",
            ["destination"], registry=self.registry,
        )
        self.dispatch_failures = Counter(
            "fracnode_dispatch_failures", "Failed delivery attempts, per destination",
            ["destination"], registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "fracnode_inference_seconds", "Duration of one batched forward pass, per model bundle",
            ["model"], buckets=INFERENCE_BUCKETS, registry=self.registry,
        )
        self.inference_images = Counter(
            "fracnode_inference_images", "Images run through each model", ["model"], registry=self.registry,
        )
        # series at zero from the start, so rates and alerts work before the first event
        for transport in TRANSPORTS:
            self.instances_received.labels(transport)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for name in destinations:
            self.dispatch_failures.labels(name)
            self.deliveries.labels(name)
        self.registry.register(_QueueCollector(db, destinations, data_dir, min_free_bytes))

    def exposition(self) -> bytes:
        """The text exposition format (Prometheus 0.0.4)."""
        return generate_latest(self.registry)

    # -- hooks ------------------------------------------------------------------------------------

    def instance_received(self, transport: str, count: int = 1) -> None:
        """An instance is durably in the spool; `transport` is "dimse" or "stow"."""
        self.instances_received.labels(transport).inc(count)

    def study_completed(self, study_uid: str, now: float) -> None:
        self.studies_completed.inc()
        first = studies.first_received_at(self.db, study_uid)
        if first is not None:
            self.stage_seconds.labels("assembly").observe(max(0.0, now - first))

    def job_claimed(self, job: Job, now: float) -> None:
        """Queue wait: from when the job (or its retry) was due until a worker took it."""
        due = jobs.not_before(self.db, job.id)
        if due is not None:
            self.stage_seconds.labels("queue").observe(max(0.0, now - due))

    def job_ended(self, job: Job, outcome: str, seconds: float) -> None:
        self.jobs_finished.labels(job.pipeline, outcome).inc()
        self.stage_seconds.labels("pipeline").observe(seconds)

    def delivery(self, item: OutboxItem, outcome: str, now: float) -> None:
        """An outbox delivery attempt ended: "delivered", "failed" (retried later) or "given_up"."""
        if outcome == "delivered":
            self.deliveries.labels(item.destination).inc()
            if item.created_at:
                self.stage_seconds.labels("dispatch").observe(max(0.0, now - item.created_at))
        else:
            self.dispatch_failures.labels(item.destination).inc()

    def forward(self, model: str, images: int, seconds: float) -> None:
        """One batched forward pass of `model` (a bundle name) over `images` images."""
        self.inference_seconds.labels(model).observe(seconds)
        self.inference_images.labels(model).inc(images)

    def watch_engines(self, pipeline: Any) -> None:
        """Time every model engine a pipeline holds (attributes with an `on_forward` hook)."""
        for value in vars(pipeline).values():
            members = value if isinstance(value, list | tuple) else (value,)
            for member in members:
                if hasattr(member, "on_forward") and member.on_forward is None:
                    member.on_forward = self.forward
