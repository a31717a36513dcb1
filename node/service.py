"""The running node: wires ingest → assembly → routing → jobs → pipelines → outbox → dispatch.

Every stage has a `*_once()` step that tests call directly; `start()` runs them in threads.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from node import pipelines
from node.assembly import AnalysisRequest, Assembly, request_analysis, summarize_series
from node.audit import Audit
from node.config import Config
from node.db import Database
from node.dispatch.dispatcher import Dispatcher
from node.dispatch.outbox import Outbox
from node.ingest.dimse import DimseIngest
from node.ingest.stow import StowIngest
from node.jobs import NOT_APPLICABLE, JobQueue
from node.logs import event
from node.metrics import Metrics
from node.outcomes import JobOutcomes
from node.pull.puller import Puller
from node.records import Job, PipelineInput, SeriesInput
from node.redact import error_text
from node.retention import purge_expired
from node.routing import route_study
from node.scan import ScanLimits
from node.search import StudySearch
from node.spool import Spool, private, private_dirs
from node.web.server import WebBindError, WebServer

log = logging.getLogger("fracnode.node")
ASSEMBLY_TICK_S = 0.2
IDLE_TICK_S = 1.0
JANITOR_TICK_S = 300.0


class NodeAlreadyRunning(RuntimeError):
    pass


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance_id = uuid.uuid4().hex[:12]
        data_dir = config.storage.data_dir
        private_dirs(data_dir)
        private(data_dir)
        self._lock_file = self._take_lock(data_dir / "fracnode.lock")
        pipelines.load_modules(config.pipeline_modules)
        problems = pipelines.check_routes(config)
        if problems:
            raise ValueError("; ".join(problems))
        self.db = Database(config.database_path)
        self.audit = Audit(config)
        storage = config.storage
        self.spool = Spool(config.spool_dir, self.db, storage.min_free_mb * 2**20, ScanLimits(
            max_depth=storage.max_sequence_depth, max_inflated_bytes=storage.max_inflated_mb * 2**20,
            max_inflation_ratio=storage.max_inflation_ratio))
        self.assembly = Assembly(self.db, config.assembly)
        self.jobs = JobQueue(self.db, config.jobs)
        self.outbox = Outbox(config.outbox_dir, self.db, config.dispatch.retry)
        self.metrics = Metrics(self.db, [d.name for d in config.destinations], data_dir,
                               config.storage.min_free_mb * 2**20)
        self.outbox.on_attempt = self.metrics.delivery
        self.outcomes = JobOutcomes(self.db)
        self.search = StudySearch(self.db, data_dir)
        self.dispatcher = Dispatcher(config, self.outbox)
        self.dispatcher.audit = self.audit
        self.ingest = DimseIngest(
            config.node, self.spool, self.db, on_released=self._on_released,
            on_stored=lambda: self.metrics.instance_received("dimse"), on_unchanged=self._on_unchanged,
            audit=self.audit,
        )
        self.stow = StowIngest(
            self.spool, self.db, on_released=self._on_released,
            on_stored=lambda: self.metrics.instance_received("stow"), on_unchanged=self._on_unchanged,
            audit=self.audit,
        )
        self.pulls = Puller(config, self.spool, self.db, self.assembly, on_retrieved=self._assembly_wake_set)
        self.web: WebServer | None = WebServer(self, config.web) if config.web.enabled else None
        self._stop = threading.Event()
        self._assembly_wake = threading.Event()
        self._work_wake = threading.Event()
        self._dispatch_wake = {d.name: threading.Event() for d in config.destinations}
        self._threads: list[threading.Thread] = []
        self._pipelines: dict[str, pipelines.Pipeline] = {}
        self._pipelines_lock = threading.Lock()
        self.warmed = threading.Event()
        self.warm_results: dict[str, str] = {}

    @staticmethod
    def _take_lock(path: Path) -> int:
        # flock is released by the kernel when the process dies: no stale lock files
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeAlreadyRunning(
                f"another fracnode process uses {path.parent}; stop it or set storage.data_dir"
            ) from None
        return fd

    # -- start-up recovery -------------------------------------------------------------------

    def recover(self) -> None:
        now = time.time()
        indexed = self.spool.reconcile()
        requeued = self.jobs.recover(now)
        orphans = self.outbox.remove_orphans()
        pending = self.db.query("SELECT COUNT(*) AS n FROM studies WHERE pending = 1")[0]["n"]
        undelivered = self.db.query("SELECT COUNT(*) AS n FROM outbox WHERE state = 'pending'")[0]["n"]
        event(log, logging.INFO, "recovered state", files_indexed=indexed, jobs_requeued=requeued,
              orphan_results_removed=orphans, studies_pending=pending, results_undelivered=undelivered)

    # -- one step of each stage ---------------------------------------------------------------

    def assemble_once(self, now: float | None = None) -> int:
        """Complete due studies, route them and queue their jobs. Returns studies completed."""
        now = time.time() if now is None else now
        studies = self.assembly.run_once(now)
        for study in studies:
            matches = route_study(study, self.config.routes)
            for match in matches:
                self.jobs.enqueue(study, match, now)
            status = (
                "routed: " + ", ".join(m.route for m in matches) if matches else "no route matched"
            )
            self.db.execute("UPDATE studies SET route_status = ? WHERE study_uid = ?",
                            (status, study.study_instance_uid))
            self.metrics.study_completed(study.study_instance_uid, now)
            self._remember_for_search(study.study_instance_uid)
            event(log, logging.INFO, "study complete", study_uid=study.study_instance_uid,
                  revision=study.revision, series=len(study.series),
                  instances=sum(s.instance_count for s in study.series), routing=status)
        if studies:
            self._work_wake.set()
        return len(studies)

    def _remember_for_search(self, study_uid: str) -> None:
        rows = self.db.query("SELECT path FROM instances WHERE study_uid = ? LIMIT 1", (study_uid,))
        if rows:
            self.search.remember(study_uid, Path(rows[0]["path"]))

    def pipeline_input(self, job: Job) -> PipelineInput:
        placeholders = ",".join("?" * len(job.series_uids))
        rows = self.db.query(
            f"""SELECT * FROM instances WHERE study_uid = ? AND series_uid IN ({placeholders})
            ORDER BY series_uid, path""",
            (job.study_instance_uid, *job.series_uids),
        )
        attributes = {s.series_instance_uid: s for s in summarize_series(rows)}
        paths: dict[str, list[Path]] = {}
        for row in rows:
            paths.setdefault(row["series_uid"], []).append(Path(row["path"]))
        series = tuple(
            SeriesInput(attributes[uid], tuple(paths[uid])) for uid in job.series_uids if uid in paths
        )
        overlays = frozenset().union(*self._overlays(job.destinations).values())
        return PipelineInput(job.study_instance_uid, job.revision, job.calling_ae, series, overlays)

    def _overlays(self, destinations: tuple[str, ...]) -> dict[str, frozenset[str]]:
        """The overlay kinds (gsps, secondary_capture) each of these destinations asked for."""
        configured = {d.name: d for d in self.config.destinations}
        return {name: frozenset(configured[name].overlays) for name in destinations if name in configured}

    def pipeline(self, name: str) -> pipelines.Pipeline:
        """The one instance of a pipeline, shared by every worker (so a model loads once and
        images of concurrent studies share its batches); built on first use."""
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
                log.exception("pipeline failed to load; its jobs will fail until this is fixed",
                              extra={"fields": {"pipeline": name}})
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
                self.jobs.supersede(job.id, time.time())
                return True
            request = self.pipeline_input(job)
            if not request.series:
                raise RuntimeError("the routed series are no longer in the spool")
            timings["load"] = time.monotonic() - started
            outcome = self.pipeline(job.pipeline).run(request)
            timings["pipeline"] = time.monotonic() - started - timings["load"]
            if not self._still_owns(job, owner):
                return True
            if outcome.not_applicable:
                self.jobs.finish(job.id, NOT_APPLICABLE, outcome.not_applicable, time.time())
                self._job_ended(job, NOT_APPLICABLE, outcome.findings, timings)
                event(log, logging.INFO, "job not applicable", job=job.id, pipeline=job.pipeline,
                      study_uid=job.study_instance_uid, reason=outcome.not_applicable)
                return True
            staging = time.monotonic()
            staged = self.outbox.stage(
                job, outcome.datasets, outcome.summary, time.time(), self._overlays(job.destinations)
            )
            timings["stage"] = time.monotonic() - staging
            self._job_ended(job, "done", outcome.findings, timings)
            event(log, logging.INFO, "job done", job=job.id, pipeline=job.pipeline,
                  study_uid=job.study_instance_uid, revision=job.revision, objects=len(outcome.datasets),
                  deliveries=staged, seconds=round(time.monotonic() - started, 3))
            for name in job.destinations:
                if name in self._dispatch_wake:
                    self._dispatch_wake[name].set()
        except Exception as exc:
            if not self._still_owns(job, owner):
                return True
            state = self.jobs.fail(job.id, error_text(exc), time.time())  # tags, never values
            timings.setdefault("pipeline", time.monotonic() - started - timings.get("load", 0.0))
            self._job_ended(job, "failed" if state == "failed" else "retried", None, timings)
            log.warning("job failed", exc_info=True, extra={"fields": {
                "job": job.id, "pipeline": job.pipeline, "study_uid": job.study_instance_uid,
                "attempt": job.attempts, "new_state": state}})
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

    def retry_job(self, job_id: int) -> bool:
        """Operator action: queue a failed job again with fresh attempts; False if not failed."""
        if not self.jobs.retry(job_id, time.time()):
            return False
        event(log, logging.INFO, "job retry requested", job=job_id)
        self._work_wake.set()
        return True

    def analyze_again(self, study_uid: str, requested_by: str) -> AnalysisRequest:
        """Operator action: analyse a held study anew from the spool (raises StudyNotHeld)."""
        request = request_analysis(self.db, study_uid)
        event(log, logging.INFO, "analysis requested", study_uid=study_uid, requested_by=requested_by,
              instances=request.instances, queued=request.queued, outcome=request.message)
        self._assembly_wake.set()
        return request

    def _on_unchanged(self, study_uids: set[str]) -> None:
        """An association or STOW-RS request carried only instances the node already held, byte for
        byte: nothing is analysed again (the spool is idempotent); say so, and how to ask."""
        for uid in sorted(study_uids):
            rows = self.db.query(
                "SELECT id, state FROM jobs WHERE study_uid = ? ORDER BY id DESC LIMIT 1", (uid,))
            event(log, logging.INFO, "study resent unchanged: the current result stands", study_uid=uid,
                  latest_job=rows[0]["id"] if rows else None, latest_state=rows[0]["state"] if rows else None,
                  to_analyse_again=f"fracnode analyze-again {uid}, or POST /api/v1/studies/{uid}/analyze")

    def _still_owns(self, job: Job, owner: str) -> bool:
        """A worker whose lease ran out (another worker took the job) must not record an outcome."""
        if self.jobs.renew(job.id, owner, time.time()):
            return True
        event(log, logging.WARNING, "job lease lost; outcome discarded", job=job.id, owner=owner,
              pipeline=job.pipeline, study_uid=job.study_instance_uid)
        return False

    def _renew_lease(self, job: Job, owner: str, job_ended: threading.Event) -> None:
        """Keep the job's lease while it runs, so no other worker takes it over."""
        interval = max(0.5, self.config.jobs.lease_s / 3)
        while not job_ended.wait(interval):
            if not self.jobs.renew(job.id, owner, time.time()):
                return

    def dispatch_once(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return sum(self.dispatcher.run_once(d.name, now) for d in self.config.destinations)

    def clean_once(self, now: float | None = None) -> int:
        """Retention: delete spooled studies whose work ended `retention_days` ago."""
        return purge_expired(self.config, self.db, time.time() if now is None else now,
                             on_purged=self.audit.study_deleted)

    # -- threads ------------------------------------------------------------------------------

    def _assembly_wake_set(self) -> None:
        self._assembly_wake.set()

    def _on_released(self, study_uids: set[str]) -> None:
        self.assembly.mark_released(study_uids)
        self._assembly_wake.set()

    def _loop(self, name: str, step, wake: threading.Event | None, tick: float) -> None:  # type: ignore[no-untyped-def]
        while not self._stop.is_set():
            try:
                busy = step()
            except Exception:
                log.exception("stage step failed", extra={"fields": {"stage": name}})
                busy = False
            if busy:
                continue
            if wake is not None:
                wake.wait(tick)
                wake.clear()
            else:
                self._stop.wait(tick)

    def start(self) -> None:
        self.audit.started()
        self.recover()
        self.ingest.start()
        if self.web is not None:
            try:
                self.web.start()
            except WebBindError:
                self.ingest.stop()
                raise
        self.pulls.recover()  # after the ingest: a C-MOVE's instances arrive there

        def spawn(name: str, step, wake: threading.Event | None, tick: float) -> None:  # type: ignore[no-untyped-def]
            thread = threading.Thread(target=self._loop, args=(name, step, wake, tick), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

        warm = threading.Thread(target=self.warm_up, name="warm-up", daemon=True)
        warm.start()
        self._threads.append(warm)
        spawn("assembly", lambda: self.assemble_once() > 0 and False, self._assembly_wake, ASSEMBLY_TICK_S)
        for i in range(self.config.jobs.workers):
            owner = f"{self.instance_id}-w{i}"
            spawn(f"worker-{i}", lambda owner=owner: self.work_once(owner),
                  self._work_wake, IDLE_TICK_S)
        for dest in self.config.destinations:
            spawn(f"dispatch-{dest.name}",
                  lambda name=dest.name: self.dispatcher.run_once(name, time.time()) > 0,
                  self._dispatch_wake[dest.name], IDLE_TICK_S)
        spawn("janitor", lambda: self.clean_once() > 0 and False, None, JANITOR_TICK_S)
        event(log, logging.INFO, "node started", instance=self.instance_id, ae_title=self.config.node.ae_title,
              port=self.ingest.port, http_port=self.web.port if self.web else None, data_dir=str(self.config.storage.data_dir.resolve()),
              workers=self.config.jobs.workers, routes=len(self.config.routes),
              config=json.dumps({"quiet_period_s": self.config.assembly.quiet_period_s}))

    def stop(self) -> None:
        self._stop.set()
        for wake in (self._assembly_wake, self._work_wake, *self._dispatch_wake.values()):
            wake.set()
        self.ingest.stop()
        if self.web is not None:
            self.web.stop()
        self.pulls.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.audit.stopped()
        self.db.close()
        os.close(self._lock_file)
        event(log, logging.INFO, "node stopped", instance=self.instance_id)

    def wait(self) -> None:
        self._stop.wait()
