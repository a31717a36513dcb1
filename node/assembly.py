"""Study assembly: decide when a study is complete and snapshot it as a `Study` record.

A study is complete after `quiet_period_s` without a new instance, or, with
`complete_on_release`, as soon as an association that carried it is released, or, whatever
`complete_on_release` says, as soon as a pull (node.pull) has retrieved it. Instances that
arrive later set the study pending again; the next completion is a new revision that
supersedes the earlier analysis.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from node.config import AssemblySettings
from node.db import Database
from node.records import SeriesAttributes, Study

# studies.release_ready: 0 wait for the quiet period; RELEASED an association that carried it
# ended (counts with complete_on_release); RETRIEVED a pull finished (counts always)
RELEASED, RETRIEVED = 1, 2


def is_complete(
    last_received_at: float, now: float, quiet_period_s: float, release_ready: bool
) -> bool:
    """Pure completion rule, table-tested in tests/unit/test_assembly.py."""
    return release_ready or now - last_received_at >= quiet_period_s


def summarize_series(rows: Iterable[sqlite3.Row | dict]) -> tuple[SeriesAttributes, ...]:
    """Fold instance rows into one SeriesAttributes per series, in a stable order."""
    grouped: dict[str, dict] = {}
    for row in rows:
        entry = grouped.setdefault(
            row["series_uid"],
            {"first": row, "sop_classes": [], "image_types": [], "count": 0},
        )
        entry["count"] += 1
        if row["sop_class_uid"] not in entry["sop_classes"]:
            entry["sop_classes"].append(row["sop_class_uid"])
        if row["image_type"] and row["image_type"] not in entry["image_types"]:
            entry["image_types"].append(row["image_type"])
    return tuple(
        SeriesAttributes(
            series_instance_uid=uid,
            modality=entry["first"]["modality"],
            body_part_examined=entry["first"]["body_part"],
            series_description=entry["first"]["series_description"],
            protocol_name=entry["first"]["protocol_name"],
            sop_class_uids=tuple(entry["sop_classes"]),
            image_types=tuple(entry["image_types"]),
            instance_count=entry["count"],
        )
        for uid, entry in sorted(grouped.items())
    )


class Assembly:
    def __init__(self, db: Database, settings: AssemblySettings) -> None:
        self.db = db
        self.settings = settings

    def mark_released(self, study_uids: set[str]) -> None:
        """An association that carried these studies was released."""
        if not self.settings.complete_on_release or not study_uids:
            return
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE studies SET release_ready = 1 WHERE study_uid = ? AND pending = 1",
                [(uid,) for uid in study_uids],
            )

    def mark_retrieved(self, study_uid: str, source: str) -> bool:
        """A pull retrieved this study: complete it at the next step as a new revision, even when
        every instance was already here (someone asked for the analysis), with `source` as the
        calling AE routing sees. False when no instance of the study is in the spool."""
        changed = self.db.execute(
            "UPDATE studies SET pending = 1, release_ready = ?, calling_ae = ? WHERE study_uid = ?",
            (RETRIEVED, source, study_uid),
        )
        return changed > 0

    def _released(self, release_ready: int) -> bool:
        # a release flag left by an earlier run counts only while complete_on_release is set
        if self.settings.complete_on_release:
            return bool(release_ready)
        return release_ready == RETRIEVED

    def run_once(self, now: float) -> list[Study]:
        """Complete every study whose rule holds now; return their snapshots."""
        completed: list[Study] = []
        candidates = self.db.query(
            "SELECT study_uid, last_received_at, release_ready FROM studies WHERE pending = 1"
        )
        for row in candidates:
            if not is_complete(
                row["last_received_at"], now, self.settings.quiet_period_s,
                self._released(row["release_ready"]),
            ):
                continue
            with self.db.transaction() as conn:
                # re-check inside the transaction: an instance may have arrived meanwhile
                current = conn.execute(
                    "SELECT last_received_at, release_ready, pending, revision, calling_ae"
                    " FROM studies WHERE study_uid = ?",
                    (row["study_uid"],),
                ).fetchone()
                if not current["pending"] or not is_complete(
                    current["last_received_at"], now, self.settings.quiet_period_s,
                    self._released(current["release_ready"]),
                ):
                    continue
                revision = current["revision"] + 1
                conn.execute(
                    """UPDATE studies SET pending = 0, release_ready = 0, revision = ?,
                    completed_at = ? WHERE study_uid = ?""",
                    (revision, now, row["study_uid"]),
                )
                instances = conn.execute(
                    """SELECT series_uid, sop_class_uid, modality, body_part, series_description,
                    protocol_name, image_type FROM instances WHERE study_uid = ?""",
                    (row["study_uid"],),
                ).fetchall()
            completed.append(
                Study(row["study_uid"], revision, current["calling_ae"], summarize_series(instances))
            )
        return completed


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
    with db.transaction() as conn:
        study = conn.execute(
            "SELECT pending, release_ready FROM studies WHERE study_uid = ?", (study_uid,)
        ).fetchone()
        instances = conn.execute(
            "SELECT COUNT(*) FROM instances WHERE study_uid = ?", (study_uid,)
        ).fetchone()[0]
        if study is None:
            raise StudyNotHeld(f"no study {study_uid} in the node's index", purged=False)
        if not instances:
            raise StudyNotHeld(
                f"the spooled copy of study {study_uid} was removed (storage.retention_days);"
                " send the study again, or pull it from a peer",
                purged=True,
            )
        if study["pending"]:
            already = study["release_ready"] == RETRIEVED
            return AnalysisRequest(study_uid, False, instances, (
                "an analysis of this study is already requested; it starts at the next step"
                if already else
                "the study is still being received; it is analysed once complete"
            ))
        conn.execute(
            "UPDATE studies SET pending = 1, release_ready = ? WHERE study_uid = ?",
            (RETRIEVED, study_uid),
        )
    return AnalysisRequest(study_uid, True, instances, (
        f"study queued for a new analysis of its {instances} spooled instance(s); the new"
        " revision's results supersede the current ones"
    ))
