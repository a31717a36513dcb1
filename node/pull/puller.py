"""Pulls in the running node: asked for by the API, run in background threads, kept in `pulls`.

`request()` checks the peer and the study at once (QIDO-RS or C-FIND: an unknown study or an
unreachable peer is answered while the caller waits), then queues the retrieval and returns.
A pull still queued or running when the node stops is run again at the next start; instances
already retrieved are then skipped as duplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from node.assembly import Assembly
from node.config import Config, DicomwebPeer, DimsePeer
from node.logs import event
from node.pull import Found, PullError, Retrieved, StudyNotFound, UnknownPeer, dimse, wado
from node.redact import error_text
from node.spool import Spool
from node.store import Database, pulls
from node.store.pulls import DONE, FAILED, QUEUED, RUNNING, Pull

log = logging.getLogger("fracnode.pull")
__all__ = [
    "DONE", "FAILED", "QUEUED", "RUNNING", "Pull", "Puller", "find", "known_peer", "method_of", "source_of",
]
PROGRESS_INTERVAL_S = 0.5
WORKERS = 2  # pulls that run at once; more wait in the queue


def method_of(peer: DimsePeer | DicomwebPeer) -> str:
    return "wado-rs" if isinstance(peer, DicomwebPeer) else peer.retrieve


def source_of(peer: DimsePeer | DicomwebPeer) -> str:
    """The calling AE a pulled study is routed with: the peer's AE title (or its name)."""
    return peer.label if isinstance(peer, DicomwebPeer) else peer.ae_title


def find(config: Config, peer: DimsePeer | DicomwebPeer, study_uid: str) -> Found:
    """Ask the peer about the study; StudyNotFound or PeerUnreachable when it cannot be had."""
    if isinstance(peer, DicomwebPeer):
        return wado.find_study(peer, study_uid)
    return dimse.find_study(peer, config.node.ae_title, study_uid, config.node.network_timeout_s)


def known_peer(config: Config, name: str) -> DimsePeer | DicomwebPeer:
    try:
        return config.peer(name)
    except KeyError:
        known = ", ".join(p.name for p in config.peers) or "none configured"
        raise UnknownPeer(f"unknown peer {name!r} (known: {known})") from None


class Puller:
    def __init__(self, config: Config, spool: Spool, db: Database, assembly: Assembly,
                 on_retrieved: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.spool = spool
        self.db = db
        self.assembly = assembly
        self.on_retrieved = on_retrieved
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="pull")
        self._lock = threading.Lock()

    # -- asked for ------------------------------------------------------------------------------

    def request(self, study_uid: str, peer_name: str, requested_by: str = "") -> tuple[Pull, bool]:
        """Queue a pull; (pull, created). An unfinished pull of the same study from the same peer
        is returned instead of a second one. Raises UnknownPeer, StudyNotFound, PeerUnreachable."""
        peer = known_peer(self.config, peer_name)
        existing = self._unfinished(study_uid, peer.name)
        if existing is not None:
            return existing, False
        found = find(self.config, peer, study_uid)
        with self._lock:
            existing = self._unfinished(study_uid, peer.name)
            if existing is not None:
                return existing, False
            pull_id = pulls.insert(self.db, study_uid, peer.name, method_of(peer), found.instances, requested_by,
                                   time.time())
        event(log, logging.INFO, "pull queued", pull=pull_id, study_uid=study_uid, peer=peer.name,
              method=method_of(peer), expected=found.instances, requested_by=requested_by)
        self._executor.submit(self._run, pull_id, found)
        pull = self.get(pull_id)
        assert pull is not None
        return pull, True

    def get(self, pull_id: int) -> Pull | None:
        return pulls.get(self.db, pull_id)

    def recent(self, limit: int = 50) -> list[Pull]:
        return pulls.recent(self.db, limit)

    def _unfinished(self, study_uid: str, peer: str) -> Pull | None:
        return pulls.unfinished(self.db, study_uid, peer)

    # -- run ------------------------------------------------------------------------------------

    def recover(self) -> int:
        """Queue again the pulls a stopped node left unfinished."""
        ids = pulls.unfinished_ids(self.db)
        for pull_id in ids:
            self._executor.submit(self._run, pull_id, None)
        return len(ids)

    def _run(self, pull_id: int, found: Found | None) -> None:
        pull = self.get(pull_id)
        if pull is None or self._stopping.is_set():
            return
        pulls.started(self.db, pull_id, time.time())
        started = time.monotonic()
        try:
            peer = known_peer(self.config, pull.peer)
            source = source_of(peer)
            retrieved = self._retrieve(pull, peer, source, found)
            if not self.assembly.mark_retrieved(pull.study_uid, source):
                raise StudyNotFound(f"no instance of study {pull.study_uid} could be kept: {retrieved.summary}")
        except PullError as exc:
            if self._stopping.is_set():
                return  # left running: the next start queues it again
            self._finish(pull_id, FAILED, str(exc))
            event(log, logging.WARNING, "pull failed", pull=pull_id, study_uid=pull.study_uid,
                  peer=pull.peer, error=str(exc))
            return
        except Exception as exc:
            self._finish(pull_id, FAILED, error_text(exc))
            log.exception("pull failed", extra={"fields": {"pull": pull_id, "study_uid": pull.study_uid}})
            return
        self._progress(pull_id, retrieved.received, retrieved.duplicates, retrieved.failed)
        self._finish(pull_id, DONE, "; ".join(retrieved.problems))
        self.on_retrieved()
        event(log, logging.INFO, "pull done", pull=pull_id, study_uid=pull.study_uid, peer=pull.peer,
              method=pull.method, received=retrieved.received, duplicates=retrieved.duplicates,
              failed=retrieved.failed, seconds=round(time.monotonic() - started, 2))

    def _retrieve(self, pull: Pull, peer: DimsePeer | DicomwebPeer, source: str, found: Found | None) -> Retrieved:
        last = [0.0]

        def progress(received: int, duplicates: int, failed: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S:
                last[0] = now
                self._progress(pull.id, received, duplicates, failed)

        cancelled = self._stopping.is_set
        if isinstance(peer, DicomwebPeer):
            return wado.retrieve_study(peer, pull.study_uid, self.spool, self.db, source, progress, cancelled)
        node = self.config.node
        if peer.retrieve == "c-move":
            return dimse.move_study(peer, node.ae_title, node.ae_title, pull.study_uid,
                                    node.network_timeout_s, progress, cancelled)
        found = found or find(self.config, peer, pull.study_uid)
        return dimse.get_study(peer, node.ae_title, pull.study_uid, found.sop_classes, self.spool, source,
                               node.network_timeout_s, progress, cancelled)

    def _progress(self, pull_id: int, received: int, duplicates: int, failed: int) -> None:
        pulls.progress(self.db, pull_id, received, duplicates, failed)

    def _finish(self, pull_id: int, state: str, error: str) -> None:
        pulls.finish(self.db, pull_id, state, error[:2000], time.time())

    def stop(self) -> None:
        """Cancel what runs (it is queued again at the next start) and wait for the threads."""
        self._stopping.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
