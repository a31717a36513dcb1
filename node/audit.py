"""What the node records in its audit trail (IHE ATNA; the format is `node.atna`'s).

| what happened | DICOM audit event (PS3.15 A.5.3) |
| --- | --- |
| node started / stopped | Application Activity, Application Start / Stop |
| configuration differs from the last start | Security Alert, Software Configuration |
| association accepted / rejected | User Authentication, Login (outcome 0 / 4) |
| association ended | User Authentication, Logout; DICOM Instances Transferred per study |
| STOW-RS request ended | DICOM Instances Transferred per study (the HTTP user as source) |
| TLS handshake refused | Security Alert, Node Authentication (outcome 4) |
| HTTP request refused (401) | User Authentication, Login (outcome 4) |
| operator action over the API | Security Alert, Use of Restricted Function |
| results delivered | DICOM Instances Transferred (action R, the node as source) |
| study purged by retention | DICOM Study Deleted |

Who, from where, what: AE titles, HTTP user names, addresses, Study Instance UIDs, counts. Never
a patient's name, ID or birth date: the node indexes none of them, and these events are built
from what it indexes. Each event is also a line of the `fracnode.audit` log.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from node import atna
from node.atna import AuditEvent, AuditTrail, Participant, Subject
from node.config import Config

HTTP_FAILURES_PER_MINUTE = 20  # per address: a password guesser must not fill the disk


def _studies(counts: Mapping[str, int], what: str) -> tuple[Subject, ...]:
    return tuple(Subject(uid, detail=f"{count} {what}") for uid, count in sorted(counts.items()))


class Audit:
    """The node's audit events, each one call; thread-safe."""

    def __init__(self, config: Config) -> None:
        self.ae_title = config.node.ae_title
        self.trail = AuditTrail(config.audit, config.audit_path, config.node.ae_title)
        self._config_digest = hashlib.sha256(
            json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()
        self._digest_file = config.storage.data_dir / "config-digest"
        self._http_failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def _node(self, requestor: bool = False, role: tuple[str, str] | None = None) -> Participant:
        return Participant(self.ae_title, requestor, role=role)

    # -- the application ---------------------------------------------------------------------------

    def started(self) -> None:
        self.trail.record(
            AuditEvent(
                atna.APPLICATION_ACTIVITY,
                "E",
                event_type=atna.APPLICATION_START,
                participants=(self._node(True, atna.APPLICATION_ROLE),),
            )
        )
        previous = self._digest_file.read_text().strip() if self._digest_file.exists() else ""
        if previous != self._config_digest:
            self.trail.record(
                AuditEvent(
                    atna.SECURITY_ALERT,
                    "E",
                    event_type=atna.SOFTWARE_CONFIGURATION,
                    participants=(self._node(True, atna.APPLICATION_ROLE),),
                    subjects=(
                        Subject(
                            self._config_digest,
                            id_type=("110131", "Software Configuration"),
                            type_code="2",
                            role="13",
                            detail="sha256 of the active configuration",
                        ),
                    ),
                    description="the configuration differs from the one of the last start"
                    if previous
                    else "first start with this data folder",
                )
            )
            _write_private(self._digest_file, self._config_digest + "\n")

    def stopped(self) -> None:
        self.trail.record(
            AuditEvent(
                atna.APPLICATION_ACTIVITY,
                "E",
                event_type=atna.APPLICATION_STOP,
                participants=(self._node(True, atna.APPLICATION_ROLE),),
            )
        )
        self.trail.close()

    # -- DICOM associations --------------------------------------------------------------------------

    def association(
        self, calling_ae: str, address: str, accepted: bool, reason: str = "", tls_subject: str = ""
    ) -> None:
        self.trail.record(
            AuditEvent(
                atna.USER_AUTHENTICATION,
                "E",
                atna.SUCCESS if accepted else atna.MINOR_FAILURE,
                atna.LOGIN,
                participants=(Participant(calling_ae, True, address, alternative_id=tls_subject), self._node()),
                description=reason,
            )
        )

    def association_ended(
        self, calling_ae: str, address: str, outcome: str, received: Mapping[str, int], failed: int
    ) -> None:
        self.trail.record(
            AuditEvent(
                atna.USER_AUTHENTICATION,
                "E",
                atna.SUCCESS if outcome == "released" else atna.MINOR_FAILURE,
                atna.LOGOUT,
                participants=(Participant(calling_ae, True, address), self._node()),
                description="" if outcome == "released" else f"association {outcome}",
            )
        )
        self.transferred_in(calling_ae, address, received, failed)

    def transferred_in(self, source: str, address: str, received: Mapping[str, int], failed: int) -> None:
        """Instances stored from one association or STOW-RS request (C: created in the spool)."""
        if not received and not failed:
            return
        self.trail.record(
            AuditEvent(
                atna.INSTANCES_TRANSFERRED,
                "C",
                atna.SUCCESS if not failed else atna.MINOR_FAILURE,
                participants=(
                    Participant(source, True, address, role=atna.SOURCE_ROLE),
                    self._node(role=atna.DESTINATION_ROLE),
                ),
                subjects=_studies(received, "instances stored"),
                description=f"{failed} instance(s) refused" if failed else "",
            )
        )

    def tls_refused(self, address: str, reason: str) -> None:
        self.trail.record(
            AuditEvent(
                atna.SECURITY_ALERT,
                "E",
                atna.MINOR_FAILURE,
                atna.NODE_AUTHENTICATION,
                participants=(Participant("unknown", True, address), self._node()),
                description=reason,
            )
        )

    # -- the HTTP side ---------------------------------------------------------------------------------

    def http_refused(self, address: str, path: str) -> None:
        """A request without valid credentials; at most HTTP_FAILURES_PER_MINUTE per address."""
        now = time.monotonic()
        with self._lock:
            count, since = self._http_failures.get(address, (0, now))
            if now - since > 60:
                count, since = 0, now
            self._http_failures[address] = (count + 1, since)
        if count >= HTTP_FAILURES_PER_MINUTE:
            return
        self.trail.record(
            AuditEvent(
                atna.USER_AUTHENTICATION,
                "E",
                atna.MINOR_FAILURE,
                atna.LOGIN,
                participants=(Participant("unauthenticated", True, address), self._node()),
                description=f"no valid credentials for {path[:200]}"
                + (" (more this minute are not recorded)" if count + 1 == HTTP_FAILURES_PER_MINUTE else ""),
            )
        )

    def operator_action(self, principal: str, address: str, what: str, study_uid: str = "") -> None:
        self.trail.record(
            AuditEvent(
                atna.SECURITY_ALERT,
                "E",
                atna.SUCCESS,
                atna.RESTRICTED_FUNCTION,
                participants=(Participant(principal, True, address), self._node()),
                subjects=(Subject(study_uid),) if study_uid else (),
                description=what,
            )
        )

    # -- results and retention ------------------------------------------------------------------------

    def delivered(self, destination: str, target: str, sent: Mapping[str, int], failed: int = 0) -> None:
        """Results sent (R: read from the outbox by the node, which is the source)."""
        if not sent and not failed:
            return
        self.trail.record(
            AuditEvent(
                atna.INSTANCES_TRANSFERRED,
                "R",
                atna.SUCCESS if not failed else atna.MINOR_FAILURE,
                participants=(
                    self._node(True, atna.SOURCE_ROLE),
                    Participant(target, False, role=atna.DESTINATION_ROLE, alternative_id=destination),
                ),
                subjects=_studies(sent, "result objects delivered"),
                description=f"{failed} object(s) not delivered" if failed else "",
            )
        )

    def study_deleted(self, study_uid: str, reason: str) -> None:
        self.trail.record(
            AuditEvent(
                atna.STUDY_DELETED,
                "D",
                participants=(self._node(True),),
                subjects=(Subject(study_uid),),
                description=reason,
            )
        )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


__all__ = ["Audit", "AuditTrail"]
