"""The audit trail as the dashboard shows it, behind one small interface.

`AuditTrail.recent(limit)` is all the dashboard and `GET /api/v1/audit` need. The stand-in here
reads what the node records today: every DICOM association and STOW-RS request (who, from
where, accepted or rejected and why, instances received and refused) from the `associations`
table. A fuller trail (IHE ATNA events for exports, queries and user actions) can replace it by
handing another object with the same method to `node.web.queries.Queries` (`audit_trail`).
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, Field

from node.store import Database, associations


class AuditEvent(BaseModel):
    at: float = Field(description="Unix seconds (UTC)")
    kind: str = Field(description="what happened, e.g. 'DICOM association' or 'STOW-RS request'")
    outcome: str = Field(description="accepted/released, rejected, aborted, ...")
    who: str = Field(description="calling AE title or web principal")
    where: str = Field(description="network address of the peer")
    detail: str = Field(description="counts and reasons; never patient data")


class AuditTrail(Protocol):
    def recent(self, limit: int) -> list[AuditEvent]: ...


class AssociationAudit:
    """The stand-in trail: the `associations` table kept by both ingest paths."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def recent(self, limit: int) -> list[AuditEvent]:
        return [
            AuditEvent(
                at=row.started_at,
                kind="STOW-RS request" if row.called_ae.startswith("STOW") else "DICOM association",
                outcome=row.outcome,
                who=row.peer_ae,
                where=row.peer_address,
                detail=(f"{row.instances_received} instance(s) received, {row.instances_failed} refused"
                        + (f"; {row.reason}" if row.reason else "")),
            )
            for row in associations.recent(self.db, limit)
        ]
