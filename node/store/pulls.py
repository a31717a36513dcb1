"""The `pulls` table: studies retrieved from a peer on request (node.pull), with their progress."""

from __future__ import annotations

from dataclasses import dataclass

from node.store.sql import Row, Sql

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class Pull:
    id: int
    study_uid: str
    peer: str
    method: str  # wado-rs, c-get or c-move
    state: str
    expected: int | None
    received: int
    duplicates: int
    failed: int
    error: str
    requested_by: str
    created_at: float
    started_at: float | None
    finished_at: float | None


def _pull(row: Row) -> Pull:
    return Pull(**{name: row[name] for name in Pull.__dataclass_fields__})


def insert(sql: Sql, study_uid: str, peer: str, method: str, expected: int | None, requested_by: str,
           now: float) -> int:
    """A queued pull; its id."""
    row = sql.one(
        """INSERT INTO pulls (study_uid, peer, method, state, expected, requested_by, created_at)
        VALUES (?,?,?,?,?,?,?) RETURNING id""",
        (study_uid, peer, method, QUEUED, expected, requested_by, now),
    )
    assert row is not None
    return int(row["id"])


def get(sql: Sql, pull_id: int) -> Pull | None:
    row = sql.one("SELECT * FROM pulls WHERE id = ?", (pull_id,))
    return _pull(row) if row is not None else None


def recent(sql: Sql, limit: int) -> list[Pull]:
    return [_pull(r) for r in sql.query("SELECT * FROM pulls ORDER BY id DESC LIMIT ?", (limit,))]


def unfinished(sql: Sql, study_uid: str, peer: str) -> Pull | None:
    """The oldest queued or running pull of the study from the peer."""
    row = sql.one(
        "SELECT * FROM pulls WHERE study_uid = ? AND peer = ? AND state IN (?, ?) ORDER BY id LIMIT 1",
        (study_uid, peer, QUEUED, RUNNING),
    )
    return _pull(row) if row is not None else None


def unfinished_ids(sql: Sql) -> list[int]:
    return [r["id"] for r in sql.query("SELECT id FROM pulls WHERE state IN (?, ?) ORDER BY id", (QUEUED, RUNNING))]


def started(sql: Sql, pull_id: int, now: float) -> None:
    sql.execute("UPDATE pulls SET state = ?, started_at = ? WHERE id = ?", (RUNNING, now, pull_id))


def progress(sql: Sql, pull_id: int, received: int, duplicates: int, failed: int) -> None:
    sql.execute("UPDATE pulls SET received = ?, duplicates = ?, failed = ? WHERE id = ?",
                (received, duplicates, failed, pull_id))


def finish(sql: Sql, pull_id: int, state: str, error: str, now: float) -> None:
    sql.execute("UPDATE pulls SET state = ?, error = ?, finished_at = ? WHERE id = ?", (state, error, now, pull_id))
