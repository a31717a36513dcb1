"""Study assembly: decide when a study is complete and snapshot it as a `Study` record.

A study is complete after `quiet_period_s` without a new instance, or, with
`complete_on_release`, as soon as an association that carried it is released, or, whatever
`complete_on_release` says, as soon as a pull (node.pull) has retrieved it. Instances that
arrive later set the study pending again; the next completion is a new revision that
supersedes the earlier analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.config import AssemblySettings
from node.records import Study, summarize_series
from node.store import Database, instances, studies
from node.store.studies import RELEASED, RETRIEVED

__all__ = [
    "RELEASED", "RETRIEVED", "AnalysisRequest", "Assembly", "StudyNotHeld", "is_complete",
    "request_analysis", "summarize_series",
]


def is_complete(
    last_received_at: float, now: float, quiet_period_s: float, release_ready: bool
) -> bool:
    """Pure completion rule, table-tested in tests/unit/test_assembly.py."""
    return release_ready or now - last_received_at >= quiet_period_s


class Assembly:
    def __init__(self, db: Database, settings: AssemblySettings) -> None:
        self.db = db
        self.settings = settings

    def mark_released(self, study_uids: set[str]) -> None:
        """An association that carried these studies was released."""
        if not self.settings.complete_on_release or not study_uids:
            return
        with self.db.transaction() as sql:
            studies.mark_released(sql, study_uids)

    def mark_retrieved(self, study_uid: str, source: str) -> bool:
        """A pull retrieved this study: complete it at the next step as a new revision, even when
        every instance was already here (someone asked for the analysis), with `source` as the
        calling AE routing sees. False when no instance of the study is in the spool."""
        return studies.mark_retrieved(self.db, study_uid, source)

    def _released(self, release_ready: int) -> bool:
        # a release flag left by an earlier run counts only while complete_on_release is set
        if self.settings.complete_on_release:
            return bool(release_ready)
        return release_ready == RETRIEVED

    def run_once(self, now: float) -> list[Study]:
        """Complete every study whose rule holds now; return their snapshots."""
        completed: list[Study] = []
        for candidate in studies.pending(self.db):
            if not self._due(candidate, now):
                continue
            with self.db.transaction() as sql:
                # re-check inside the transaction: an instance may have arrived meanwhile
                current = studies.completion(sql, candidate.study_uid)
                if current is None or not current.pending or not self._due(current, now):
                    continue
                revision = current.revision + 1
                studies.complete(sql, current.study_uid, revision, now)
                series = instances.series_of(sql, current.study_uid)
            completed.append(Study(current.study_uid, revision, current.calling_ae, series))
        return completed

    def _due(self, study: studies.Completion, now: float) -> bool:
        return is_complete(study.last_received_at, now, self.settings.quiet_period_s,
                           self._released(study.release_ready))


@dataclass(frozen=True)
class AnalysisRequest:
    """What became of an operator's request to analyse a held study again (`request_analysis`)."""

    study_uid: str
    queued: bool  # False: the study is still being received (or already queued): one run follows
    instances: int
    message: str


class StudyNotHeld(LookupError):
    """The study is not in the index, or its spooled instances were purged (`purged`)."""

    def __init__(self, message: str, purged: bool) -> None:
        super().__init__(message)
        self.purged = purged


def request_analysis(db: Database, study_uid: str) -> AnalysisRequest:
    """Complete a held study again as a new revision, so routing runs it anew on the spooled copy.

    An identical resend changes nothing (the spool is idempotent), so this is how an operator asks
    for a new analysis of an unchanged study. The request uses the pull's flag (RETRIEVED): the
    study completes at the next assembly step whatever `complete_on_release` says, and instances
    arriving meanwhile make it wait for its quiet period as usual. Raises StudyNotHeld.
    """
    with db.transaction() as sql:
        study = studies.completion(sql, study_uid)
        held = instances.count(sql, study_uid)
        if study is None:
            raise StudyNotHeld(f"no study {study_uid} in the node's index", purged=False)
        if not held:
            raise StudyNotHeld(
                f"the spooled copy of study {study_uid} was removed (storage.retention_days);"
                " send the study again, or pull it from a peer",
                purged=True,
            )
        if study.pending:
            already = study.release_ready == RETRIEVED
            return AnalysisRequest(study_uid, False, held, (
                "an analysis of this study is already requested; it starts at the next step"
                if already else
                "the study is still being received; it is analysed once complete"
            ))
        studies.request_analysis(sql, study_uid)
    return AnalysisRequest(study_uid, True, held, (
        f"study queued for a new analysis of its {held} spooled instance(s); the new"
        " revision's results supersede the current ones"
    ))
