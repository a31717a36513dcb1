"""A study from a DIMSE peer: C-FIND to find it, C-GET or C-MOVE to retrieve it (PS3.4 Annex C).

C-GET brings the instances back on our own association, as C-STORE sub-operations in which we
play the Storage SCP role (PS3.7 D.3.3.4 role selection): the peer needs no entry for fracnode
and no connection towards us, but every SOP class must be negotiated up front (at most 128
presentation contexts, PS3.8 9.3.2.2). C-MOVE asks the peer to open its own association to the
move destination, our AE title: the node's C-STORE SCP receives as from any sender; the peer
must know our AE title, host and port.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, cast

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.config import DimsePeer
from node.dispatch.dimse import scu_ae
from node.header import Header, MismatchedInstance
from node.pull import (
    MAX_PROBLEMS,
    Cancelled,
    Found,
    PeerUnreachable,
    Progress,
    Retrieved,
    RetrieveFailed,
    StudyNotFound,
    never,
    no_progress,
)
from node.spool import OutOfSpace, Spool, UnreadableInstance
from node.tls import TlsSetupError, tls_args, why_no_connection

log = logging.getLogger("fracnode.pull")
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False  # identifiers hold patient data
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

# PS3.4 C.6.2 Study Root Query/Retrieve Information Model: the SOP class of each DIMSE service a
# pull uses as SCU, each proposed alone on its own association with QUERY_RETRIEVE_TRANSFER_SYNTAXES
# (docs/conformance.md's tables are generated from these; tests/unit/test_conformance.py checks them)
QUERY_RETRIEVE_SOP_CLASSES: dict[str, UID] = {
    "C-FIND": StudyRootQueryRetrieveInformationModelFind,
    "C-GET": StudyRootQueryRetrieveInformationModelGet,
    "C-MOVE": StudyRootQueryRetrieveInformationModelMove,
}
QUERY_LEVEL = "STUDY"  # PS3.4 C.6.2.1: a study is found and retrieved whole, by its UID (unique key)
FIND_RETURN_KEYS = ("NumberOfStudyRelatedInstances", "SOPClassesInStudy")  # PS3.4 C.6.2.1.2, optional
PENDING = (0xFF00, 0xFF01)
MOVE_DESTINATION_UNKNOWN = 0xA801  # PS3.4 C.4.2.1.4
MAX_STORAGE_CLASSES = 63  # two presentation contexts each, plus the C-GET one: ≤ 128
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # Explicit, Implicit VR Little Endian
COMPRESSED = [  # proposed in a second context, so the peer can send an image as it holds it
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossless), JPEG 2000
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",  # JPEG lossless SV1, JPEG lossless
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",  # JPEG-LS lossless, near-lossless
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",  # JPEG baseline, extended
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.1.99",  # RLE lossless, deflated explicit VR LE
]
QUERY_RETRIEVE_TRANSFER_SYNTAXES = UNCOMPRESSED
# When the peer does not say which SOP classes the study holds (SOPClassesInStudy is optional in
# C-FIND): the image classes a fracture AI reads and the objects it writes.
COMMON_STORAGE_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray
    "1.2.840.10008.5.1.4.1.1.1.2",
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Mammography
    "1.2.840.10008.5.1.4.1.1.1.3",
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # Intra-oral X-Ray
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.2.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1",  # MR, Enhanced MR
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3.1",  # US, US multi-frame
    "1.2.840.10008.5.1.4.1.1.12.1",
    "1.2.840.10008.5.1.4.1.1.12.1.1",
    "1.2.840.10008.5.1.4.1.1.12.2",
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis
    "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.128",  # NM, PET
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",  # Basic, Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive (3D) SR
    "1.2.840.10008.5.1.4.1.1.88.35",
    "1.2.840.10008.5.1.4.1.1.88.59",  # Extensible SR, KOS
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
]


def storage_contexts(classes: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The presentation contexts a C-GET proposes for these SOP classes (PS3.8 9.3.2.2: ≤ 127
    beside the C-GET one). The peer accepts one transfer syntax per context and can send an
    instance unchanged only in a context accepted with the syntax it holds (Orthanc looks for
    exactly that, else transcodes to an uncompressed one, where its codecs can): so each
    compressed syntax gets a context of its own while they fit, else they share one."""
    separate = len(classes) * (1 + len(COMPRESSED)) <= 127
    contexts: list[tuple[str, list[str]]] = []
    for sop_class in classes:
        contexts.append((sop_class, UNCOMPRESSED))
        contexts += [(sop_class, [syntax]) for syntax in COMPRESSED] if separate else [(sop_class, COMPRESSED)]
    return contexts


def _connect(ae: AE, peer: DimsePeer, **kwargs: Any) -> Association:
    """Associate with the peer; PeerUnreachable saying why when no association is made."""
    connected: list[bool] = []
    handlers = list(kwargs.pop("evt_handlers", []))  # type: ignore[call-overload]
    handlers.append((evt.EVT_CONN_OPEN, lambda event: connected.append(True)))
    where = f"{peer.name!r} ({peer.ae_title}@{peer.host}:{peer.port}{', TLS' if peer.tls else ''})"
    try:
        secure = tls_args(peer.tls, peer.host, f"peer {peer.name!r}")
    except TlsSetupError as exc:
        raise PeerUnreachable(str(exc)) from exc
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=handlers, tls_args=secure, **kwargs)
    if assoc.is_established:
        return assoc
    if not connected and peer.tls is not None:
        reason = why_no_connection(peer.tls, peer.host, peer.port, f"peer {peer.name!r}", ae.connection_timeout or 10.0)
        raise PeerUnreachable(f"{where}: {reason}")
    if not connected:
        raise PeerUnreachable(f"cannot connect to {where}; is it running and reachable?")
    if assoc.is_rejected:
        raise PeerUnreachable(
            f"{where} rejected the association: does it know our AE title {ae.ae_title!r} as a calling AE?"
        )
    raise PeerUnreachable(f"{where} aborted the association")


def _study_query(study_uid: str, level_keys: Sequence[str] = ()) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = QUERY_LEVEL
    ds.StudyInstanceUID = study_uid
    for keyword in level_keys:
        setattr(ds, keyword, "")
    return ds


def _responses(
    assoc: Association,
    replies: Iterator[tuple[Dataset, Dataset | None]],
    what: str,
    peer: DimsePeer,
    cancelled: Cancelled,
) -> Iterator[tuple[int, Dataset, Dataset | None]]:
    """(status, status dataset, identifier) of each response; RetrieveFailed on abort or cancel."""
    for status, identifier in replies:
        if cancelled():
            assoc.abort()
            raise RetrieveFailed("the node stopped during the retrieval")
        if not status:  # Orthanc, for one, answers a request from an AE it does not know so
            raise PeerUnreachable(
                f"{peer.name!r} gave no {what} response (refused, aborted or timed out): does it"
                f" accept queries and retrievals from our AE title {assoc.requestor.ae_title!r}?"
                " (Orthanc: list it under DicomModalities)"
            )
        yield int(status.Status), status, identifier


def find_study(peer: DimsePeer, calling_ae: str, study_uid: str, timeout_s: float) -> Found:
    """Study Root C-FIND at STUDY level (PS3.4 C.6.2). Raises StudyNotFound, PeerUnreachable;
    Found(None) when the peer does not answer queries (a retrieve-only archive)."""
    ae = scu_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, QUERY_RETRIEVE_TRANSFER_SYNTAXES)
    assoc = _connect(ae, peer)
    matches: list[Dataset] = []
    final = 0
    try:
        query = _study_query(study_uid, FIND_RETURN_KEYS)
        replies = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        for code, _, identifier in _responses(assoc, replies, "C-FIND", peer, never):
            if code in PENDING and identifier is not None:
                matches.append(identifier)
            else:
                final = code
    except ValueError:  # no accepted context: the peer takes no queries
        return Found(None)
    finally:
        if assoc.is_established:
            assoc.release()
    if final != 0x0000:
        return Found(None)  # the query failed; the retrieval decides
    if not matches:
        raise StudyNotFound(f"study {study_uid} is not on {peer.name!r} (C-FIND found no match)")
    match = matches[0]
    count = match.get("NumberOfStudyRelatedInstances")
    classes = match.get("SOPClassesInStudy")
    classes = [classes] if isinstance(classes, str) else list(classes or [])
    return Found(int(count) if count not in (None, "") else None, tuple(str(c) for c in classes if c))


class _WrongStudy(Exception):
    pass


def get_study(
    peer: DimsePeer,
    calling_ae: str,
    study_uid: str,
    sop_classes: Sequence[str],
    spool: Spool,
    source: str,
    timeout_s: float,
    progress: Progress = no_progress,
    cancelled: Cancelled = never,
) -> Retrieved:
    """Study Root C-GET (PS3.4 C.4.3); the C-STORE sub-operations go into the spool."""
    classes = list(dict.fromkeys(sop_classes or COMMON_STORAGE_CLASSES))[:MAX_STORAGE_CLASSES]
    ae = scu_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, QUERY_RETRIEVE_TRANSFER_SYNTAXES)
    for sop_class, syntaxes in storage_contexts(classes):
        ae.add_requested_context(sop_class, syntaxes)
    transfer = f"c-get-{uuid.uuid4().hex[:12]}"
    counts = {"received": 0, "duplicates": 0, "failed": 0}
    problems: list[str] = []

    def check(header: Header) -> None:
        if header.study_uid != study_uid:
            raise _WrongStudy(f"the peer sent an instance of study {header.study_uid}")

    def on_store(event: evt.Event) -> int:
        """C-STORE sub-operation (PS3.4 B.2.3 statuses): the spool's promise, then success."""
        try:
            stored = spool.store(
                event.encoded_dataset(),
                source,
                transfer,
                str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "") or None,
                check,
            )
        except (OutOfSpace, UnreadableInstance, _WrongStudy) as exc:
            counts["failed"] += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append(str(exc))
            progress(counts["received"], counts["duplicates"], counts["failed"])
            return (
                0xA700
                if isinstance(exc, OutOfSpace)
                else 0xA900
                if isinstance(exc, _WrongStudy | MismatchedInstance)
                else 0xC210
            )
        counts["duplicates" if stored.duplicate else "received"] += 1
        progress(counts["received"], counts["duplicates"], counts["failed"])
        return 0x0000

    assoc = _connect(
        ae,
        peer,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        ext_neg=[build_role(UID(c), scp_role=True) for c in classes],
    )
    final, status_ds = 0, Dataset()
    try:
        replies = assoc.send_c_get(_study_query(study_uid), StudyRootQueryRetrieveInformationModelGet)
        for code, reply, _ in _responses(assoc, replies, "C-GET", peer, cancelled):
            status_ds = reply  # the last reply's counts and comment are the retrieval's outcome
            if code not in PENDING:
                final = code
    except ValueError as exc:
        raise RetrieveFailed(
            f"{peer.name!r} does not accept C-GET (Study Root): {exc}; set retrieve: c-move for this peer"
        ) from exc
    finally:
        if assoc.is_established:
            assoc.release()
    return _result(peer, study_uid, "C-GET", final, status_ds, counts, problems)


def move_study(
    peer: DimsePeer,
    calling_ae: str,
    move_destination: str,
    study_uid: str,
    timeout_s: float,
    progress: Progress = no_progress,
    cancelled: Cancelled = never,
) -> Retrieved:
    """Study Root C-MOVE (PS3.4 C.4.2) to `move_destination`, whose C-STORE SCP receives."""
    ae = scu_ae(calling_ae, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove, QUERY_RETRIEVE_TRANSFER_SYNTAXES)
    assoc = _connect(ae, peer)
    final, status_ds = 0, Dataset()
    try:
        replies = assoc.send_c_move(
            _study_query(study_uid), move_destination, StudyRootQueryRetrieveInformationModelMove
        )
        for code, status_ds, _ in _responses(assoc, replies, "C-MOVE", peer, cancelled):
            if code in PENDING:
                progress(
                    int(status_ds.get("NumberOfCompletedSuboperations", 0) or 0),
                    0,
                    int(status_ds.get("NumberOfFailedSuboperations", 0) or 0),
                )
            else:
                final = code
    except ValueError as exc:
        raise RetrieveFailed(
            f"{peer.name!r} does not accept C-MOVE (Study Root): {exc}; set retrieve: c-get for this peer"
        ) from exc
    finally:
        if assoc.is_established:
            assoc.release()
    if final == MOVE_DESTINATION_UNKNOWN:
        raise RetrieveFailed(
            f"{peer.name!r} does not know the move destination {move_destination!r} (status 0xA801):"
            f" declare AE title {move_destination} with the node's host and DICOM port in its"
            " configuration, or set retrieve: c-get for this peer"
        )
    # Orthanc answers an unknown destination with 0xC000, not 0xA801: _result's hint covers both
    received = int(status_ds.get("NumberOfCompletedSuboperations", 0) or 0)
    received += int(status_ds.get("NumberOfWarningSuboperations", 0) or 0)
    counts = {
        "received": received,
        "duplicates": 0,
        "failed": int(status_ds.get("NumberOfFailedSuboperations", 0) or 0),
    }
    problems = []
    if counts["failed"]:
        problems.append(
            f"{peer.name!r} could not store {counts['failed']} instance(s) at"
            f" {move_destination} (does node.calling_ae_titles admit {peer.ae_title}?)"
        )
    progress(counts["received"], 0, counts["failed"])
    return _result(peer, study_uid, "C-MOVE", final, status_ds, counts, problems)


def _result(
    peer: DimsePeer,
    study_uid: str,
    what: str,
    final: int,
    status_ds: Dataset,
    counts: dict[str, int],
    problems: list[str],
) -> Retrieved:
    """The retrieval's outcome from its final status (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
    peer_failed = int(status_ds.get("NumberOfFailedSuboperations", 0) or 0)
    if what == "C-GET" and peer_failed > counts["failed"]:
        problems.append(
            f"{peer_failed - counts['failed']} instance(s) failed on {peer.name!r}'s side"
            " (a SOP class or transfer syntax we did not negotiate? retrieve: c-move avoids it)"
        )
        counts["failed"] = peer_failed
    if final not in (0x0000, 0xB000) and not counts["received"] + counts["duplicates"]:
        comment = str(status_ds.get("ErrorComment", "")).strip()
        hint = (
            ""
            if what != "C-MOVE"
            else (
                f": does {peer.name!r} know our AE title as a move destination, with the node's host and"
                " DICOM port, and can it reach that port? (or set retrieve: c-get for this peer)"
            )
        )
        raise RetrieveFailed(
            f"{what} of study {study_uid} from {peer.name!r} failed: status"
            f" 0x{final:04X}{' ' + comment if comment else ''}{hint}"
        )
    if not counts["received"] + counts["duplicates"] + counts["failed"]:
        raise StudyNotFound(f"study {study_uid} is not on {peer.name!r} ({what} sent no instance)")
    return Retrieved(counts["received"], counts["duplicates"], counts["failed"], tuple(problems[:MAX_PROBLEMS]))
