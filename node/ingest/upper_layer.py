"""The DICOM Upper Layer for an association acceptor (PS3.8 7 and 9): framing and negotiation.

pynetdicom's PDU classes decode the A-ASSOCIATE-RQ and encode the A-ASSOCIATE-AC/RJ, and its
`negotiate_as_acceptor` picks each presentation context's transfer syntax. The data-phase PDUs
(P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT; PS3.8 9.3.5-9.3.8) are a few fixed bytes each and are
framed here, so that a C-STORE data set can go from the socket to the spool without being
copied into PDU objects.
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC as AssociateAcPdu
from pynetdicom.pdu import A_ASSOCIATE_RJ as AssociateRjPdu
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRqPdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

# PS3.8 9.3.1: PDU types
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1

# PS3.8 9.3.8: A-ABORT source and provider reasons
ABORT_SOURCE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

# PS3.8 9.3.4: A-ASSOCIATE-RJ (result, source, diagnostic)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE title not recognized
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognized
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)  # application context name not supported
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider, local limit exceeded

_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")
PDV_HEADER_SIZE = _PDV_HEADER.size
RELEASE_RP = _HEADER.pack(A_RELEASE_RP, 4) + b"\0\0\0\0"


class ProtocolError(Exception):
    """The peer broke PS3.8; the association is aborted with `reason` (PS3.8 9.3.8)."""

    def __init__(self, message: str, reason: int = REASON_NOT_SPECIFIED) -> None:
        super().__init__(message)
        self.reason = reason


class PeerClosed(Exception):
    """The transport connection closed before the association ended (an A-P-ABORT, PS3.8 7.4)."""


class PeerSilent(PeerClosed):
    """Nothing arrived within the network timeout (the ARTIM or the DIMSE timer ran out)."""


def abort_pdu(reason: int = REASON_NOT_SPECIFIED, source: int = ABORT_SOURCE_PROVIDER) -> bytes:
    return _HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


def p_data_pdus(context_id: int, control: int, payload: bytes, peer_max_pdu: int) -> bytes:
    """`payload` as P-DATA-TF PDUs of one PDV each, split to the peer's maximum PDU length.

    `control` is the message control header (PS3.8 E.2) without the last-fragment bit.
    """
    step = peer_max_pdu - PDV_HEADER_SIZE if peer_max_pdu > PDV_HEADER_SIZE else len(payload) or 1
    pdus = []
    for start in range(0, max(len(payload), 1), step):
        fragment = payload[start : start + step]
        last = 0x02 if start + step >= len(payload) else 0x00
        pdus.append(_HEADER.pack(P_DATA_TF, PDV_HEADER_SIZE + len(fragment)))
        pdus.append(_PDV_HEADER.pack(len(fragment) + 2, context_id, control | last))
        pdus.append(fragment)
    return b"".join(pdus)


def parse_pdv_header(data: bytes) -> tuple[int, int, int]:
    """(fragment length, presentation context ID, message control header) of a PDV item."""
    item_length, context_id, control = _PDV_HEADER.unpack(data)
    if item_length < 2:
        raise ProtocolError(f"PDV item length {item_length} is too short", REASON_INVALID_PARAMETER)
    return item_length - 2, context_id, control


# -- the transport ----------------------------------------------------------------------------


class Transport:
    """Blocking reads of exact sizes from a TCP socket, through one buffered reader."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self.sock = sock
        sock.settimeout(timeout_s)
        self._reader = cast(io.BufferedReader, sock.makefile("rb", buffering=65536))

    def read_pdu_header(self) -> tuple[int, int]:
        """(PDU type, PDU length) of the next PDU."""
        pdu_type, length = _HEADER.unpack(self.read(_HEADER.size))
        return pdu_type, length

    def read(self, size: int) -> bytes:
        try:
            data = self._reader.read(size)
        except TimeoutError as exc:
            raise PeerSilent("no data within the network timeout") from exc
        except (OSError, ValueError) as exc:  # reset, or a reader closed by stop()
            raise PeerClosed(str(exc) or type(exc).__name__) from exc
        if len(data) < size:
            raise PeerClosed("the peer closed the connection")
        return data

    def read_into(self, view: memoryview) -> None:
        try:
            count = self._reader.readinto(view)
        except TimeoutError as exc:
            raise PeerSilent("no data within the network timeout") from exc
        except (OSError, ValueError) as exc:
            raise PeerClosed(str(exc) or type(exc).__name__) from exc
        if count < len(view):
            raise PeerClosed("the peer closed the connection")

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise PeerClosed(str(exc)) from exc

    def wait_for_close(self, timeout_s: float) -> None:
        """After a final PDU the requestor closes the connection (PS3.8 Sta13); wait for that."""
        try:
            self.sock.settimeout(timeout_s)
            while self._reader.read1(65536):
                pass
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        try:
            self._reader.close()
        except OSError:
            pass


# -- association negotiation (PS3.8 7.1) --------------------------------------------------------


@dataclass(frozen=True)
class AssociationRequest:
    calling_ae: str
    called_ae: str
    application_context: str
    primitive: A_ASSOCIATE
    peer_max_pdu: int  # 0: no limit


@dataclass(frozen=True)
class Acceptance:
    contexts: dict[int, tuple[str, str]]  # context ID: (abstract syntax, transfer syntax)
    pdu: bytes  # the A-ASSOCIATE-AC


def decode_request(pdu: bytes) -> AssociationRequest:
    """Decode a whole A-ASSOCIATE-RQ PDU (header included)."""
    try:
        decoded = AssociateRqPdu()
        decoded.decode(pdu)
        primitive = decoded.to_primitive()
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        context = str(primitive.application_context_name or "")
        max_pdu = primitive.maximum_length_received or 0
    except Exception as exc:  # malformed variable items raise many kinds
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {exc}", REASON_INVALID_PARAMETER) from exc
    return AssociationRequest(calling, called, context, primitive, int(max_pdu))


def accept(request: AssociationRequest, supported: Sequence[PresentationContext], max_pdu: int) -> Acceptance:
    """Negotiate the presentation contexts and encode the A-ASSOCIATE-AC (PS3.8 9.3.3)."""
    primitive = request.primitive
    roles = {
        UID(str(item.sop_class_uid)): (item.scu_role, item.scp_role)
        for item in primitive.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    results, role_replies = negotiate_as_acceptor(
        primitive.presentation_context_definition_list, list(supported), roles or None
    )
    reply = A_ASSOCIATE()
    reply.application_context_name = APPLICATION_CONTEXT_NAME
    reply.calling_ae_title = primitive.calling_ae_title
    reply.called_ae_title = primitive.called_ae_title
    reply.result = 0x00
    reply.result_source = 0x01
    reply.presentation_context_definition_results_list = results
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    # asynchronous operations are not offered: omitting the item means one at a time (PS3.7 D.3.3.3)
    reply.user_information = [maximum, implementation, version, *role_replies]
    pdu = AssociateAcPdu()
    pdu.from_primitive(reply)
    accepted = {
        int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in results
        if cx.result == 0x00 and cx.context_id is not None
    }
    return Acceptance(accepted, pdu.encode())


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = diagnostic
    pdu = AssociateRjPdu()
    pdu.from_primitive(primitive)
    return pdu.encode()
