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
from node.logs import event
from node.spool import OutOfSpace, write_atomically

log = logging.getLogger("fracnode.dispatch")


class Dispatcher:
    def __init__(self, config: Config, outbox: Outbox) -> None:
        self.config = config
        self.outbox = outbox
        self.audit: Audit | None = None  # results sent are audited (DICOM Instances Transferred)

    def run_once(self, destination: str, now: float) -> int:
        """Try every due item of one destination once; return how many were delivered."""
        items = self.outbox.due(destination, now, self.config.dispatch.batch_size)
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
                event(log, logging.ERROR, "cannot reply to sender", destination=destination,
                      calling_ae=calling_ae, items=len(group), reason=reason)
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
                event(log, logging.WARNING, "delivery failed", destination=dest.name,
                      sop_instance_uid=item.sop_instance_uid, error=str(exc), retry_in_s=round(retry_at - now, 1))
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
                event(log, logging.WARNING, "could not set superseded results aside", destination=dest.name,
                      study_uid=study, job=old_job, error=str(exc))
                continue
            if moved:
                event(log, logging.INFO, "superseded results set aside", destination=dest.name,
                      study_uid=study, job=old_job, revision=revision, files=moved, by_job=job_id)

    def _to_peer(self, target: Target, items: list[OutboxItem], now: float) -> int:
        by_path = {item.path: item for item in items}
        try:
            results = store(target, self.config.node.ae_title, list(by_path))
        except (AssociationFailed, OSError) as exc:
            retry_at = now
            for item in items:
                retry_at = self.outbox.failed_attempt(item, str(exc), now)
            event(log, logging.WARNING, "delivery failed", destination=str(target), items=len(items),
                  error=str(exc), retry_in_s=round(retry_at - now, 1))
            return 0
        delivered = 0
        for result in results:
            item = by_path[result.path]
            if result.ok:
                self.outbox.delivered(item, now)
                delivered += 1
            else:
                self.outbox.failed_attempt(item, result.message, now)
                event(log, logging.WARNING, "delivery refused", destination=str(target),
                      sop_instance_uid=item.sop_instance_uid, error=result.message)
        if delivered:
            event(log, logging.INFO, "results delivered", destination=str(target), count=delivered)
        return delivered

    def _to_dicomweb(self, peer: DicomwebPeer, items: list[OutboxItem], now: float) -> int:
        """STOW-RS (PS3.18 10.5); see node.dispatch.dicomweb for what is retried and what not."""
        by_uid = {item.sop_instance_uid: item for item in items}
        try:
            outcomes = stow(peer, [StowItem(item.path, item.sop_instance_uid) for item in items])
        except StowFailed as exc:
            retry_at = now
            for item in items:
                if exc.retry:
                    retry_at = self.outbox.failed_attempt(item, str(exc), now)
                else:
                    self.outbox.give_up(item, str(exc), now)
            event(log, logging.WARNING, "delivery failed", destination=peer.name, items=len(items),
                  error=str(exc), retry_in_s=round(retry_at - now, 1) if exc.retry else None)
            return 0
        delivered = 0
        for outcome in outcomes:
            item = by_uid[outcome.sop_instance_uid]
            if outcome.delivered:
                self.outbox.delivered(item, now)
                delivered += 1
                continue
            if outcome.retry:
                self.outbox.failed_attempt(item, outcome.message, now)
            else:
                self.outbox.give_up(item, outcome.message, now)
            event(log, logging.WARNING, "delivery refused", destination=peer.name,
                  sop_instance_uid=item.sop_instance_uid, error=outcome.message, retried=outcome.retry)
        if delivered:
            event(log, logging.INFO, "results delivered", destination=peer.name, count=delivered)
        return delivered
