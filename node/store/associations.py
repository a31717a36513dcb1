"""The `associations` table: the trail of every DICOM association, STOW-RS request and WADO-RS
retrieval (who, from where, accepted or not and why, instances received and refused)."""

from __future__ import annotations

from dataclasses import dataclass

from node.store.sql import Sql

OPEN, REJECTED = "open", "rejected"


@dataclass(frozen=True)
class Association:
    id: str
    started_at: float
    ended_at: float | None
    peer_ae: str
    peer_address: str
    peer_port: int | None
    called_ae: str
    outcome: str  # open, released, aborted, rejected, ...
    reason: str
    instances_received: int
    instances_failed: int


def opened(sql: Sql, record_id: str, started_at: float, peer_ae: str, peer_address: str, peer_port: int,
           called_ae: str) -> None:
    sql.execute(
        """INSERT INTO associations (id, started_at, peer_ae, peer_address, peer_port, called_ae, outcome)
        VALUES (?,?,?,?,?,?,?)""",
        (record_id, started_at, peer_ae, peer_address, peer_port, called_ae, OPEN),
    )


def rejected(sql: Sql, record_id: str, at: float, peer_ae: str, peer_address: str, peer_port: int,
             called_ae: str, reason: str) -> None:
    sql.execute(
        """INSERT INTO associations (id, started_at, ended_at, peer_ae, peer_address, peer_port,
        called_ae, outcome, reason) VALUES (?,?,?,?,?,?,?,?,?)""",
        (record_id, at, at, peer_ae, peer_address, peer_port, called_ae, REJECTED, reason),
    )


def ended(sql: Sql, record_id: str, at: float, outcome: str, received: int, failed: int) -> None:
    sql.execute(
        """UPDATE associations SET ended_at = ?, outcome = ?, instances_received = ?,
        instances_failed = ? WHERE id = ?""",
        (at, outcome, received, failed, record_id),
    )


def recent(sql: Sql, limit: int) -> list[Association]:
    """Newest first."""
    rows = sql.query("SELECT * FROM associations ORDER BY started_at DESC LIMIT ?", (limit,))
    return [Association(**{name: row[name] for name in Association.__dataclass_fields__}) for row in rows]
