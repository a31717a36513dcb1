"""IHE ATNA's wire format: DICOM Audit Messages (PS3.15 A.5) as RFC 5424 syslog messages,
appended to a local file and, optionally, sent to an audit record repository over UDP
(RFC 5426), TCP (RFC 6587 octet counting) or TLS (RFC 5425). What the node records is
`node.audit`'s business; this module only writes and sends.

Sending never blocks the node: messages wait in a bounded queue for the sender thread; when the
repository is away for long, messages that no longer fit are dropped from the queue and counted
(the local file keeps them all).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from node.config import AuditSettings, SyslogSettings
from node.logs import event
from node.tls import client_context

log = logging.getLogger("fracnode.audit")
FACILITY_AUTHPRIV = 10  # RFC 5424 6.2.1: security/authorization messages, as ATNA uses
SEVERITY_NOTICE, SEVERITY_WARNING = 5, 4
MSGID = "IHE+RFC-3881"  # IHE ITI TF-2 3.20.4.1: the MSGID of DICOM audit messages
BOM = "\ufeff"  # RFC 5424 6.4: a UTF-8 MSG starts with the byte order mark
QUEUE_SIZE = 10000
RECONNECT_S = 5.0

# PS3.16 CID 400-403 (DCM): event IDs, event types and roles the node reports
APPLICATION_ACTIVITY = ("110100", "Application Activity")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
STUDY_DELETED = ("110105", "DICOM Study Deleted")
SECURITY_ALERT = ("110113", "Security Alert")
USER_AUTHENTICATION = ("110114", "User Authentication")
APPLICATION_START = ("110120", "Application Start")
APPLICATION_STOP = ("110121", "Application Stop")
LOGIN = ("110122", "Login")
LOGOUT = ("110123", "Logout")
NODE_AUTHENTICATION = ("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = ("110131", "Software Configuration")
RESTRICTED_FUNCTION = ("110132", "Use of Restricted Function")
SOURCE_ROLE = ("110153", "Source Role ID")
DESTINATION_ROLE = ("110152", "Destination Role ID")
APPLICATION_ROLE = ("110150", "Application")
STUDY_INSTANCE_UID = ("110180", "Study Instance UID")
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8  # EventOutcomeIndicator (PS3.15 A.5.1)


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: an AE title or user, where from, in which role."""

    user_id: str
    requestor: bool
    address: str = ""
    role: tuple[str, str] | None = None
    alternative_id: str = ""  # e.g. the common name of a TLS certificate


@dataclass(frozen=True)
class Subject:
    """A ParticipantObjectIdentification: a study (by UID) or another object (by text)."""

    object_id: str
    id_type: tuple[str, str] = STUDY_INSTANCE_UID
    type_code: str = "2"  # system object
    role: str = "3"  # report
    detail: str = ""  # what happened to it, e.g. "12 instances"


@dataclass(frozen=True)
class AuditEvent:
    event_id: tuple[str, str]
    action: str  # EventActionCode: C create, R read, U update, D delete, E execute
    outcome: int = SUCCESS
    event_type: tuple[str, str] | None = None
    participants: tuple[Participant, ...] = ()
    subjects: tuple[Subject, ...] = ()
    description: str = ""  # EventOutcomeDescription: why it failed, in words
    at: float = field(default_factory=time.time)


def _code(parent: ET.Element, tag: str, code: tuple[str, str]) -> None:
    ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": "DCM", "originalText": code[1]})


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def audit_xml(item: AuditEvent, source_id: str) -> str:
    """The DICOM Audit Message (PS3.15 A.5.1) of one event, on one line."""
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {"EventActionCode": item.action, "EventDateTime": _iso(item.at), "EventOutcomeIndicator": str(item.outcome)},
    )
    _code(identification, "EventID", item.event_id)
    if item.event_type is not None:
        _code(identification, "EventTypeCode", item.event_type)
    if item.description:
        ET.SubElement(identification, "EventOutcomeDescription").text = item.description
    for who in item.participants:
        attributes = {"UserID": who.user_id, "UserIsRequestor": "true" if who.requestor else "false"}
        if who.alternative_id:
            attributes["AlternativeUserID"] = who.alternative_id
        if who.address:  # 2: an IP address (PS3.15 A.5.1, NetworkAccessPointTypeCode)
            attributes.update(NetworkAccessPointID=who.address, NetworkAccessPointTypeCode="2")
        participant = ET.SubElement(root, "ActiveParticipant", attributes)
        if who.role is not None:
            _code(participant, "RoleIDCode", who.role)
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    ET.SubElement(
        source, "AuditSourceTypeCode", {"csd-code": "4", "codeSystemName": "DCM", "originalText": "Application Server"}
    )
    for subject in item.subjects:
        element = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": subject.object_id,
                "ParticipantObjectTypeCode": subject.type_code,
                "ParticipantObjectTypeCodeRole": subject.role,
            },
        )
        _code(element, "ParticipantObjectIDTypeCode", subject.id_type)
        if subject.detail:
            ET.SubElement(element, "ParticipantObjectDescription").text = subject.detail
    return ET.tostring(root, encoding="unicode").replace("\n", " ")


def syslog_message(item: AuditEvent, source_id: str, hostname: str) -> str:
    """RFC 5424 6: PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG."""
    severity = SEVERITY_NOTICE if item.outcome == SUCCESS else SEVERITY_WARNING
    priority = FACILITY_AUTHPRIV * 8 + severity
    return (
        f"<{priority}>1 {_iso(item.at)} {hostname or '-'} fracnode {os.getpid()} {MSGID} -"
        f" {BOM}{audit_xml(item, source_id)}"
    )


class _SyslogSender(threading.Thread):
    """Sends queued messages to one collector, reconnecting after failures."""

    def __init__(self, settings: SyslogSettings) -> None:
        super().__init__(name="audit-syslog", daemon=True)
        self.settings = settings
        self.messages: queue.Queue[bytes | None] = queue.Queue(QUEUE_SIZE)
        self.dropped = 0
        self._socket: socket.socket | None = None
        self._context = client_context(settings.tls, "audit.syslog.tls") if settings.transport == "tls" else None

    def offer(self, message: bytes) -> None:
        try:
            self.messages.put_nowait(message)
        except queue.Full:  # the collector is away: the local file has it, this copy is dropped
            self.dropped += 1

    def _connect(self) -> socket.socket:
        settings = self.settings
        if settings.transport == "udp":
            return socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_DGRAM)
        sock = socket.create_connection((settings.host, settings.port), timeout=10)
        if self._context is not None:
            return self._context.wrap_socket(sock, server_hostname=settings.tls.server_name or settings.host)
        return sock

    def _send(self, message: bytes) -> None:
        if self._socket is None:
            self._socket = self._connect()
        if self.settings.transport == "udp":  # RFC 5426: one message per datagram
            self._socket.sendto(message, (self.settings.host, self.settings.port))
        else:  # RFC 6587 3.4.1 and RFC 5425 4.3: octet counting
            self._socket.sendall(f"{len(message)} ".encode() + message)

    def run(self) -> None:
        while True:
            message = self.messages.get()
            if message is None:
                break
            while True:
                try:
                    self._send(message)
                    break
                except (OSError, ssl.SSLError) as exc:
                    self._close()
                    event(
                        log,
                        logging.WARNING,
                        "audit collector unreachable; retrying",
                        host=self.settings.host,
                        port=self.settings.port,
                        reason=str(exc),
                    )
                    time.sleep(RECONNECT_S)
        self._close()

    def _close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None

    def stop(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(queue.Full):
            self.messages.put(None, timeout=timeout_s)
        self.join(timeout_s)


class AuditTrail:
    """Where audit events go: `record()` from any thread."""

    def __init__(self, settings: AuditSettings, path: Path, source_id: str) -> None:
        self.source_id = settings.source_id or source_id
        self.path = path
        self.hostname = socket.gethostname()
        self._lock = threading.Lock()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.chmod(path, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._sender = _SyslogSender(settings.syslog) if settings.syslog is not None else None
        if self._sender is not None:
            self._sender.start()

    def record(self, item: AuditEvent) -> None:
        message = syslog_message(item, self.source_id, self.hostname)
        with self._lock:
            try:
                self._file.write(message + "\n")
                self._file.flush()
            except (OSError, ValueError) as exc:  # a full disk must not stop a C-ECHO
                event(log, logging.WARNING, "audit message not written", reason=str(exc))
        if self._sender is not None:
            self._sender.offer(message.encode("utf-8"))

    def close(self) -> None:
        if self._sender is not None:
            self._sender.stop()
            if self._sender.dropped:
                event(log, logging.WARNING, "audit messages not sent to the collector", dropped=self._sender.dropped)
        with self._lock:
            self._file.close()
