"""One association as the acceptor sees it, from A-ASSOCIATE-RQ to release or abort (PS3.8 9.2).

Blocking reads in the association's own thread: after negotiation every P-DATA-TF fragment of a
C-STORE data set goes from the socket into the spool's temporary file (`node.incoming`), and
the C-STORE-RSP is sent once the instance is durable and indexed (PS3.4 B.2.3, PS3.7 9.1.1).
C-ECHO is answered at once. Spool failures become statuses here, and only here.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Protocol

from node.config import NodeSettings
from node.header import MismatchedInstance
from node.incoming import Incoming, SpareFile
from node.ingest import commands
from node.ingest import upper_layer as ul
from node.logs import event
from node.redact import error_text
from node.spool import OutOfSpace, Spool, Stored, UnreadableInstance
from node.store import DatabaseUnavailable, StorageFull

log = logging.getLogger("fracnode.ingest")

# PS3.4 Annex B.2.3 C-STORE status codes, PS3.7 C.4 general failures
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_UNRECOGNIZED_OPERATION = 0x0211
STATUS_DATA_SET_MISMATCH = 0xA900  # the data set is not the SOP instance the command announced

CHUNK = 1 << 20  # a data set fragment is read in pieces of at most this many bytes
DATA_BUFFER = 1 << 16  # the read buffer of an accepted association (4 KiB before)
MAX_COMMAND_SET = 1 << 16  # command sets are a few hundred bytes; more is a broken peer
MAX_CONTROL_PDU = 1 << 18  # an A-ASSOCIATE-RQ of 128 contexts and many syntaxes fits in 256 KiB
CLOSE_WAIT_S = 2.0  # after a final PDU, how long to wait for the peer to close (PS3.8 Sta13)
PDU_TIME_UNIT = 1 << 20  # a PDU gets pdu_timeout_s per started MiB


@dataclass
class AssociationRecord:
    """The audit trail's view of one accepted association."""

    id: str
    started_at: float
    peer_ae: str
    peer_address: str
    peer_port: int
    called_ae: str
    tls_subject: str = ""  # the common name of the peer's TLS certificate, if it sent one
    received: int = 0
    failed: int = 0
    studies: dict[str, int] = field(default_factory=dict)  # Study Instance UID: instances stored
    changed: set[str] = field(default_factory=set)  # studies with an instance new to the spool


class Owner(Protocol):
    """What an association needs from the SCP that accepted its connection (`DimseIngest`)."""

    settings: NodeSettings
    spool: Spool
    supported: dict[str, tuple[str, ...]]  # abstract syntax: transfer syntaxes, preferred first
    storage_sop_classes: frozenset[str]

    def admit(self, request: ul.AssociationRequest, host: str) -> tuple[tuple[int, int, int], str] | None: ...
    def release(self, host: str) -> None: ...
    def accepted(self, request: ul.AssociationRequest, address: tuple[str, int],
                 peer_subject: str) -> AssociationRecord: ...
    def rejected(self, request: ul.AssociationRequest, address: tuple[str, int], reason: str) -> None: ...
    def ended(self, record: AssociationRecord, outcome: str) -> None: ...
    def stored(self, record: AssociationRecord, stored: Stored) -> None: ...
    def refused(self, record: AssociationRecord, status: int, reason: str, sop_uid: str) -> None: ...


def _failure_status(exc: BaseException, sop_uid: str) -> tuple[int, str]:
    """Map a spool failure to its C-STORE status (PS3.4 B.2.3): the edge's only translation."""
    if isinstance(exc, (OutOfSpace, StorageFull, DatabaseUnavailable)):
        # the index unreachable is out of resources for now, never success: the peer retries
        return STATUS_OUT_OF_RESOURCES, str(exc)
    if isinstance(exc, MismatchedInstance):
        return STATUS_DATA_SET_MISMATCH, str(exc)
    if isinstance(exc, UnreadableInstance):
        return STATUS_CANNOT_UNDERSTAND, str(exc)
    log.error("C-STORE failed", exc_info=exc, extra={"fields": {"sop_instance_uid": sop_uid}})
    return STATUS_PROCESSING_FAILURE, error_text(exc)


class Association:
    """One association, from the A-ASSOCIATE-RQ to its release or abort (PS3.8 9.2)."""

    def __init__(self, ingest: Owner, sock: socket.socket, address: tuple[str, int],
                 negotiation_deadline: float, peer_subject: str = "") -> None:
        """`negotiation_deadline` (time.monotonic()): when the A-ASSOCIATE-RQ must have arrived
        whole, counted from the connection (a TLS handshake spends from it too); `peer_subject`:
        the common name of a TLS client certificate."""
        self.ingest = ingest
        self.address = address
        self.peer_subject = peer_subject
        self.transport = ul.Transport(sock)  # a few KiB until the association is accepted
        self.transport.deadline = negotiation_deadline
        self.record: AssociationRecord | None = None
        self.contexts: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu = 0
        self.calling_ae = ""
        self._command = bytearray()
        self._message_started: float | None = None  # time.monotonic() of a message's first PDV
        self._message_bytes = 0
        self._command_context = 0
        self._request: commands.Command | None = None  # the request whose data set is arriving
        self._request_context = 0
        self._incoming: Incoming | None = None
        self._failure: tuple[int, str] | None = None
        self._view = memoryview(b"")  # CHUNK bytes once the association is accepted
        self._spare = SpareFile()
        self._linger = False  # after A-ASSOCIATE-RJ or A-RELEASE-RP the peer closes (Sta13)

    def run(self) -> None:
        outcome = "aborted"
        try:
            if self._associate():
                outcome = self._data_phase()
        except ul.ProtocolError as exc:
            event(log, logging.WARNING, "association aborted: protocol error", reason=str(exc),
                  association=self.record.id if self.record else "", address=self.address[0])
            self._send_quietly(ul.abort_pdu(exc.reason))
        except ul.PeerSilent as exc:
            event(log, logging.WARNING, "association aborted: peer silent", reason=str(exc),
                  association=self.record.id if self.record else "", address=self.address[0])
            self._send_quietly(ul.abort_pdu())
        except ul.PeerClosed:
            pass  # an A-P-ABORT indication (PS3.8 7.4): the audit row says "aborted"
        except Exception:
            log.exception("association failed", extra={"fields": {"address": self.address[0]}})
            self._send_quietly(ul.abort_pdu())
        finally:
            if self._incoming is not None:
                self._incoming.discard()
            self._spare.close()
            if self.record is not None:
                self.ingest.ended(self.record, outcome)
            if self._linger:
                self.transport.wait_for_close(CLOSE_WAIT_S)
            self.transport.close()

    def _send_quietly(self, pdu: bytes) -> None:
        try:
            self.transport.send(pdu)
        except ul.PeerClosed:
            pass

    def _read_control_pdu(self, length: int) -> bytes:
        if length > MAX_CONTROL_PDU:
            raise ul.ProtocolError(f"a {length}-byte control PDU", ul.REASON_INVALID_PARAMETER)
        return self.transport.read(length)

    def _wait_allowed(self) -> float:
        """How long the next PDU may take to start: network_timeout_s, and inside a message no
        more than keeps it at pdu_timeout_s per MiB, so that tiny PDUs cannot stretch it."""
        settings = self.ingest.settings
        if self._message_started is None:
            return settings.network_timeout_s
        budget = settings.pdu_timeout_s * (1 + self._message_bytes / PDU_TIME_UNIT)
        left = self._message_started + budget - time.monotonic()
        if left <= 0:
            raise ul.PeerSilent(f"the message arrives slower than 1 MiB per {settings.pdu_timeout_s:g} s")
        return min(settings.network_timeout_s, left)

    def _message_progress(self, size: int) -> None:
        if self._message_started is None:
            self._message_started = time.monotonic()
        self._message_bytes += size

    def _message_done(self) -> None:
        self._message_started, self._message_bytes = None, 0

    def _expect_pdu(self, length: int, what: str) -> None:
        """A PDU's bytes must all arrive within pdu_timeout_s per started MiB."""
        units = max(1, math.ceil(length / PDU_TIME_UNIT))
        self.transport.expect(self.ingest.settings.pdu_timeout_s * units, what)

    # -- association establishment (PS3.8 9.2, Sta2 → Sta6) -----------------------------------

    def _associate(self) -> bool:
        pdu_type, length = self.transport.read_pdu_header()
        if pdu_type == ul.A_ABORT:
            return False
        if pdu_type != ul.A_ASSOCIATE_RQ:
            raise ul.ProtocolError(f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ", ul.REASON_UNEXPECTED_PDU)
        body = self._read_control_pdu(length)
        request = ul.decode_request(bytes((pdu_type, 0)) + length.to_bytes(4, "big") + body)
        rejection = self.ingest.admit(request, self.address[0])
        if rejection is not None:
            (result, source, diagnostic), reason = rejection
            self._send_quietly(ul.reject_pdu(result, source, diagnostic))
            self.ingest.rejected(request, self.address, reason)
            self._linger = True
            return False
        try:
            acceptance = ul.accept(request, self.ingest.supported, self.ingest.settings.max_pdu)
        except BaseException:
            self.ingest.release(self.address[0])
            raise
        self.record = self.ingest.accepted(request, self.address, self.peer_subject)
        self.transport.grow(DATA_BUFFER)
        self._view = memoryview(bytearray(CHUNK))
        self.contexts = acceptance.contexts
        self.peer_max_pdu = request.peer_max_pdu
        self.calling_ae = request.calling_ae
        self.transport.send(acceptance.pdu)
        return True

    # -- data transfer (Sta6) -------------------------------------------------------------------

    def _data_phase(self) -> str:
        settings = self.ingest.settings
        while True:
            self.transport.expect(self._wait_allowed(), "the next PDU")
            pdu_type, length = self.transport.read_pdu_header()
            self._expect_pdu(length, f"a {length}-byte PDU")
            if pdu_type == ul.P_DATA_TF:
                if settings.max_pdu and length > settings.max_pdu:  # PS3.8 D.1: what we advertised
                    raise ul.ProtocolError(f"a {length}-byte P-DATA-TF PDU; node.max_pdu is {settings.max_pdu}",
                                           ul.REASON_INVALID_PARAMETER)
                self._p_data(length)
            elif pdu_type == ul.A_RELEASE_RQ:
                self._read_control_pdu(length)
                self._drop_request()  # a release inside a message: what arrived is not stored
                self._spare.close()  # before the answer: a released association leaves no file behind
                self.transport.send(ul.RELEASE_RP)
                self._linger = True
                return "released"
            elif pdu_type == ul.A_ABORT:
                return "aborted"
            elif pdu_type in (ul.A_ASSOCIATE_RQ, ul.A_ASSOCIATE_AC, ul.A_ASSOCIATE_RJ, ul.A_RELEASE_RP):
                raise ul.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", ul.REASON_UNEXPECTED_PDU)
            else:
                raise ul.ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", ul.REASON_UNRECOGNIZED_PDU)

    def _p_data(self, length: int) -> None:
        """Read one P-DATA-TF PDU, PDV by PDV (PS3.8 9.3.5, Annex E)."""
        remaining = length
        while remaining > 0:
            if remaining < ul.PDV_HEADER_SIZE:
                raise ul.ProtocolError("P-DATA-TF ends inside a PDV header", ul.REASON_INVALID_PARAMETER)
            size, context_id, control = ul.parse_pdv_header(self.transport.read(ul.PDV_HEADER_SIZE))
            remaining -= ul.PDV_HEADER_SIZE + size
            if remaining < 0:
                raise ul.ProtocolError("a PDV is longer than its P-DATA-TF", ul.REASON_INVALID_PARAMETER)
            if context_id not in self.contexts:
                raise ul.ProtocolError(f"presentation context {context_id} was not accepted",
                                       ul.REASON_INVALID_PARAMETER)
            self._message_progress(size)
            if control & 0x01:
                self._command_fragment(context_id, size, bool(control & 0x02))
            else:
                self._data_fragment(context_id, size, bool(control & 0x02))

    def _command_fragment(self, context_id: int, size: int, last: bool) -> None:
        if self._request is not None:
            raise ul.ProtocolError("a command fragment inside a data set", ul.REASON_UNEXPECTED_PDU)
        if self._command and context_id != self._command_context:
            raise ul.ProtocolError("a command set split over presentation contexts", ul.REASON_INVALID_PARAMETER)
        if len(self._command) + size > MAX_COMMAND_SET:
            raise ul.ProtocolError("command set too long", ul.REASON_INVALID_PARAMETER)
        self._command += self.transport.read(size)
        self._command_context = context_id
        if last:
            data = bytes(self._command)
            self._command.clear()
            try:
                command = commands.decode(data)
            except commands.MalformedCommand as exc:
                raise ul.ProtocolError(str(exc), ul.REASON_INVALID_PARAMETER) from exc
            self._on_command(context_id, command)

    def _on_command(self, context_id: int, command: commands.Command) -> None:
        if not command.has_data_set:
            self._message_done()
        if command.command_field == commands.C_CANCEL_RQ:
            return  # nothing to cancel: every operation here completes before its response
        if command.has_data_set:
            self._start_request(context_id, command)
        elif command.command_field == commands.C_ECHO_RQ:
            self._respond(context_id, command, STATUS_SUCCESS)
        elif command.command_field == commands.C_STORE_RQ:
            self._refuse(context_id, command, STATUS_CANNOT_UNDERSTAND, "C-STORE-RQ without a data set")
        else:
            self._refuse(context_id, command, STATUS_UNRECOGNIZED_OPERATION,
                         f"command 0x{command.command_field:04X} is not supported")

    def _start_request(self, context_id: int, command: commands.Command) -> None:
        self._request, self._request_context, self._failure = command, context_id, None
        abstract_syntax, transfer_syntax = self.contexts[context_id]
        if command.command_field != commands.C_STORE_RQ:
            self._failure = (STATUS_UNRECOGNIZED_OPERATION,
                             f"command 0x{command.command_field:04X} is not supported")
        elif abstract_syntax not in self.ingest.storage_sop_classes:
            self._failure = (STATUS_SOP_CLASS_NOT_SUPPORTED,
                             f"C-STORE on the {abstract_syntax} presentation context")
        elif not command.affected_sop_instance_uid:  # PS3.7 9.3.1.1: required in a C-STORE-RQ
            self._failure = (STATUS_CANNOT_UNDERSTAND, "no Affected SOP Instance UID (0000,1000)")
        elif command.affected_sop_class_uid != abstract_syntax:
            self._failure = (STATUS_DATA_SET_MISMATCH,
                             "Affected SOP Class UID (0000,0002) is not the context's")
        else:
            assert self.record is not None
            try:  # it asks the index whether the UID is held: an unreachable database is a status
                self._incoming = Incoming(self.ingest.spool, transfer_syntax, command.affected_sop_class_uid,
                                          command.affected_sop_instance_uid, self.calling_ae, self.record.id,
                                          spare=self._spare, announced_by="C-STORE-RQ")
            except Exception as exc:  # noqa: BLE001 - answered with a status when the data set ends
                self._failure = _failure_status(exc, command.affected_sop_instance_uid)

    def _data_fragment(self, context_id: int, size: int, last: bool) -> None:
        if self._request is None:
            raise ul.ProtocolError("a data set fragment without a command", ul.REASON_UNEXPECTED_PDU)
        if context_id != self._request_context:
            raise ul.ProtocolError("a data set on another presentation context than its command",
                                   ul.REASON_INVALID_PARAMETER)
        while size:
            view = self._view[: min(size, CHUNK)]
            self.transport.read_into(view)
            size -= len(view)
            if self._incoming is not None:
                try:
                    self._incoming.add(view)
                except Exception as exc:  # noqa: BLE001 - answered with a status when the data set ends
                    self._drop_request(exc)
        if last:
            self._finish_request()

    def _drop_request(self, exc: BaseException | None = None) -> None:
        if self._incoming is not None:
            self._incoming.discard()
            self._incoming = None
        if exc is not None and self._request is not None:
            self._failure = _failure_status(exc, self._request.affected_sop_instance_uid)

    def _finish_request(self) -> None:
        self._message_done()
        request, context_id = self._request, self._request_context
        assert request is not None and self.record is not None
        self._request = None
        if self._incoming is not None:
            incoming, self._incoming = self._incoming, None
            try:
                stored = incoming.commit()
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                incoming.discard()
                self._failure = _failure_status(exc, request.affected_sop_instance_uid)
            else:
                self.ingest.stored(self.record, stored)
                self._respond(context_id, request, STATUS_SUCCESS)
                if self.record.received > 1:  # a series is under way: more are likely to come
                    self._spare.prepare(stored.path.parent)  # while the sender readies the next
                return
        status, reason = self._failure or (STATUS_PROCESSING_FAILURE, "no data set")
        self._refuse(context_id, request, status, reason)

    def _refuse(self, context_id: int, request: commands.Command, status: int, reason: str) -> None:
        if self.record is not None and request.command_field == commands.C_STORE_RQ:
            self.ingest.refused(self.record, status, reason, request.affected_sop_instance_uid)
        self._respond(context_id, request, status, reason)

    def _respond(self, context_id: int, request: commands.Command, status: int, comment: str = "") -> None:
        payload = commands.encode_response(request, status, comment)
        self.transport.send(ul.p_data_pdus(context_id, 0x01, payload, self.peer_max_pdu))
