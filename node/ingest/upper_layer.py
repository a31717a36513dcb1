"""The DICOM Upper Layer for an association acceptor (PS3.8 7 and 9): framing and negotiation.

The A-ASSOCIATE-RQ is decoded and the A-ASSOCIATE-AC encoded here, item by item (PS3.8 9.3.2,
9.3.3): pynetdicom's PDU classes took about 10 ms of CPU for a DCMTK storescu request of 128
presentation contexts, a third of a short association's time. Negotiation follows pynetdicom's
acceptor (`negotiate_as_acceptor`) for contexts without SCP/SCU roles of their own, which are
the only kind the node offers: the first of the node's transfer syntaxes that the requestor
proposed; default roles, so role selection items get no reply. pynetdicom encodes the rare
A-ASSOCIATE-RJ. The data-phase PDUs (P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT; PS3.8 9.3.5-9.3.8) are
a few fixed bytes each and are framed here, so that a C-STORE data set can go from the socket to
the spool without being copied into PDU objects.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_RJ as AssociateRjPdu
from pynetdicom.pdu_primitives import A_ASSOCIATE

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
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)  # permanent, service provider (ACSE), protocol version
SMALL_BUFFER = 4096  # a connection's read buffer until its association is accepted
SEND_TIMEOUT_S = 10.0  # the least time a send may take (the peer must read what it asked for)
DIRECT_READ = 8192  # a value rest at least this long is received into its place directly
TIMEOUT_SLACK_S = 0.5  # how far past its deadline a read may end (see Transport._recv_into)

_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")
PDV_HEADER_SIZE = _PDV_HEADER.size
RELEASE_RP = _HEADER.pack(A_RELEASE_RP, 4) + b"\0\0\0\0"
_ITEM = struct.Struct(">BxH")  # PS3.8 9.3.2.1-9.3.2.3: item type, reserved, item length

# PS3.8 9.3.2 and 9.3.3: item types of the A-ASSOCIATE-RQ/AC variable fields
ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
ITEM_MAXIMUM_LENGTH = 0x51
ITEM_IMPLEMENTATION_CLASS_UID = 0x52
ITEM_IMPLEMENTATION_VERSION_NAME = 0x55
ASSOCIATE_FIXED_FIELDS = 68  # protocol version, reserved, called and calling AE titles, reserved

# PS3.8 Table 9-18: presentation context results
CONTEXT_ACCEPTED = 0x00
CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04


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
    """Reads of exact sizes from a socket (TCP or TLS) through a small buffer, under a deadline.

    Every read must be done by `deadline` (time.monotonic()), which the association sets for
    each phase (negotiation, the wait for a PDU, one PDU): a peer that trickles bytes cannot
    stretch it, as a timeout restarted by every byte could be. Memory grows with what arrives,
    never with what a length field announces.
    """

    def __init__(self, sock: socket.socket, buffer_size: int = SMALL_BUFFER) -> None:
        self.sock = sock
        self._buffer = bytearray(buffer_size)
        self._start = 0
        self._end = 0
        self.deadline = math.inf
        self._timeout = math.inf  # the socket's timeout as last set
        self._waiting_for = "data"

    def expect(self, seconds: float, what: str) -> None:
        """The reads until the next `expect` must be done within `seconds` from now."""
        self.deadline = time.monotonic() + seconds
        self._waiting_for = what

    def grow(self, size: int) -> None:
        """A larger read buffer (an association's data phase), keeping what is buffered."""
        if size > len(self._buffer):
            buffered = self._buffer[self._start : self._end]
            self._buffer = bytearray(size)
            self._buffer[: len(buffered)] = buffered
            self._start, self._end = 0, len(buffered)

    def _recv_into(self, view: memoryview) -> int:
        """One recv under the deadline. Setting a socket's timeout costs system calls, so it is
        changed only when the deadline comes nearer than it by TIMEOUT_SLACK_S, or when it ran
        out early (a new phase has a later deadline): a read never ends later than that slack
        past its deadline."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise PeerSilent(f"{self._waiting_for} did not arrive in time")
            try:
                if self._timeout > remaining + TIMEOUT_SLACK_S:
                    self.sock.settimeout(remaining)
                    self._timeout = remaining
                count = self.sock.recv_into(view)
            except TimeoutError:
                self._timeout = math.inf  # set afresh from the deadline on the next turn
                continue
            except (OSError, ValueError) as exc:  # reset, TLS alert, or a socket closed by stop()
                raise PeerClosed(str(exc) or type(exc).__name__) from exc
            if count == 0:
                raise PeerClosed("the peer closed the connection")
            return count

    def _fill(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buffer):
            rest = self._end - self._start
            self._buffer[:rest] = self._buffer[self._start : self._end]
            self._start, self._end = 0, rest
        self._end += self._recv_into(memoryview(self._buffer)[self._end :])

    def read_pdu_header(self) -> tuple[int, int]:
        """(PDU type, PDU length) of the next PDU."""
        pdu_type, length = _HEADER.unpack(self.read(_HEADER.size))
        return pdu_type, length

    def read(self, size: int) -> bytes:
        """`size` bytes; kept in memory only as they arrive (a length field is only a claim)."""
        if self._end - self._start >= size:
            data = bytes(self._buffer[self._start : self._start + size])
            self._start += size
            return data
        gathered = bytearray()
        while len(gathered) < size:
            if self._start == self._end:
                self._fill()
            take = min(size - len(gathered), self._end - self._start)
            gathered += self._buffer[self._start : self._start + take]
            self._start += take
        return bytes(gathered)

    def read_into(self, view: memoryview) -> None:
        """Fill `view`: from the buffer first, then straight from the socket (no second copy),
        but through the buffer for a small rest (so that the next header comes with it)."""
        size = len(view)
        filled = min(size, self._end - self._start)
        if filled:
            view[:filled] = self._buffer[self._start : self._start + filled]
            self._start += filled
        while filled < size:
            if size - filled >= DIRECT_READ:
                filled += self._recv_into(view[filled:])
                continue
            self._fill()
            take = min(size - filled, self._end - self._start)
            view[filled : filled + take] = self._buffer[self._start : self._start + take]
            self._start += take
            filled += take

    def send(self, data: bytes) -> None:
        try:
            if self._timeout < SEND_TIMEOUT_S:  # the peer gets this long to read what it asked for
                self.sock.settimeout(SEND_TIMEOUT_S)
                self._timeout = SEND_TIMEOUT_S
            self.sock.sendall(data)
        except OSError as exc:
            raise PeerClosed(str(exc)) from exc

    def wait_for_close(self, timeout_s: float) -> None:
        """After a final PDU the requestor closes the connection (PS3.8 Sta13); wait for that."""
        deadline = time.monotonic() + timeout_s
        scratch = memoryview(bytearray(4096))
        self._timeout = math.inf
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                self.sock.settimeout(remaining)
                if not self.sock.recv_into(scratch):
                    return
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- association negotiation (PS3.8 7.1) --------------------------------------------------------


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociationRequest:
    calling_ae: str
    called_ae: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    peer_max_pdu: int  # 0: no limit
    ae_titles: bytes  # the called and calling AE title fields as received, returned in the AC
    protocol_version: int = 1  # PS3.8 9.3.2: bit 0 set means version 1, the only one there is


@dataclass(frozen=True)
class Acceptance:
    contexts: dict[int, tuple[str, str]]  # context ID: (abstract syntax, transfer syntax)
    pdu: bytes  # the A-ASSOCIATE-AC


def _items(data: bytes, where: str) -> Iterator[tuple[int, bytes]]:
    """(item type, item value) of each item in `data` (PS3.8 9.3.2)."""
    position = 0
    while position < len(data):
        if position + _ITEM.size > len(data):
            raise ProtocolError(
                f"malformed A-ASSOCIATE-RQ: {where} ends inside an item header", REASON_INVALID_PARAMETER
            )
        item_type, length = _ITEM.unpack_from(data, position)
        start = position + _ITEM.size
        position = start + length
        if position > len(data):
            raise ProtocolError(
                f"malformed A-ASSOCIATE-RQ: item 0x{item_type:02X} runs past the end of {where}",
                REASON_INVALID_PARAMETER,
            )
        yield item_type, data[start:position]


def _uid(value: bytes) -> str:
    """A UID as PDUs carry it; some implementations pad it with a NUL (PS3.8 Annex F)."""
    try:
        return value.rstrip(b"\0 ").decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"malformed A-ASSOCIATE-RQ: a UID that is not ASCII: {value[:64]!r}", REASON_INVALID_PARAMETER
        ) from exc


def _ae_title(value: bytes) -> str:
    return value.decode("ascii", "replace").strip(" \0")


def _presentation_context(value: bytes) -> ProposedContext:
    """A Presentation Context Item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""
    if len(value) < 4:
        raise ProtocolError(
            "malformed A-ASSOCIATE-RQ: a presentation context item without its ID", REASON_INVALID_PARAMETER
        )
    context_id = value[0]
    if context_id % 2 == 0:  # PS3.8 9.3.2.2: odd integers between 1 and 255
        raise ProtocolError(
            f"malformed A-ASSOCIATE-RQ: presentation context ID {context_id} is not odd", REASON_INVALID_PARAMETER
        )
    abstract_syntaxes: list[str] = []
    transfer_syntaxes: list[str] = []
    for item_type, item in _items(value[4:], f"presentation context {context_id}"):
        if item_type == ITEM_ABSTRACT_SYNTAX:
            abstract_syntaxes.append(_uid(item))
        elif item_type == ITEM_TRANSFER_SYNTAX:
            transfer_syntaxes.append(_uid(item))
    if len(abstract_syntaxes) != 1 or not transfer_syntaxes:
        raise ProtocolError(
            f"malformed A-ASSOCIATE-RQ: presentation context {context_id} has {len(abstract_syntaxes)}"
            f" abstract syntaxes and {len(transfer_syntaxes)} transfer syntaxes (one and at least one)",
            REASON_INVALID_PARAMETER,
        )
    return ProposedContext(context_id, abstract_syntaxes[0], tuple(transfer_syntaxes))


def decode_request(pdu: bytes) -> AssociationRequest:
    """Decode a whole A-ASSOCIATE-RQ PDU (header included; PS3.8 9.3.2).

    Items the node has no use for (asynchronous operations window, role selection, extended
    negotiation, user identity, unknown types) are skipped; their absence from the AC declines them.
    """
    fixed_end = _HEADER.size + ASSOCIATE_FIXED_FIELDS
    if len(pdu) < fixed_end or pdu[0] != A_ASSOCIATE_RQ:
        raise ProtocolError("malformed A-ASSOCIATE-RQ: shorter than its fixed fields", REASON_INVALID_PARAMETER)
    if _HEADER.unpack_from(pdu)[1] != len(pdu) - _HEADER.size:
        raise ProtocolError("malformed A-ASSOCIATE-RQ: the PDU length does not match", REASON_INVALID_PARAMETER)
    ae_titles = pdu[10:42]
    application_context = ""
    contexts: dict[int, ProposedContext] = {}
    peer_max_pdu = 0
    for item_type, value in _items(pdu[fixed_end:], "the PDU"):
        if item_type == ITEM_APPLICATION_CONTEXT:
            application_context = _uid(value)
        elif item_type == ITEM_PRESENTATION_CONTEXT_RQ:
            context = _presentation_context(value)
            if context.context_id in contexts:
                raise ProtocolError(
                    f"malformed A-ASSOCIATE-RQ: presentation context {context.context_id} is proposed twice",
                    REASON_INVALID_PARAMETER,
                )
            contexts[context.context_id] = context
        elif item_type == ITEM_USER_INFORMATION:
            for sub_type, sub_value in _items(value, "the user information item"):
                if sub_type == ITEM_MAXIMUM_LENGTH and len(sub_value) == 4:
                    peer_max_pdu = int.from_bytes(sub_value, "big")
    return AssociationRequest(
        calling_ae=_ae_title(ae_titles[16:]),
        called_ae=_ae_title(ae_titles[:16]),
        application_context=application_context,
        contexts=tuple(contexts.values()),
        peer_max_pdu=peer_max_pdu,
        ae_titles=ae_titles,
        protocol_version=int.from_bytes(pdu[6:8], "big"),
    )


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, len(value)) + value


def _context_result(context_id: int, result: int, transfer_syntax: str) -> bytes:
    """A Presentation Context Item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""
    value = bytes((context_id, 0, result, 0)) + _item(ITEM_TRANSFER_SYNTAX, transfer_syntax.encode("ascii"))
    return _item(ITEM_PRESENTATION_CONTEXT_AC, value)


def accept(request: AssociationRequest, supported: Mapping[str, Sequence[str]], max_pdu: int) -> Acceptance:
    """Negotiate the presentation contexts and encode the A-ASSOCIATE-AC (PS3.8 9.3.3).

    `supported`: abstract syntax → the transfer syntaxes the node accepts for it, preferred first.
    Each proposed context gets the first of those the requestor proposed (PS3.8 Table 9-18).
    """
    accepted: dict[int, tuple[str, str]] = {}
    results = []
    for context in sorted(request.contexts, key=lambda c: c.context_id):
        offered = supported.get(context.abstract_syntax)
        if offered is None:
            results.append(
                _context_result(context.context_id, CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, context.transfer_syntaxes[0])
            )
            continue
        chosen = next((syntax for syntax in offered if syntax in context.transfer_syntaxes), None)
        if chosen is None:
            results.append(
                _context_result(
                    context.context_id, CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED, context.transfer_syntaxes[0]
                )
            )
            continue
        accepted[context.context_id] = (context.abstract_syntax, chosen)
        results.append(_context_result(context.context_id, CONTEXT_ACCEPTED, chosen))
    # asynchronous operations are not offered: omitting the item means one at a time (PS3.7 D.3.3.3)
    user_information = _item(
        ITEM_USER_INFORMATION,
        b"".join(
            (
                _item(ITEM_MAXIMUM_LENGTH, max_pdu.to_bytes(4, "big")),
                _item(ITEM_IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_CLASS_UID.encode("ascii")),
                _item(ITEM_IMPLEMENTATION_VERSION_NAME, IMPLEMENTATION_VERSION_NAME.encode("ascii")),
            )
        ),
    )
    body = b"".join(
        (
            b"\0\1\0\0",  # protocol version 1, reserved
            request.ae_titles,  # PS3.8 9.3.3: returned with the values received
            bytes(32),
            _item(ITEM_APPLICATION_CONTEXT, APPLICATION_CONTEXT_NAME.encode("ascii")),
            *results,
            user_information,
        )
    )
    return Acceptance(accepted, _HEADER.pack(A_ASSOCIATE_AC, len(body)) + body)


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = diagnostic
    pdu = AssociateRjPdu()
    pdu.from_primitive(primitive)
    return pdu.encode()
