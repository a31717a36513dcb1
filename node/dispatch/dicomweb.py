"""STOW-RS as a client (PS3.18 10.5): results sent to a DICOMweb peer in one request per batch.

The body is `multipart/related; type="application/dicom"`, one Part 10 file per part, streamed
from the outbox files with a Content-Length (no chunked upload: not every server takes one).

What the peer answers decides, per instance, between delivered, try again later, and give up
(`classify`): the rule is that we give up only when the peer judged the *object* (it would judge
the same bytes the same way again); when it refused the *request* (down, busy, out of resources,
wrong credentials or URL) the instance stays queued and is retried with backoff, the reason
recorded, so nothing needs re-queueing once the peer or the configuration is fixed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from node.config import DicomwebPeer
from node.webclient import PeerSetupError, client_for, refusal_hint, short_body

CHUNK = 1 << 20
REFERENCED_SOP_SEQUENCE = "00081199"  # PS3.18 Table 10.5.3-2
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
# HTTP statuses that judge the request's content: sending the same again gets the same answer
_CONTENT_REFUSED = {400, 409, 413, 415}


@dataclass(frozen=True)
class StowItem:
    path: Path
    sop_instance_uid: str


@dataclass(frozen=True)
class StowOutcome:
    """One instance's fate: delivered, or not with `retry` telling whether trying again helps."""

    sop_instance_uid: str
    delivered: bool
    retry: bool
    message: str


class StowFailed(Exception):
    """No instance of the request was stored; `retry` says whether trying again can help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def failure_is_transient(reason: int) -> bool:
    """PS3.18 Table I.2-2 / PS3.4 Annex B.2.3 Failure Reason: may a later attempt succeed?

    0xA7xx (out of resources) and 0x0110 (processing failure) describe the peer's state;
    0xA9xx (data set does not match the SOP class), 0xCxxx (cannot understand), 0x0122 (SOP
    class not supported), 0x0124 (not authorized) and the rest describe the object.
    """
    return (reason & 0xFF00) == 0xA700 or reason == 0x0110


def _value(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") if isinstance(item.get(tag), dict) else None
    return values[0] if isinstance(values, list) and values else None


def _sequence(body: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = body.get(tag)
    items = element.get("Value") if isinstance(element, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def classify(
    status: int, body: Mapping[str, Any] | None, sop_instance_uids: Sequence[str], peer: str
) -> list[StowOutcome]:
    """Each sent instance's outcome from the Store Instances Response (PS3.18 10.5.3).

    200: all stored (those listed as failed excepted); 202: some stored, the failed ones listed;
    409: none stored. Instances the response lists in neither sequence count as stored on 200
    only. Other statuses are the caller's (`StowFailed`).
    """
    stored: set[str] = set()
    failed: dict[str, int] = {}
    if body is not None:
        for item in _sequence(body, REFERENCED_SOP_SEQUENCE):
            uid = _value(item, REFERENCED_SOP_INSTANCE_UID)
            if isinstance(uid, str):
                stored.add(uid)
        for item in _sequence(body, FAILED_SOP_SEQUENCE):
            uid, reason = _value(item, REFERENCED_SOP_INSTANCE_UID), _value(item, FAILURE_REASON)
            if isinstance(uid, str):
                failed[uid] = int(reason) if isinstance(reason, int) else 0x0110
    outcomes = []
    for uid in sop_instance_uids:
        if uid in failed:
            reason = failed[uid]
            outcomes.append(
                StowOutcome(
                    uid,
                    False,
                    failure_is_transient(reason),
                    f"{peer} refused the instance: Failure Reason 0x{reason:04X} (PS3.18 Table I.2-2)",
                )
            )
        elif uid in stored or status == 200:
            outcomes.append(StowOutcome(uid, True, False, ""))
        elif status == 409:
            outcomes.append(StowOutcome(uid, False, False, f"{peer} stored none of the request's instances (HTTP 409)"))
        else:
            outcomes.append(
                StowOutcome(uid, False, True, f"{peer} answered HTTP {status} without confirming the instance")
            )
    return outcomes


def _body(items: Sequence[StowItem], boundary: bytes) -> tuple[int, Iterator[bytes]]:
    part_head = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
    closing = b"--" + boundary + b"--\r\n"
    sizes = [item.path.stat().st_size for item in items]
    length = sum(len(part_head) + size + 2 for size in sizes) + len(closing)

    def chunks() -> Iterator[bytes]:
        for item in items:
            yield part_head
            with item.path.open("rb") as source:
                while chunk := source.read(CHUNK):
                    yield chunk
            yield b"\r\n"
        yield closing

    return length, chunks()


def _json(response: httpx.Response) -> Mapping[str, Any] | None:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def stow(peer: DicomwebPeer, items: Sequence[StowItem]) -> list[StowOutcome]:
    """POST the files to `{url}/studies`; one outcome per item. Raises StowFailed."""
    boundary = uuid.uuid4().hex.encode()
    try:
        length, chunks = _body(items, boundary)
    except OSError as exc:
        raise StowFailed(f"cannot read an outbox file: {exc}", retry=True) from exc
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary.decode()}',
        "Content-Length": str(length),
        "Accept": "application/dicom+json",
    }
    try:
        with client_for(peer) as client:
            response = client.post("/studies", content=chunks, headers=headers)
    except PeerSetupError as exc:
        raise StowFailed(str(exc), retry=True) from exc
    except httpx.TimeoutException as exc:
        raise StowFailed(
            f"{peer.url}: no answer within {peer.timeout_s:g}s ({type(exc).__name__})", retry=True
        ) from exc
    except (httpx.HTTPError, OSError) as exc:
        raise StowFailed(f"cannot reach {peer.url} ({exc}); is it running and reachable?", retry=True) from exc
    status = response.status_code
    if status in (200, 202, 409):
        return classify(status, _json(response), [i.sop_instance_uid for i in items], peer.name)
    detail = short_body(response)
    message = f"{refusal_hint(peer, status)}{': ' + detail if detail else ''}"
    raise StowFailed(f"STOW-RS to {peer.url}: {message}", retry=status not in _CONTENT_REFUSED)
