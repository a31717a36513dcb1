"""A study from a DICOMweb peer: QIDO-RS to find it (PS3.18 10.6), WADO-RS to retrieve it (10.4).

The WADO-RS response is `multipart/related; type="application/dicom"`, one Part 10 file per
part: the same body as a STOW-RS request. So it goes through the STOW-RS ingest's transaction
(node.ingest.stow): parsed as it streams in, each part written to the spool through `Incoming`
(temporary file, fsync, rename, index row), checked to belong to the study asked for.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import httpx

from node.config import DicomwebPeer
from node.ingest.multipart import MalformedMultipart, boundary_of, parse_content_type
from node.ingest.stow import StoreTransaction, StowIngest, TransferRecord
from node.ingest.trail import Trail
from node.logs import event
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
from node.spool import Spool
from node.store import Database
from node.webclient import PeerSetupError, client_for, refusal_hint, short_body

log = logging.getLogger("fracnode.pull")
audit = logging.getLogger("fracnode.audit")

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'  # PS3.18 8.7.3.5.2
DEFAULT_SYNTAX = 'multipart/related; type="application/dicom"'  # Explicit VR Little Endian
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
SOP_CLASSES_IN_STUDY = "00080062"
CALLED = "WADO-RS"  # the audit trail's called_ae column for a retrieval by WADO-RS
FEED_BYTES = 1 << 20


def _unreachable(peer: DicomwebPeer, exc: Exception) -> PeerUnreachable:
    if isinstance(exc, httpx.TimeoutException):
        return PeerUnreachable(f"{peer.name!r} ({peer.url}) did not answer within {peer.timeout_s:g}s")
    return PeerUnreachable(f"cannot reach {peer.name!r} at {peer.url} ({exc}); is it running and reachable?")


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def find_study(peer: DicomwebPeer, study_uid: str) -> Found:
    """Ask the peer whether it holds the study (QIDO-RS Search for Studies, PS3.18 10.6).

    Raises StudyNotFound, PeerUnreachable. A peer that answers the search with an error other
    than those gives Found(None): the retrieval itself then decides.
    """
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("StudyInstanceUID", study_uid),
        ("includefield", NUMBER_OF_STUDY_RELATED_INSTANCES),
        ("includefield", SOP_CLASSES_IN_STUDY),
    ]
    try:
        with client_for(peer) as client:
            response = client.get("/studies", params=params, headers={"Accept": "application/dicom+json"})
    except PeerSetupError as exc:
        raise PeerUnreachable(str(exc)) from exc
    except (httpx.HTTPError, OSError) as exc:
        raise _unreachable(peer, exc) from exc
    if response.status_code == 204:
        raise StudyNotFound(f"study {study_uid} is not on {peer.name!r} (QIDO-RS found no match)")
    if response.status_code in (401, 403) or response.status_code >= 500:
        raise PeerUnreachable(f"QIDO-RS: {refusal_hint(peer, response.status_code)}")
    if response.status_code != 200:
        return Found(None)
    try:
        matches = response.json()
    except ValueError:
        return Found(None)
    matches = [m for m in matches if isinstance(m, dict)] if isinstance(matches, list) else []
    if not matches:
        raise StudyNotFound(f"study {study_uid} is not on {peer.name!r} (QIDO-RS found no match)")
    count = _values(matches[0], NUMBER_OF_STUDY_RELATED_INSTANCES)
    classes = tuple(str(v) for v in _values(matches[0], SOP_CLASSES_IN_STUDY))
    return Found(int(count[0]) if count and str(count[0]).isdigit() else None, classes)


class _PullIngest(StowIngest):
    """The STOW-RS ingest's transaction, audited as a WADO-RS retrieval."""

    def ended(self, record: TransferRecord, outcome: str) -> None:
        received = sum(1 for o in record.outcomes if o.stored)
        self.trail.ended(record.id, time.time(), outcome, received, len(record.outcomes) - received)
        event(audit, logging.INFO, f"WADO-RS retrieval {outcome}", transfer=record.id,
              calling_ae=record.calling_ae, address=record.address, instances_received=received,
              instances_failed=len(record.outcomes) - received)


def _begin(db: Database, peer: DicomwebPeer, source: str) -> TransferRecord:
    url = httpx.URL(peer.url)
    record = TransferRecord(uuid.uuid4().hex, time.time(), source, url.host, url.port or 0)
    Trail(db).opened(record.id, record.started_at, source, record.address, record.port, CALLED)
    return record


def _request(client: httpx.Client, study_uid: str, accept: str) -> httpx.Response:
    request = client.build_request("GET", f"/studies/{study_uid}", headers={"Accept": accept})
    return client.send(request, stream=True)


def retrieve_study(
    peer: DicomwebPeer,
    study_uid: str,
    spool: Spool,
    db: Database,
    source: str,
    progress: Progress = no_progress,
    cancelled: Cancelled = never,
) -> Retrieved:
    """WADO-RS Retrieve Study into the spool, instances recorded as coming from `source`.

    Raises StudyNotFound, PeerUnreachable, RetrieveFailed (instances stored before the failure
    stay stored; a new pull skips them as duplicates).
    """
    try:
        client = client_for(peer)
    except PeerSetupError as exc:
        raise PeerUnreachable(str(exc)) from exc
    with client:
        try:
            response = _request(client, study_uid, ANY_SYNTAX)
            if response.status_code == 406:  # the peer cannot send every syntax as stored
                response.close()
                response = _request(client, study_uid, DEFAULT_SYNTAX)
        except (httpx.HTTPError, OSError) as exc:
            raise _unreachable(peer, exc) from exc
        try:
            return _read(peer, study_uid, response, spool, db, source, progress, cancelled)
        finally:
            response.close()


def _read(
    peer: DicomwebPeer, study_uid: str, response: httpx.Response, spool: Spool, db: Database,
    source: str, progress: Progress, cancelled: Cancelled,
) -> Retrieved:
    status = response.status_code
    if status in (204, 404):
        response.read()
        detail = short_body(response, 200)
        raise StudyNotFound(f"study {study_uid} is not on {peer.name!r} (WADO-RS: HTTP {status}"
                            f"{', ' + detail if detail else ''})")
    if status != 200:
        response.read()
        error = PeerUnreachable if status in (401, 403) or status >= 500 else RetrieveFailed
        detail = short_body(response, 200)
        raise error(f"WADO-RS: {refusal_hint(peer, status)}{': ' + detail if detail else ''}")
    media_type, params = parse_content_type(response.headers.get("content-type", ""))
    if media_type != "multipart/related":
        raise RetrieveFailed(f"WADO-RS: {peer.name!r} answered {media_type or 'no Content-Type'},"
                             " not multipart/related")
    try:
        boundary = boundary_of(params)
    except MalformedMultipart as exc:
        raise RetrieveFailed(f"WADO-RS: {exc}") from exc
    transaction = StoreTransaction(_PullIngest(spool, db), _begin(db, peer, source), boundary, study_uid)
    counted = 0
    try:
        for chunk in response.iter_bytes(FEED_BYTES):
            if cancelled():
                transaction.abort()
                raise RetrieveFailed("the node stopped during the retrieval")
            transaction.feed(chunk)
            if len(transaction.outcomes) != counted:
                counted = len(transaction.outcomes)
                progress(*_counts(transaction))
        transaction.finish()
    except MalformedMultipart as exc:
        raise RetrieveFailed(f"WADO-RS: the response body is malformed: {exc}") from exc
    except (httpx.HTTPError, OSError) as exc:
        transaction.abort()
        raise RetrieveFailed(f"WADO-RS: the connection to {peer.name!r} broke after"
                             f" {len(transaction.outcomes)} instance(s): {exc}") from exc
    received, duplicates, failed = _counts(transaction)
    progress(received, duplicates, failed)
    problems = tuple(dict.fromkeys(o.reason for o in transaction.outcomes if not o.stored))
    if not transaction.outcomes:
        raise StudyNotFound(f"study {study_uid} is not on {peer.name!r} (WADO-RS sent no instance)")
    return Retrieved(received, duplicates, failed, problems[:MAX_PROBLEMS])


def _counts(transaction: StoreTransaction) -> tuple[int, int, int]:
    stored = [o for o in transaction.outcomes if o.stored]
    duplicates = sum(1 for o in stored if o.duplicate)
    return len(stored) - duplicates, duplicates, len(transaction.outcomes) - len(stored)
