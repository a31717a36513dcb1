"""The `outbox` table: one row per derived object and destination, until it is delivered.

node.dispatch.outbox writes the files and decides retries; here is how the rows are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from node.records import Job
from node.store.sql import Row, Sql

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class OutboxItem:
    """One object waiting for one destination."""

    id: int
    job_id: int
    study_uid: str
    destination: str
    calling_ae: str
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    attempts: int
    created_at: float = 0.0  # when the result was staged


@dataclass(frozen=True)
class DestinationCounts:
    """What the outbox holds for one destination (node.dispatch.health judges it)."""

    destination: str
    pending: int
    delivered: int
    failed: int
    oldest_pending_at: float | None
    attempts: int  # the most attempts of a pending item
    last_error: str
    last_delivered_at: float | None
    next_attempt_at: float | None


@dataclass(frozen=True)
class JobDeliveries:
    """A job's objects for one destination."""

    job_id: int
    destination: str
    objects: int
    delivered: int
    pending: int
    failed: int
    attempts: int
    last_error: str
    last_delivered_at: float | None


@dataclass(frozen=True)
class ResultObject:
    study_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    delivered_to: tuple[str, ...]  # the destinations that confirmed it


def _item(row: Row) -> OutboxItem:
    return OutboxItem(
        row["id"],
        row["job_id"],
        row["study_uid"],
        row["destination"],
        row["calling_ae"],
        Path(row["path"]),
        row["sop_instance_uid"],
        row["sop_class_uid"],
        row["attempts"],
        row["created_at"],
    )


def _count(state: str) -> str:
    return f"SUM(CASE WHEN state = '{state}' THEN 1 ELSE 0 END)"


def add(sql: Sql, job: Job, objects: Iterable[tuple[str, Path, str, str]], now: float) -> None:
    """Queue the job's objects, due now: (destination, file, SOP Instance UID, SOP Class UID)."""
    sql.execute_many(
        """INSERT INTO outbox (job_id, study_uid, destination, calling_ae, path,
        sop_instance_uid, sop_class_uid, state, next_attempt_at, created_at)
        VALUES (?,?,?,?,?,?,?,?,?,?)""",
        [
            (
                job.id,
                job.study_instance_uid,
                destination,
                job.calling_ae,
                str(path),
                sop_uid,
                sop_class,
                PENDING,
                now,
                now,
            )
            for destination, path, sop_uid, sop_class in objects
        ],
    )


def due(sql: Sql, destination: str, now: float, limit: int) -> list[OutboxItem]:
    rows = sql.query(
        """SELECT * FROM outbox WHERE destination = ? AND state = ? AND next_attempt_at <= ?
        ORDER BY id LIMIT ?""",
        (destination, PENDING, now, limit),
    )
    return [_item(r) for r in rows]


def claim_due(sql: Sql, destination: str, now: float, limit: int, owner: str, lease_until: float) -> list[OutboxItem]:
    """Take up to `limit` due items of one destination for `owner` until `lease_until`, oldest
    first; items another dispatcher holds (an unexpired lease, or a row it is claiming now) are
    skipped, so two dispatchers never send the same item at once."""
    rows = sql.query(
        f"""UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id IN (
        SELECT id FROM outbox WHERE destination = ? AND state = ? AND next_attempt_at <= ?
        AND (lease_until IS NULL OR lease_until < ?) ORDER BY id LIMIT ?{sql.dialect.claim_lock})
        RETURNING *""",
        (owner, lease_until, destination, PENDING, now, now, limit),
    )
    return sorted((_item(r) for r in rows), key=lambda item: item.id)


def release(sql: Sql, owner_prefix: str) -> int:
    """Give back the items claimed by owners named `owner_prefix`… (a dispatcher that stops)."""
    return sql.execute(
        "UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner LIKE ?",
        (owner_prefix + "%",),
    )


def lease_owners(sql: Sql) -> set[str]:
    """The dispatchers holding items now (or whose leases lapsed unreleased)."""
    rows = sql.query("SELECT DISTINCT lease_owner FROM outbox WHERE lease_owner IS NOT NULL AND state = ?", (PENDING,))
    return {row["lease_owner"] for row in rows}


def next_due_at(sql: Sql, destination: str) -> float | None:
    row = sql.one(
        "SELECT MIN(next_attempt_at) AS t FROM outbox WHERE destination = ? AND state = ?",
        (destination, PENDING),
    )
    return row["t"] if row is not None else None


def delivered(sql: Sql, item_id: int, now: float) -> None:
    sql.execute(
        """UPDATE outbox SET state = ?, attempts = attempts + 1, delivered_at = ?, last_error = '',
        lease_owner = NULL, lease_until = NULL WHERE id = ?""",
        (DELIVERED, now, item_id),
    )


def waiting_for_file(sql: Sql, path: Path) -> bool:
    """Whether a destination still waits for (or gave up on) the object in this file."""
    return sql.one("SELECT 1 FROM outbox WHERE path = ? AND state != ? LIMIT 1", (str(path), DELIVERED)) is not None


def states(sql: Sql, item_ids: Sequence[int]) -> dict[int, str]:
    if not item_ids:
        return {}
    rows = sql.query(f"SELECT id, state FROM outbox WHERE id IN ({sql.dialect.params(len(item_ids))})", tuple(item_ids))
    return {row["id"]: row["state"] for row in rows}


def failed_attempt(sql: Sql, item_id: int, attempts: int, next_attempt_at: float, error: str) -> None:
    sql.execute(
        """UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?,
        lease_owner = NULL, lease_until = NULL WHERE id = ?""",
        (attempts, next_attempt_at, error, item_id),
    )


def give_up(sql: Sql, item_id: int, error: str) -> None:
    sql.execute(
        """UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?,
        lease_owner = NULL, lease_until = NULL WHERE id = ?""",
        (FAILED, error, item_id),
    )


def undelivered(sql: Sql, job_id: int, destination: str) -> int:
    """A job's objects still waiting for (or given up on) one destination."""
    row = sql.one(
        "SELECT COUNT(*) AS n FROM outbox WHERE job_id = ? AND destination = ? AND state != ?",
        (job_id, destination, DELIVERED),
    )
    return int(row["n"]) if row is not None else 0


def replaced(sql: Sql, job_id: int, destination: str) -> dict[tuple[int, int], list[str]]:
    """Objects this destination got from older revisions of the job's study and route:
    {(job id, revision): [SOP Instance UID, ...]}."""
    rows = sql.query(
        """SELECT o.job_id, j.revision, o.sop_instance_uid FROM outbox o
        JOIN jobs j ON j.id = o.job_id
        JOIN jobs current ON current.id = ?
        WHERE o.destination = ? AND o.state = ? AND j.study_uid = current.study_uid
        AND j.route = current.route AND j.id < current.id ORDER BY o.id""",
        (job_id, destination, DELIVERED),
    )
    found: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        found.setdefault((row["job_id"], row["revision"]), []).append(row["sop_instance_uid"])
    return found


def requeue_failed(sql: Sql, now: float) -> int:
    return sql.execute("UPDATE outbox SET state = ?, next_attempt_at = ? WHERE state = ?", (PENDING, now, FAILED))


def staged_job_ids(sql: Sql) -> set[int]:
    return {row["job_id"] for row in sql.query("SELECT DISTINCT job_id FROM outbox")}


def delivered_paths(sql: Sql, job_ids: Sequence[int]) -> set[tuple[int, str]]:
    """(job id, file) of these jobs' results that every destination has received (no row for the
    file waits or gave up)."""
    if not job_ids:
        return set()
    rows = sql.query(
        f"SELECT job_id, path FROM outbox WHERE job_id IN ({sql.dialect.params(len(job_ids))})"
        " GROUP BY job_id, path HAVING SUM(CASE WHEN state != ? THEN 1 ELSE 0 END) = 0",
        (*job_ids, DELIVERED),
    )
    return {(row["job_id"], row["path"]) for row in rows}


def staged_paths(sql: Sql, job_ids: Sequence[int]) -> set[str]:
    """The files the outbox rows of these jobs name."""
    if not job_ids:
        return set()
    rows = sql.query(
        f"SELECT DISTINCT path FROM outbox WHERE job_id IN ({sql.dialect.params(len(job_ids))})", tuple(job_ids)
    )
    return {row["path"] for row in rows}


def count_pending(sql: Sql) -> int:
    row = sql.one("SELECT COUNT(*) AS n FROM outbox WHERE state = ?", (PENDING,))
    return int(row["n"]) if row is not None else 0


def pending_by_destination(sql: Sql) -> dict[str, int]:
    rows = sql.query("SELECT destination, COUNT(*) AS n FROM outbox WHERE state = ? GROUP BY destination", (PENDING,))
    return {row["destination"]: row["n"] for row in rows}


def counts_by_state(sql: Sql) -> list[tuple[str, str, int]]:
    """(destination, state, objects), by destination and state."""
    rows = sql.query(
        "SELECT destination, state, COUNT(*) AS n FROM outbox GROUP BY destination, state ORDER BY destination, state"
    )
    return [(row["destination"], row["state"], row["n"]) for row in rows]


def per_destination(sql: Sql) -> list[DestinationCounts]:
    rows = sql.query(
        f"""SELECT destination, {_count(PENDING)} AS pending,
        {_count(DELIVERED)} AS delivered, {_count(FAILED)} AS failed,
        MIN(CASE WHEN state = '{PENDING}' THEN created_at END) AS oldest_pending_at,
        MAX(CASE WHEN state = '{PENDING}' THEN attempts ELSE 0 END) AS attempts,
        MAX(delivered_at) AS last_delivered_at,
        MIN(CASE WHEN state = '{PENDING}' THEN next_attempt_at END) AS next_attempt_at,
        (SELECT last_error FROM outbox o2 WHERE o2.destination = outbox.destination
         AND o2.last_error != '' ORDER BY o2.id DESC LIMIT 1) AS last_error
        FROM outbox GROUP BY destination"""
    )
    return [
        DestinationCounts(
            row["destination"],
            row["pending"] or 0,
            row["delivered"] or 0,
            row["failed"] or 0,
            row["oldest_pending_at"],
            row["attempts"] or 0,
            row["last_error"] or "",
            row["last_delivered_at"],
            row["next_attempt_at"],
        )
        for row in rows
    ]


def per_job(sql: Sql, job_ids: Sequence[int]) -> list[JobDeliveries]:
    """By job and destination."""
    if not job_ids:
        return []
    rows = sql.query(
        f"""SELECT job_id, destination, COUNT(*) AS objects,
        {_count(DELIVERED)} AS delivered, {_count(PENDING)} AS pending,
        {_count(FAILED)} AS failed, SUM(attempts) AS attempts,
        MAX(NULLIF(last_error, '')) AS last_error, MAX(delivered_at) AS last_delivered_at
        FROM outbox WHERE job_id IN ({sql.dialect.params(len(job_ids))})
        GROUP BY job_id, destination ORDER BY job_id, destination""",
        tuple(job_ids),
    )
    return [
        JobDeliveries(
            row["job_id"],
            row["destination"],
            row["objects"],
            row["delivered"],
            row["pending"],
            row["failed"],
            row["attempts"],
            row["last_error"] or "",
            row["last_delivered_at"],
        )
        for row in rows
    ]


def results_of_job(sql: Sql, job_id: int) -> list[ResultObject]:
    """The objects a job produced, each once, in the order they were staged."""
    rows = sql.query(
        """SELECT study_uid, sop_instance_uid, sop_class_uid, path, destination, state FROM outbox
        WHERE job_id = ? ORDER BY id""",
        (job_id,),
    )
    found: dict[str, ResultObject] = {}
    for r in rows:
        known = found.get(r["sop_instance_uid"]) or ResultObject(
            r["study_uid"], r["sop_instance_uid"], r["sop_class_uid"], Path(r["path"]), ()
        )
        if r["state"] == DELIVERED:
            known = replace(known, delivered_to=(*known.delivered_to, r["destination"]))
        found[r["sop_instance_uid"]] = known
    return list(found.values())


def delete_study(sql: Sql, study_uid: str) -> None:
    sql.execute("DELETE FROM outbox WHERE study_uid = ?", (study_uid,))
