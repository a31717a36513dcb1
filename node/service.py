"""The running node: wires ingest → assembly → routing → jobs → pipelines → outbox → dispatch.

Wiring only: each stage is built here and handed what it needs; every stage has a `*_once()`
step that tests call directly, and `start()` runs in threads the stages of this process's roles
(node.roles). The HTTP side gets a `Queries` object to read and this node as its `Commands` to
act (node.web.commands).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

from node import owners, pipelines, roles
from node.assembly import AnalysisRequest, Assembly, request_analysis
from node.audit import Audit
from node.config import Config
from node.dispatch.dispatcher import Dispatcher
from node.dispatch.outbox import Outbox
from node.files import private, private_dirs
from node.ingest.dimse import DimseIngest
from node.ingest.stow import StoreTransaction, StowIngest
from node.jobs import JobQueue
from node.logs import event
from node.metrics import Metrics
from node.outcomes import JobOutcomes
from node.pull.puller import Puller
from node.records import Job
from node.retention import purge_expired
from node.roles import NodeAlreadyRunning, Roles
from node.routing import route_study
from node.scan import ScanLimits
from node.search import StudySearch
from node.spool import Spool
from node.store import DatabaseUnavailable, instances, jobs, open_configured, outbox, studies
from node.store.pulls import Pull
from node.web.queries import Queries
from node.web.server import WebBindError, WebServer
from node.worker import Worker

log = logging.getLogger("fracnode.node")
ASSEMBLY_TICK_S = 0.2
IDLE_TICK_S = 1.0
JANITOR_TICK_S = 300.0
# processes sharing the spool and outbox (PostgreSQL): the janitors leave files younger than this
# alone, as another process may be writing them now
SHARED_GRACE_S = 3600.0

__all__ = ["Node", "NodeAlreadyRunning"]


class Node:
    def __init__(self, config: Config, process_roles: Roles | None = None) -> None:
        self.config = config
        self.roles = process_roles or Roles.every()
        roles.check(config, self.roles)
        self.shared = roles.shared(config)
        # lease owners and temporary files name the process (node.owners), so that a process of this
        # host takes up a dead one's work at once; the random part tells restarts apart in the logs
        self.instance_id = f"{owners.this_process()}-{uuid.uuid4().hex[:6]}"
        data_dir = config.storage.data_dir
        private_dirs(data_dir)
        private(data_dir)
        self._locks = roles.take_locks(config, self.roles)
        pipelines.load_modules(config.pipeline_modules)
        problems = pipelines.check(config)
        if problems:
            roles.release(self._locks)
            raise ValueError("; ".join(problems))
        try:
            self.db = open_configured(config)  # PostgreSQL: refuses an older schema (SchemaOutdated)
        except BaseException:
            roles.release(self._locks)  # a node that did not start holds no data folder
            raise
        self.audit = Audit(config)
        storage = config.storage
        self.spool = Spool(
            config.spool_dir,
            self.db,
            storage.min_free_mb * 2**20,
            ScanLimits(
                max_depth=storage.max_sequence_depth,
                max_inflated_bytes=storage.max_inflated_mb * 2**20,
                max_inflation_ratio=storage.max_inflation_ratio,
            ),
        )
        self.assembly = Assembly(self.db, config.assembly)
        self.jobs = JobQueue(self.db, config.jobs)
        self.outbox = Outbox(config.outbox_dir, self.db, config.dispatch.retry)
        self.metrics = Metrics(
            self.db, [d.name for d in config.destinations], data_dir, config.storage.min_free_mb * 2**20
        )
        self.outbox.on_attempt = self.metrics.delivery
        self.outcomes = JobOutcomes(self.db)
        self.search = StudySearch(self.db, data_dir)
        self.dispatcher = Dispatcher(config, self.outbox, owner=f"{self.instance_id}-d")
        self.dispatcher.audit = self.audit
        self.ingest = DimseIngest(
            config.node,
            self.spool,
            self.db,
            on_released=self._on_released,
            on_stored=lambda: self.metrics.instance_received("dimse"),
            on_unchanged=self._on_unchanged,
            audit=self.audit,
        )
        self.stow = StowIngest(
            self.spool,
            self.db,
            on_released=self._on_released,
            on_stored=lambda: self.metrics.instance_received("stow"),
            on_unchanged=self._on_unchanged,
            audit=self.audit,
        )
        self.pulls = Puller(config, self.spool, self.db, self.assembly, on_retrieved=self._assembly_wake_set)
        self.worker = Worker(
            config, self.db, self.jobs, self.outbox, self.outcomes, self.metrics, on_staged=self._on_staged
        )
        self.web: WebServer | None = None
        if config.web.enabled and "web" in self.roles:
            queries = Queries(config, self.db, self.outcomes, self.search, self.metrics.exposition)
            self.web = WebServer(config, queries, self, self.audit)
        self._stop = threading.Event()
        self._assembly_wake = threading.Event()
        self._work_wake = threading.Event()
        self._dispatch_wake = {d.name: threading.Event() for d in config.destinations}
        self._threads: list[threading.Thread] = []
        self.warmed = self.worker.warmed
        self.warm_results = self.worker.warm_results

    # -- start-up recovery -------------------------------------------------------------------

    def recover(self) -> None:
        """Take up what a stopped process left: with SQLite (this process owns the data folder)
        everything at once. With PostgreSQL, what processes of this host that are gone left (their
        jobs, claims and temporary files: node.owners), and files old enough to be nobody's work
        in progress; another host's jobs are taken over when their leases lapse."""
        now = time.time()
        grace = SHARED_GRACE_S if self.shared else 0.0
        worker = "worker" in self.roles
        indexed = self.spool.reconcile(now, grace) if "listener" in self.roles else 0
        if worker:
            requeued = self.jobs.recover_gone(now, owners.gone) if self.shared else self.jobs.recover(now)
        else:
            requeued = 0
        if "dispatcher" in self.roles:
            if self.shared:
                self.outbox.release_gone(owners.gone)
            self.outbox.remove_delivered_files()
        orphans = self.outbox.remove_orphans(now, grace) if worker else 0
        pending = studies.count_pending(self.db)
        undelivered = outbox.count_pending(self.db)
        event(
            log,
            logging.INFO,
            "recovered state",
            files_indexed=indexed,
            jobs_requeued=requeued,
            orphan_results_removed=orphans,
            studies_pending=pending,
            results_undelivered=undelivered,
        )

    # -- one step of each stage ---------------------------------------------------------------

    def assemble_once(self, now: float | None = None) -> int:
        """Complete due studies, route them and queue their jobs. Returns studies completed."""
        now = time.time() if now is None else now
        completed = self.assembly.run_once(now)
        for study in completed:
            matches = route_study(study, self.config.routes)
            for match in matches:
                self.jobs.enqueue(study, match, now)
            status = "routed: " + ", ".join(m.route for m in matches) if matches else "no route matched"
            studies.set_route_status(self.db, study.study_instance_uid, status)
            self.metrics.study_completed(study.study_instance_uid, now)
            self._remember_for_search(study.study_instance_uid)
            event(
                log,
                logging.INFO,
                "study complete",
                study_uid=study.study_instance_uid,
                revision=study.revision,
                series=len(study.series),
                instances=sum(s.instance_count for s in study.series),
                routing=status,
            )
        if completed:
            self._work_wake.set()
        return len(completed)

    def _remember_for_search(self, study_uid: str) -> None:
        path = instances.any_path(self.db, study_uid)
        if path is not None:
            self.search.remember(study_uid, path)

    def work_once(self, owner: str, now: float | None = None) -> bool:
        """Claim and run one job (node.worker). Returns False when no job was due."""
        return self.worker.work_once(owner, now)

    def _on_staged(self, job: Job) -> None:
        for name in job.destinations:
            if name in self._dispatch_wake:
                self._dispatch_wake[name].set()

    # -- what the HTTP side may ask (node.web.commands.Commands) ---------------------------------

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
        event(
            log,
            logging.INFO,
            "analysis requested",
            study_uid=study_uid,
            requested_by=requested_by,
            instances=request.instances,
            queued=request.queued,
            outcome=request.message,
        )
        self._assembly_wake.set()
        return request

    def request_pull(self, study_uid: str, peer: str, requested_by: str) -> tuple[Pull, bool]:
        """Operator action: retrieve a study from a peer, then analyse it (raises PullError)."""
        return self.pulls.request(study_uid, peer, requested_by)

    def begin_stow(
        self, principal: str, address: tuple[str, int], boundary: bytes, study_uid: str | None
    ) -> StoreTransaction:
        return self.stow.begin(principal, address, boundary, study_uid)

    # -- callbacks of the stages -------------------------------------------------------------------

    def _on_unchanged(self, study_uids: set[str]) -> None:
        """An association or STOW-RS request carried only instances the node already held, byte for
        byte: nothing is analysed again (the spool is idempotent); say so, and how to ask."""
        for uid in sorted(study_uids):
            latest = jobs.latest_of_study(self.db, uid)
            event(
                log,
                logging.INFO,
                "study resent unchanged: the current result stands",
                study_uid=uid,
                latest_job=latest.job.id if latest else None,
                latest_state=latest.state if latest else None,
                to_analyse_again=f"fracnode analyze-again {uid}, or POST /api/v1/studies/{uid}/analyze",
            )

    def dispatch_once(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return sum(self.dispatcher.run_once(d.name, now) for d in self.config.destinations)

    def clean_once(self, now: float | None = None) -> int:
        """Retention: delete spooled studies whose work ended `retention_days` ago."""
        return purge_expired(
            self.config, self.db, time.time() if now is None else now, on_purged=self.audit.study_deleted
        )

    def janitor_once(self, now: float | None = None) -> None:
        """The periodic clean-up of this process's roles: retention (listener) and, where processes
        share the data folder, what a dead process left (its spool and outbox files)."""
        now = time.time() if now is None else now
        if "listener" in self.roles:
            self.clean_once(now)
            if self.shared:
                self.spool.reconcile(now, SHARED_GRACE_S)
        if "worker" in self.roles and self.shared:
            self.outbox.remove_orphans(now, SHARED_GRACE_S)
        if "dispatcher" in self.roles:
            self.outbox.remove_delivered_files()

    # -- threads ------------------------------------------------------------------------------

    def _assembly_wake_set(self) -> None:
        self._assembly_wake.set()

    def _on_released(self, study_uids: set[str]) -> None:
        self.assembly.mark_released(study_uids)
        self._assembly_wake.set()

    def _loop(self, name: str, step, wake: threading.Event | None, tick: float) -> None:  # type: ignore[no-untyped-def]
        unavailable = False  # a database outage is logged when it begins and ends, not at every tick
        while not self._stop.is_set():
            try:
                busy = step()
            except DatabaseUnavailable as exc:
                if not unavailable:
                    event(log, logging.WARNING, "database unavailable; retrying", stage=name, reason=str(exc))
                unavailable, busy = True, False
            except Exception:
                log.exception("stage step failed", extra={"fields": {"stage": name}})
                busy = False
            else:
                if unavailable:
                    event(log, logging.INFO, "database available again", stage=name)
                    unavailable = False
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
        listener = "listener" in self.roles
        if listener:
            self.ingest.start()
        if self.web is not None:
            try:
                self.web.start()
            except WebBindError:
                if listener:
                    self.ingest.stop()
                raise
            self.pulls.recover()  # after the ingest: a C-MOVE's instances arrive there
        self._start_threads()
        event(
            log,
            logging.INFO,
            "node started",
            instance=self.instance_id,
            roles=str(self.roles),
            ae_title=self.config.node.ae_title,
            port=self.ingest.port if listener else None,
            http_port=self.web.port if self.web else None,
            data_dir=str(self.config.storage.data_dir.resolve()),
            database="postgresql" if self.shared else "sqlite",
            workers=self.config.jobs.workers if "worker" in self.roles else 0,
            routes=len(self.config.routes),
            config=json.dumps({"quiet_period_s": self.config.assembly.quiet_period_s}),
        )

    def _start_threads(self) -> None:
        def spawn(name: str, step, wake: threading.Event | None, tick: float) -> None:  # type: ignore[no-untyped-def]
            thread = threading.Thread(target=self._loop, args=(name, step, wake, tick), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

        if "worker" in self.roles:
            warm = threading.Thread(target=self.worker.warm_up, name="warm-up", daemon=True)
            warm.start()
            self._threads.append(warm)
            for i in range(self.config.jobs.workers):
                owner = f"{self.instance_id}-w{i}"
                spawn(f"worker-{i}", lambda owner=owner: self.work_once(owner), self._work_wake, IDLE_TICK_S)
        else:
            self.warmed.set()  # no model to load in this process
        if "listener" in self.roles:
            spawn("assembly", lambda: self.assemble_once() > 0 and False, self._assembly_wake, ASSEMBLY_TICK_S)
        if "dispatcher" in self.roles:
            for dest in self.config.destinations:
                spawn(
                    f"dispatch-{dest.name}",
                    lambda name=dest.name: self.dispatcher.run_once(name, time.time()) > 0,
                    self._dispatch_wake[dest.name],
                    IDLE_TICK_S,
                )
        spawn("janitor", self._janitor_step, None, JANITOR_TICK_S)

    def _janitor_step(self) -> bool:
        self.janitor_once()
        return False  # never busy: the janitor runs every JANITOR_TICK_S

    def stop(self) -> None:
        self._stop.set()
        for wake in (self._assembly_wake, self._work_wake, *self._dispatch_wake.values()):
            wake.set()
        if "listener" in self.roles:
            self.ingest.stop()
        if self.web is not None:
            self.web.stop()
        self.pulls.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self._give_back()
        self.audit.stopped()
        self.db.close()
        roles.release(self._locks)
        event(log, logging.INFO, "node stopped", instance=self.instance_id)

    def _give_back(self) -> None:
        """Jobs and deliveries this process still holds go back to the queue, so that another
        process takes them now rather than when their leases lapse (a job still running in a
        thread that did not end in time records nothing: its lease is gone)."""
        try:
            jobs_back = self.jobs.release(self.instance_id, time.time()) if "worker" in self.roles else 0
            sends_back = self.outbox.release(self.instance_id) if "dispatcher" in self.roles else 0
        except DatabaseUnavailable as exc:
            event(log, logging.WARNING, "cannot give back leases; they lapse by themselves", reason=str(exc))
            return
        if jobs_back or sends_back:
            event(log, logging.INFO, "leases given back", jobs=jobs_back, deliveries=sends_back)

    def wait(self) -> None:
        self._stop.wait()
