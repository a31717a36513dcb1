"""The audit trail as the dashboard and `GET /api/v1/audit` show it.

`AtnaFileTrail.recent(limit)` reads the node's own audit trail, newest first: the DICOM Audit
Messages (PS3.15 A.5.1) that `node.audit` appends to `audit.file` as RFC 5424 lines (`node.atna`).
Only the end of the file is read, however long it has grown. The events name AE titles, users,
addresses and Study Instance UIDs, never patient data (see node/audit.py).
"""

from __future__ import annotations

import datetime
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from pydantic import BaseModel, Field

from node.atna import BOM, MSGID

BLOCK = 64 * 1024
MAX_READ = 16 * 2**20  # at most this much of the file's end is read for one page of events
OUTCOMES = {"0": "success", "4": "minor failure", "8": "serious failure", "12": "major failure"}


class AuditEvent(BaseModel):
    at: float = Field(description="Unix seconds (UTC)")
    kind: str = Field(description="the DICOM audit event and its type, e.g. 'User Authentication: Login'")
    outcome: str = Field(description="success, minor failure, serious failure or major failure (PS3.15 A.5.1)")
    who: str = Field(description="the requesting participant: AE title, web user or the node itself")
    where: str = Field(description="network address of the requestor (or of the other participant)")
    detail: str = Field(description="why it failed, what it touched (Study Instance UIDs, counts); never patient data")


def _tail_lines(path: Path, limit: int) -> list[str]:
    """The last `limit` whole lines of `path`, newest first, reading backwards in blocks."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        position, data = end, b""
        # one more line than asked: the first one read may be cut at the block's start
        while position > 0 and data.count(b"\n") <= limit and end - position < MAX_READ:
            step = min(BLOCK, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    lines = data.split(b"\n")[:-1]  # after the last newline: nothing, or a line being written
    if position > 0:
        lines = lines[1:]  # began inside a line
    found = [line.decode("utf-8", "replace") for line in reversed(lines) if line.strip()]
    return found[:limit]


def _text(element: ET.Element | None, attribute: str = "originalText") -> str:
    return "" if element is None else element.get(attribute, "")


def _when(stamp: str) -> float:
    try:  # EventDateTime as node.atna writes it: 2026-12-03T13:04:26.123Z
        return datetime.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


def parse(line: str) -> AuditEvent | None:
    """One RFC 5424 line of the audit file as the dashboard shows it; None if it is not one
    (a line being written, or someone else's)."""
    _, found, message = line.partition(f" {MSGID} - ")
    if not found:
        return None
    try:
        root = ET.fromstring(message.lstrip(BOM))
    except ET.ParseError:
        return None
    identification = root.find("EventIdentification")
    if identification is None:
        return None
    kind = _text(identification.find("EventID"))
    event_type = _text(identification.find("EventTypeCode"))
    participants = root.findall("ActiveParticipant")
    requestor = next(
        (p for p in participants if p.get("UserIsRequestor") == "true"), participants[0] if participants else None
    )
    who = _text(requestor, "UserID")
    if _text(requestor, "AlternativeUserID"):
        who += f" ({_text(requestor, 'AlternativeUserID')})"
    where = _text(requestor, "NetworkAccessPointID") or next(
        (p.get("NetworkAccessPointID", "") for p in participants if p.get("NetworkAccessPointID")), ""
    )
    # results delivered: the destination (by name) is the participant that did not ask
    details = [
        f"to {p.get('AlternativeUserID')}" for p in participants if p is not requestor and p.get("AlternativeUserID")
    ]
    details.append(identification.findtext("EventOutcomeDescription") or "")
    for subject in root.findall("ParticipantObjectIdentification"):
        described = subject.findtext("ParticipantObjectDescription")
        details.append(f"{subject.get('ParticipantObjectID', '')}" + (f": {described}" if described else ""))
    return AuditEvent(
        at=_when(identification.get("EventDateTime", "")),
        kind=f"{kind}: {event_type}" if event_type else kind,
        outcome=OUTCOMES.get(identification.get("EventOutcomeIndicator", ""), "unknown"),
        who=who,
        where=where,
        detail="; ".join(d for d in details if d),
    )


class AtnaFileTrail:
    """The node's audit trail as written to its local file (`audit.file`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def recent(self, limit: int) -> list[AuditEvent]:
        events = (parse(line) for line in _tail_lines(self.path, limit))
        return [e for e in events if e is not None]
