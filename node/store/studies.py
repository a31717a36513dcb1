"""The `studies` table: one row per study received, its completion state and revision.

`pending` is 1 while instances may still come; `release_ready` says why a pending study may
complete before its quiet period (node.assembly): RELEASED, an association that carried it ended;
RETRIEVED, a pull retrieved it or an operator asked for a new analysis.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from node.store.sql import Row, Sql

RELEASED, RETRIEVED = 1, 2


@dataclass(frozen=True)
class Completion:
    """What decides whether a pending study is complete (node.assembly.is_complete)."""

    study_uid: str
    last_received_at: float
    release_ready: int
    pending: bool
    revision: int
    calling_ae: str


@dataclass(frozen=True)
class StudyRow:
    """A study as the API and `fracnode status` list it, with what its instances add up to."""

    study_uid: str
    calling_ae: str
    first_received_at: float
    last_received_at: float
    pending: bool
    revision: int
    completed_at: float | None
    route_status: str
    instances: int
    series: int
    modalities: tuple[str, ...]


def received(sql: Sql, study_uid: str, calling_ae: str, now: float) -> None:
    """An instance of the study was indexed: the study is pending (again) and waits its quiet period."""
    sql.execute(
        """INSERT INTO studies (study_uid, calling_ae, first_received_at, last_received_at,
        pending) VALUES (?, ?, ?, ?, 1)
        ON CONFLICT (study_uid) DO UPDATE SET last_received_at = excluded.last_received_at,
        calling_ae = COALESCE(NULLIF(excluded.calling_ae, ''), studies.calling_ae), pending = 1,
        release_ready = 0""",
        (study_uid, calling_ae, now, now),
    )


def mark_released(sql: Sql, study_uids: Collection[str]) -> None:
    sql.execute_many(
        "UPDATE studies SET release_ready = ? WHERE study_uid = ? AND pending = 1",
        [(RELEASED, uid) for uid in study_uids],
    )


def mark_retrieved(sql: Sql, study_uid: str, calling_ae: str) -> bool:
    """Complete the study at the next assembly step, routed as from `calling_ae`; False when the
    index has no such study."""
    changed = sql.execute(
        "UPDATE studies SET pending = 1, release_ready = ?, calling_ae = ? WHERE study_uid = ?",
        (RETRIEVED, calling_ae, study_uid),
    )
    return changed > 0


def request_analysis(sql: Sql, study_uid: str) -> None:
    sql.execute("UPDATE studies SET pending = 1, release_ready = ? WHERE study_uid = ?", (RETRIEVED, study_uid))


def _completion(r: Row) -> Completion:
    return Completion(r["study_uid"], r["last_received_at"], r["release_ready"], bool(r["pending"]),
                      r["revision"], r["calling_ae"])


COMPLETION = "study_uid, last_received_at, release_ready, pending, revision, calling_ae"


def pending(sql: Sql) -> list[Completion]:
    return [_completion(r) for r in sql.query(f"SELECT {COMPLETION} FROM studies WHERE pending = 1")]


def completion(sql: Sql, study_uid: str) -> Completion | None:
    """The study's completion state, its row locked until the caller's transaction ends (PostgreSQL;
    SQLite's transaction holds the whole database), so that one assembler at a time decides."""
    row = sql.one(f"SELECT {COMPLETION} FROM studies WHERE study_uid = ?{sql.dialect.row_lock}", (study_uid,))
    return _completion(row) if row is not None else None


def complete(sql: Sql, study_uid: str, revision: int, now: float) -> None:
    sql.execute(
        "UPDATE studies SET pending = 0, release_ready = 0, revision = ?, completed_at = ? WHERE study_uid = ?",
        (revision, now, study_uid),
    )


def set_route_status(sql: Sql, study_uid: str, status: str) -> None:
    sql.execute("UPDATE studies SET route_status = ? WHERE study_uid = ?", (status, study_uid))


def mark_purged(sql: Sql, study_uid: str) -> None:
    sql.execute(
        "UPDATE studies SET route_status = route_status || ' (spool purged)' WHERE study_uid = ?", (study_uid,)
    )


def count_pending(sql: Sql) -> int:
    row = sql.one("SELECT COUNT(*) AS n FROM studies WHERE pending = 1")
    return int(row["n"]) if row is not None else 0


def first_received_at(sql: Sql, study_uid: str) -> float | None:
    row = sql.one("SELECT first_received_at FROM studies WHERE study_uid = ?", (study_uid,))
    return row["first_received_at"] if row is not None else None


def purgeable(sql: Sql, cutoff: float, final_states: Sequence[str], delivered: str) -> list[str]:
    """Complete studies last received before `cutoff` whose every job ended before it (in one of
    `final_states`) and whose every result is `delivered`, and which still hold instances or
    results (a study purged once is not purged again)."""
    rows = sql.query(
        f"""SELECT s.study_uid FROM studies s WHERE s.pending = 0 AND s.last_received_at < ?
        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid
            AND (j.state NOT IN ({sql.dialect.params(len(final_states))}) OR j.finished_at >= ?))
        AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid
            AND o.state != ?)
        AND (EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid)
            OR EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid))""",
        (cutoff, *final_states, cutoff, delivered),
    )
    return [row["study_uid"] for row in rows]


def _listed(sql: Sql) -> str:
    return f"""SELECT s.*, COUNT(i.sop_instance_uid) AS instances,
    COUNT(DISTINCT i.series_uid) AS series_count,
    {sql.dialect.concat_distinct("NULLIF(i.modality, '')")} AS modalities
    FROM studies s LEFT JOIN instances i ON i.study_uid = s.study_uid"""


def _study(r: Row) -> StudyRow:
    modalities = r["modalities"]
    return StudyRow(
        r["study_uid"], r["calling_ae"], r["first_received_at"], r["last_received_at"],
        bool(r["pending"]), r["revision"], r["completed_at"], r["route_status"], r["instances"],
        r["series_count"], tuple(sorted(modalities.split(","))) if modalities else (),
    )


def listed(sql: Sql, limit: int, since: float = 0.0, uids: Sequence[str] | None = None) -> list[StudyRow]:
    """Most recently received first; `uids` limits to those studies."""
    where = "s.last_received_at >= ?"
    params: list[object] = [since]
    if uids is not None:
        if not uids:
            return []
        where += f" AND s.study_uid IN ({sql.dialect.params(len(uids))})"
        params += list(uids)
    rows = sql.query(
        f"""{_listed(sql)} WHERE {where} GROUP BY s.study_uid ORDER BY s.last_received_at DESC LIMIT ?""",
        (*params, limit),
    )
    return [_study(r) for r in rows]


def get(sql: Sql, study_uid: str) -> StudyRow | None:
    row = sql.one(f"{_listed(sql)} WHERE s.study_uid = ? GROUP BY s.study_uid", (study_uid,))
    return _study(row) if row is not None else None
