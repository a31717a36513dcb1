"""Delivery of outbox items to their destinations: folder, DIMSE or DICOMweb peer, or the sender."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

from node.audit import Audit
from node.config import (
    Config,
    DicomwebDestination,
    DicomwebPeer,
    DimseDestination,
    DimsePeer,
    FolderDestination,
    SenderDestination,
)
from node.dispatch import folder
from node.dispatch.dicomweb import StowFailed, StowItem, stow
from node.dispatch.dimse import AssociationFailed, Target, store
from node.dispatch.outbox import DELIVERED, Outbox, OutboxItem
from node.files import OutOfSpace, write_atomically
from node.logs import event

log = logging.getLogger("fracnode.dispatch")


class Dispatcher:
    def __init__(self, config: Config, outbox: Outbox, owner: str = "dispatcher") -> None:
        self.config = config
        self.outbox = outbox
        self.owner = owner  # the lease owner of the outbox rows this dispatcher claims
        self.audit: Audit | None = None  # results sent are audited (DICOM Instances Transferred)

    def run_once(self, destination: str, now: float) -> int:
        """Claim and try every due item of one destination once; return how many were delivered."""
        settings = self.config.dispatch
        items = self.outbox.claim(destination, now, settings.batch_size, self.owner, settings.lease_s)
        if not items:
            return 0
        delivered = self._deliver(destination, items, now)
        if self.audit is not None:
            states = self.outbox.states([item.id for item in items])
            sent = Counter(item.study_uid for item in items if states.get(item.id) == DELIVERED)
            dest = self.config.destination(destination)
            target = str(getattr(dest, "path", "") or getattr(dest, "peer", "") or "the sending peer")
            self.audit.delivered(destination, target, sent, len(items) - sum(sent.values()))
        return delivered

    def _deliver(self, destination: str, items: list[OutboxItem], now: float) -> int:
        dest = self.config.destination(destination)
        if isinstance(dest, FolderDestination):
            return self._to_folder(dest, items, now)
        if isinstance(dest, DimseDestination | DicomwebDestination):
            return self._to(self.config.peer(dest.peer), items, now)
        assert isinstance(dest, SenderDestination)
        delivered = 0
        by_sender: dict[str, list[OutboxItem]] = defaultdict(list)
        for item in items:
            by_sender[item.calling_ae].append(item)
        for calling_ae, group in by_sender.items():
            sender = self.config.peer_by_ae_title(calling_ae)
            if sender is None:
                reason = (
                    f"destination {destination!r} replies to the sender, but the study came from AE"
                    f" title {calling_ae!r}, which is not under peers: in the configuration"
                )
                for item in group:
                    self.outbox.give_up(item, reason, now)
                event(
                    log,
                    logging.ERROR,
                    "cannot reply to sender",
                    destination=destination,
                    calling_ae=calling_ae,
                    items=len(group),
                    reason=reason,
                )
                continue
            delivered += self._to(sender, group, now)
        return delivered

    def _to(self, peer: DimsePeer | DicomwebPeer, items: list[OutboxItem], now: float) -> int:
        if isinstance(peer, DicomwebPeer):
            return self._to_dicomweb(peer, items, now)
        return self._to_peer(Target(peer.ae_title, peer.host, peer.port, peer.tls), items, now)

    def _to_folder(self, dest: FolderDestination, items: list[OutboxItem], now: float) -> int:
        """Write each result as <path>/<study>/KIND_SERIES_UID.dcm (node.dispatch.folder); a job
        whose results are all there sets aside the older revisions' results it replaces."""
        delivered = 0
        completed: set[int] = set()
        for item in items:
            try:
                folder.write_readme(dest.path)
                name = folder.file_name(item.path, item.sop_instance_uid, item.sop_class_uid)
                write_atomically(dest.path / item.study_uid / name, item.path.read_bytes())
            except (OSError, OutOfSpace) as exc:
                retry_at = self.outbox.failed_attempt(item, f"folder {dest.path}: {exc}", now)
                event(
                    log,
                    logging.WARNING,
                    "delivery failed",
                    destination=dest.name,
                    sop_instance_uid=item.sop_instance_uid,
                    error=str(exc),
                    retry_in_s=round(retry_at - now, 1),
                )
                continue
            self.outbox.delivered(item, now)
            delivered += 1
            completed.add(item.job_id)
        for job_id in sorted(completed):
            if self.outbox.undelivered(job_id, dest.name) == 0:
                self._set_aside_replaced(dest, job_id, items)
        if delivered:
            event(log, logging.INFO, "results delivered", destination=dest.name, count=delivered)
        return delivered

    def _set_aside_replaced(self, dest: FolderDestination, job_id: int, items: list[OutboxItem]) -> None:
        study = next(item.study_uid for item in items if item.job_id == job_id)
        for (old_job, revision), uids in self.outbox.replaced(job_id, dest.name).items():
            try:
                moved = folder.set_aside(dest.path / study, old_job, revision, uids)
            except OSError as exc:  # the current results are in place: a leftover is cosmetic
                event(
                    log,
                    logging.WARNING,
                    "could not set superseded results aside",
                    destination=dest.name,
                    study_uid=study,
                    job=old_job,
                    error=str(exc),
                )
                continue
            if moved:
                event(
                    log,
                    logging.INFO,
                    "superseded results set aside",
                    destination=dest.name,
                    study_uid=study,
                    job=old_job,
                    revision=revision,
                    files=moved,
                    by_job=job_id,
                )

    def _to_peer(self, target: Target, items: list[OutboxItem], now: float) -> int:
        by_path = {item.path: item for item in items}
        try:
            results = store(target, self.config.node.ae_title, list(by_path))
        except (AssociationFailed, OSError) as exc:
            self._batch_failed(str(target), items, str(exc), True, now)
            return 0
        return self._record(str(target), [(by_path[r.path], r.ok, r.message, True) for r in results], now)

    def _to_dicomweb(self, peer: DicomwebPeer, items: list[OutboxItem], now: float) -> int:
        """STOW-RS (PS3.18 10.5); see node.dispatch.dicomweb for what is retried and what not."""
        by_uid = {item.sop_instance_uid: item for item in items}
        try:
            outcomes = stow(peer, [StowItem(item.path, item.sop_instance_uid) for item in items])
        except StowFailed as exc:
            self._batch_failed(peer.name, items, str(exc), exc.retry, now)
            return 0
        return self._record(
            peer.name, [(by_uid[o.sop_instance_uid], o.delivered, o.message, o.retry) for o in outcomes], now
        )

    def _batch_failed(self, destination: str, items: list[OutboxItem], error: str, retry: bool, now: float) -> None:
        """No item of the batch reached the peer: each is retried later, or given up."""
        retry_at = now
        for item in items:
            if retry:
                retry_at = self.outbox.failed_attempt(item, error, now)
            else:
                self.outbox.give_up(item, error, now)
        event(
            log,
            logging.WARNING,
            "delivery failed",
            destination=destination,
            items=len(items),
            error=error,
            retry_in_s=round(retry_at - now, 1) if retry else None,
        )

    def _record(self, destination: str, answers: list[tuple[OutboxItem, bool, str, bool]], now: float) -> int:
        """The peer's answer per item, (item, delivered, message, retried): record each; the
        number delivered."""
        delivered = 0
        for item, ok, message, retry in answers:
            if ok:
                self.outbox.delivered(item, now)
                delivered += 1
                continue
            if retry:
                self.outbox.failed_attempt(item, message, now)
            else:
                self.outbox.give_up(item, message, now)
            event(
                log,
                logging.WARNING,
                "delivery refused",
                destination=destination,
                sop_instance_uid=item.sop_instance_uid,
                error=message,
                retried=retry,
            )
        if delivered:
            event(log, logging.INFO, "results delivered", destination=destination, count=delivered)
        return delivered
