"""STOW-RS ingest, independent of HTTP: one Store Transaction (PS3.18 10.5) into the spool.

Each `application/dicom` part of the request body is a DICOM file (PS3.10: preamble, "DICM",
File Meta Information, data set). Its meta group is read from the first bytes, then the data
set streams through `node.incoming.Incoming` into the spool exactly as a C-STORE data set does:
temporary file, fsync, rename, index row, then "stored". The file is kept byte for byte as
received. A part that cannot be stored gets a Failure Reason (PS3.18 Annex I.2.2) and the others
go on. The request is one transfer for the audit trail and for `complete_on_release`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from node.audit import Audit
from node.header import Header, MismatchedInstance
from node.incoming import Incoming
from node.ingest.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from node.ingest.multipart import MalformedMultipart, MultipartParser, parse_content_type
from node.ingest.trail import Trail
from node.logs import event
from node.part10 import MAX_META, PART10_PREFIX, FileMeta, read_file_meta
from node.redact import error_text
from node.spool import OutOfSpace, Spool, Stored, UnreadableInstance
from node.store import Database, DatabaseUnavailable, StorageFull

log = logging.getLogger("fracnode.ingest")
audit = logging.getLogger("fracnode.audit")

# PS3.18 Table I.2-2, Store Instances Response Failure Reason values
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_CANNOT_UNDERSTAND = 0xC210  # Cxxx; the code C-STORE answers for the same problem
FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
FAILURE_PROCESSING = 0x0110
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
FAILURE_DATA_SET_MISMATCH = 0xA900  # the data set is not the instance its File Meta names
# implementation specific (I.2.2 allows it; the conformance statement names it), in the A9xx
# "does not match" range as Microsoft's DICOM service uses it: not of the study in the URL
FAILURE_STUDY_MISMATCH = 0xA901

CALLED = "STOW-RS"  # what the audit trail's called_ae column says for a web transfer
_ACCEPTED_ENCODINGS = frozenset({"", "binary", "8bit", "7bit"})


class Refused(Exception):
    """An instance the node will not store; `reason` is its Failure Reason (PS3.18 I.2.2)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def calling_ae_for(principal: str) -> str:
    """The source recorded for routing (`calling_ae` rules) and the audit trail; 16 characters
    at most, like an AE title, so it fits wherever one is shown."""
    return f"STOW:{principal}"[:16]


@dataclass(frozen=True)
class PartOutcome:
    """What became of one part: stored (`failure` 0) or refused with a Failure Reason."""

    part: int  # 1-based position in the body
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str = ""
    failure: int = 0
    reason: str = ""
    duplicate: bool = False

    @property
    def stored(self) -> bool:
        return self.failure == 0


@dataclass
class TransferRecord:
    """The audit trail's view of one STOW-RS request (a row in `associations`)."""

    id: str
    started_at: float
    calling_ae: str
    address: str
    port: int
    outcomes: list[PartOutcome] = field(default_factory=list)


class StoreTransaction:
    """One request's body → parts → spool. Blocking: run `feed`/`finish` off the event loop.

    `feed()` each chunk of the body, then `finish()` for the outcomes; `abort()` when the body
    stops short (client gone, size limit). Parts completed before either stay stored.
    """

    def __init__(self, ingest: StowIngest, record: TransferRecord, boundary: bytes,
                 study_uid: str | None) -> None:
        self.ingest = ingest
        self.record = record
        self.study_uid = study_uid
        self.parser = MultipartParser(boundary, self)
        self.received = 0  # body bytes
        self._prefix = bytearray()  # the part's first bytes, until its file meta is read
        self._meta: FileMeta | None = None
        self._incoming: Incoming | None = None
        self._failure: Refused | None = None
        self._ended = False

    @property
    def outcomes(self) -> list[PartOutcome]:
        return self.record.outcomes

    # -- the body ---------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self._ended

    def feed(self, chunk: bytes) -> None:
        """Raises MalformedMultipart (the transfer then ends; outcomes so far stay valid)."""
        self.received += len(chunk)
        try:
            self.parser.feed(chunk)
        except MalformedMultipart:
            self.abort("malformed")
            raise

    def finish(self) -> list[PartOutcome]:
        """The body is complete. Raises MalformedMultipart (outcomes so far stay valid)."""
        try:
            self.parser.close()
        except MalformedMultipart:
            self.abort("malformed")
            raise
        self._end_transfer("released")
        return self.outcomes

    def abort(self, outcome: str = "aborted") -> None:
        self._discard()
        self._end_transfer(outcome)

    def _end_transfer(self, outcome: str) -> None:
        if not self._ended:
            self._ended = True
            self.ingest.ended(self.record, outcome)

    # -- PartSink: one part after the other ----------------------------------------------------

    def begin(self, headers: dict[str, str]) -> None:
        self._prefix.clear()
        self._meta, self._incoming, self._failure = None, None, None
        media_type, _ = parse_content_type(headers.get("content-type", "application/dicom"))
        encoding = headers.get("content-transfer-encoding", "").lower()
        if media_type != "application/dicom":
            self._failure = Refused(FAILURE_CANNOT_UNDERSTAND,
                                    f"part {self.parser.parts} is {media_type or 'of no valid media type'};"
                                    " only application/dicom parts are stored")
        elif encoding not in _ACCEPTED_ENCODINGS:
            self._failure = Refused(FAILURE_CANNOT_UNDERSTAND,
                                    f"part {self.parser.parts}: Content-Transfer-Encoding {encoding!r}"
                                    " is not supported; send the file as binary")

    def data(self, chunk: bytes) -> None:
        if self._failure is not None:
            return  # the rest of a refused part is read and dropped
        try:
            if self._incoming is not None:
                self._incoming.add(chunk)
            else:
                self._prefix += chunk
                self._start_instance()
        except Exception as exc:  # noqa: BLE001 - every failure becomes this part's Failure Reason
            self._discard()
            self._failure = _as_refusal(exc)

    def _start_instance(self) -> None:
        meta = read_file_meta(bytes(self._prefix[: MAX_META + len(PART10_PREFIX)]))
        if meta is None:
            return
        self._meta = meta
        if meta.transfer_syntax not in self.ingest.transfer_syntaxes:
            raise Refused(FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED,
                          f"transfer syntax {meta.transfer_syntax} is not supported")
        if meta.sop_class_uid and meta.sop_class_uid not in self.ingest.storage_sop_classes:
            raise Refused(FAILURE_SOP_CLASS_NOT_SUPPORTED,
                          f"SOP class {meta.sop_class_uid} is not a storage SOP class")
        self._incoming = Incoming(
            self.ingest.spool, meta.transfer_syntax, meta.sop_class_uid, meta.sop_instance_uid,
            self.record.calling_ae, self.record.id, received_meta=meta.raw, check=self._check,
            announced_by="File Meta Information",
        )
        rest = bytes(self._prefix[meta.consumed :])
        self._prefix.clear()
        if rest:
            self._incoming.add(rest)

    def _check(self, header: Header) -> None:
        """Before anything is written: the SOP class is a storage class, the study the URL's."""
        if header.sop_class_uid not in self.ingest.storage_sop_classes:
            raise Refused(FAILURE_SOP_CLASS_NOT_SUPPORTED,
                          f"SOP class {header.sop_class_uid} is not a storage SOP class")
        if self.study_uid is not None and header.study_uid != self.study_uid:
            raise Refused(FAILURE_STUDY_MISMATCH,
                          f"the instance belongs to study {header.study_uid}, not to the request's"
                          f" study {self.study_uid} (PS3.18 10.5.1)")

    def end(self) -> None:
        part = self.parser.parts
        meta = self._meta
        class_uid, instance_uid = (meta.sop_class_uid, meta.sop_instance_uid) if meta else ("", "")
        if self._failure is None and self._incoming is None:
            self._failure = self._short_part()
        if self._failure is None and self._incoming is not None:
            incoming, self._incoming = self._incoming, None
            try:
                stored = incoming.commit()
            except Exception as exc:  # noqa: BLE001 - every failure becomes a Failure Reason
                incoming.discard()
                self._failure = _as_refusal(exc)
            else:
                self._stored(part, stored)
                return
        assert self._failure is not None
        refusal, self._failure = self._failure, None
        self._prefix.clear()
        outcome = PartOutcome(part, class_uid, instance_uid, failure=refusal.reason, reason=str(refusal))
        self.outcomes.append(outcome)
        event(log, logging.WARNING, "instance refused", failure_reason=f"0x{refusal.reason:04X}",
              reason=str(refusal), sop_instance_uid=instance_uid or None, transfer=self.record.id, part=part)

    def _short_part(self) -> Refused:
        """Why a part that ended before its data set began is refused."""
        if not self._prefix:
            return Refused(FAILURE_CANNOT_UNDERSTAND, f"part {self.parser.parts} is empty")
        try:
            read_file_meta(bytes(self._prefix), complete=True)
        except UnreadableInstance as exc:
            return Refused(FAILURE_CANNOT_UNDERSTAND, f"part {self.parser.parts}: {exc}")
        return Refused(FAILURE_CANNOT_UNDERSTAND, f"part {self.parser.parts} holds no data set")

    def _stored(self, part: int, stored: Stored) -> None:
        header = stored.header
        self.outcomes.append(PartOutcome(part, header.sop_class_uid, header.sop_instance_uid,
                                         header.study_uid, duplicate=stored.duplicate))
        if not stored.duplicate:
            self.ingest.on_stored()

    def _discard(self) -> None:
        if self._incoming is not None:
            self._incoming.discard()
            self._incoming = None
        self._prefix.clear()


def _as_refusal(exc: BaseException) -> Refused:
    """Map a failure to its Failure Reason (PS3.18 I.2.2): this edge's only translation."""
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, (OutOfSpace, StorageFull, DatabaseUnavailable)):
        return Refused(FAILURE_OUT_OF_RESOURCES, str(exc))
    if isinstance(exc, MismatchedInstance):
        return Refused(FAILURE_DATA_SET_MISMATCH, str(exc))
    if isinstance(exc, UnreadableInstance):
        return Refused(FAILURE_CANNOT_UNDERSTAND, str(exc))
    log.error("STOW-RS part failed", exc_info=exc)
    return Refused(FAILURE_PROCESSING, error_text(exc))


class StowIngest:
    """The node's STOW-RS side: starts transactions and keeps their audit trail."""

    def __init__(
        self,
        spool: Spool,
        db: Database,
        on_released: Callable[[set[str]], None] = lambda studies: None,
        on_stored: Callable[[], None] = lambda: None,
        audit: Audit | None = None,
        on_unchanged: Callable[[set[str]], None] = lambda studies: None,
    ) -> None:
        self.spool = spool
        self.audit = audit
        self.db = db
        self.trail = Trail(db)
        self.on_released = on_released
        self.on_unchanged = on_unchanged  # studies a request resent without a new byte
        self.on_stored = on_stored
        self.storage_sop_classes = frozenset(STORAGE_SOP_CLASSES)
        self.transfer_syntaxes = frozenset(TRANSFER_SYNTAXES)

    def begin(self, principal: str, address: tuple[str, int], boundary: bytes,
              study_uid: str | None) -> StoreTransaction:
        record = TransferRecord(uuid.uuid4().hex, time.time(), calling_ae_for(principal),
                                address[0], int(address[1]))
        self.trail.opened(record.id, record.started_at, record.calling_ae, record.address, record.port, CALLED)
        event(audit, logging.INFO, "STOW-RS request accepted", transfer=record.id,
              calling_ae=record.calling_ae, address=record.address, port=record.port,
              study_uid=study_uid)
        return StoreTransaction(self, record, boundary, study_uid)

    def ended(self, record: TransferRecord, outcome: str) -> None:
        """`released` (the body was read to its end), `aborted` or `malformed`."""
        received = sum(1 for o in record.outcomes if o.stored)
        failed = len(record.outcomes) - received
        self.trail.ended(record.id, time.time(), outcome, received, failed)
        event(audit, logging.INFO, f"STOW-RS request {outcome}", transfer=record.id,
              calling_ae=record.calling_ae, address=record.address,
              instances_received=received, instances_failed=failed)
        studies = Counter(o.study_uid for o in record.outcomes if o.stored)
        if self.audit is not None:
            self.audit.transferred_in(record.calling_ae, record.address, studies, failed)
        if studies and outcome == "released":
            self.on_released(set(studies))
            unchanged = set(studies) - {o.study_uid for o in record.outcomes if o.stored and not o.duplicate}
            if unchanged:
                self.on_unchanged(unchanged)
