"""DICOMweb STOW-RS: the Studies Store Transaction (PS3.18 10.5) under /dicomweb.

`POST /dicomweb/studies[/{StudyInstanceUID}]` with `multipart/related; type="application/dicom"`.
The body is read as it arrives and handed to `node.ingest.stow` in a worker thread, so the event
loop never waits on a disk. Every part is answered in the Store Instances Response Module
(PS3.18 Annex I) as `application/dicom+json` (or `+xml` when asked for), with the status codes
of PS3.18 Table 10.5.3-1: 200 all stored, 202 some failed, 409 none stored, 400 bad syntax,
415 unsupported media type, plus 406 (Accept), 413 (web.max_request_mb), 401 (auth).
"""

from __future__ import annotations

import json
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RE_VALID_UID
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from node.config import WebSettings
from node.ingest.multipart import MalformedMultipart, boundary_of, parse_content_type
from node.ingest.stow import PartOutcome, StoreTransaction
from node.logs import event
from node.web.commands import Commands

router = APIRouter(tags=["DICOMweb"])
log = logging.getLogger("fracnode.web")

DICOM_JSON = "application/dicom+json"  # the DICOM JSON Model (PS3.18 Annex F)
DICOM_XML = "application/dicom+xml"  # the Native DICOM Model (PS3.19 A.1)
NATIVE_DICOM_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
FEED_BYTES = 1 << 20  # body bytes gathered before one hop to the worker thread
DRAIN_BYTES = 64 << 20  # past web.max_request_mb, how much more is read and dropped before a 413
MAX_WARNINGS = 20  # Warning header fields (RFC 7234 5.5) explaining refused parts
_VALID_UID = re.compile(RE_VALID_UID)
_REQUEST_BODY = {
    "required": True,
    "content": {
        'multipart/related; type="application/dicom"': {
            "schema": {"type": "string", "format": "binary"},
            "example": "--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n<DICOM file>\r\n--BOUNDARY--",
        }
    },
}
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "every instance stored", "content": {DICOM_JSON: {}, DICOM_XML: {}}},
    202: {"description": "some instances stored; FailedSOPSequence (0008,1198) says why the others were not"},
    400: {"description": "the body is no well-formed multipart/related body, or holds no part"},
    401: {"description": "no or wrong credentials"},
    406: {"description": "Accept names neither application/dicom+json nor application/dicom+xml"},
    409: {"description": "no instance stored; FailedSOPSequence (0008,1198) says why"},
    413: {"description": "the body is larger than web.max_request_mb"},
    415: {"description": 'the Content-Type is not multipart/related; type="application/dicom"'},
}


@router.post("/studies", summary="Store instances (STOW-RS, PS3.18 10.5)", openapi_extra={
    "requestBody": _REQUEST_BODY}, responses=_RESPONSES)
async def store_instances(request: Request) -> Response:
    return await _store(request, None)


@router.post("/studies/{study}", summary="Store instances of one study (STOW-RS, PS3.18 10.5)",
             openapi_extra={"requestBody": _REQUEST_BODY}, responses=_RESPONSES)
async def store_study_instances(study: str, request: Request) -> Response:
    if len(study) > 64 or not _VALID_UID.match(study):
        raise HTTPException(400, f"{study[:80]!r} is not a valid Study Instance UID")
    return await _store(request, study)


def request_boundary(content_type: str | None) -> bytes:
    """The boundary of a STOW-RS request body; HTTPException 415/400 with what to send instead."""
    expected = 'send multipart/related; type="application/dicom"; boundary=... (PS3.18 10.5.1)'
    if not content_type:
        raise HTTPException(415, f"the request has no Content-Type: {expected}")
    media_type, params = parse_content_type(content_type)
    if media_type == "application/dicom":
        raise HTTPException(415, f"a bare application/dicom body is not a STOW-RS request: {expected},"
                                 " one part per DICOM file")
    if media_type != "multipart/related":
        raise HTTPException(415, f"Content-Type {media_type or content_type[:80]!r} is not supported: {expected}")
    part_type = params.get("type", "application/dicom").partition(";")[0].strip().lower()
    if part_type in ("application/dicom+json", "application/dicom+xml"):
        raise HTTPException(415, f"STOW-RS of metadata and bulk data ({part_type}) is not supported:"
                                 " send the instances as DICOM files, type=\"application/dicom\"")
    if part_type != "application/dicom":
        raise HTTPException(415, f"parts of type {part_type!r} are not supported: {expected}")
    try:
        return boundary_of(params)
    except MalformedMultipart as exc:
        raise HTTPException(400, str(exc)) from exc


def response_media_type(accept: str | None) -> str | None:
    """application/dicom+json unless Accept prefers +xml; None when Accept allows neither."""
    if not accept or not accept.strip():
        return DICOM_JSON
    offers: list[tuple[float, bool, int, str]] = []
    for position, entry in enumerate(accept.split(",")):
        media_range, params = parse_content_type(entry)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        if media_range in (DICOM_JSON, "application/json", "application/*", "*/*"):
            offered = DICOM_JSON
        elif media_range == DICOM_XML:
            offered = DICOM_XML
        else:
            continue
        if quality > 0:  # the highest quality wins; on a tie JSON, then the range named first
            offers.append((quality, offered == DICOM_JSON, -position, offered))
    return max(offers)[3] if offers else None


def response_status(outcomes: Sequence[PartOutcome]) -> int:
    """PS3.18 Table 10.5.3-1 for a body read to its end; outcomes holds at least one part."""
    stored = sum(1 for o in outcomes if o.stored)
    if stored == len(outcomes):
        return 200
    return 202 if stored else 409


def response_dataset(outcomes: Sequence[PartOutcome]) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table I.1-1)."""
    ds = Dataset()
    ds.RetrieveURL = None  # type 2: the node offers no Studies Retrieve Transaction
    failed = [o for o in outcomes if not o.stored]
    stored = [o for o in outcomes if o.stored]
    if failed:
        ds.FailedSOPSequence = DicomSequence([_reference(o) for o in failed])
        for item, outcome in zip(ds.FailedSOPSequence, failed, strict=True):
            item.FailureReason = outcome.failure
    if stored:
        ds.ReferencedSOPSequence = DicomSequence([_reference(o) for o in stored])
        for item in ds.ReferencedSOPSequence:
            item.RetrieveURL = None
    return ds


def _reference(outcome: PartOutcome) -> Dataset:
    item = Dataset()  # SOP Instance Reference Macro (PS3.3 Table 10-11)
    item.ReferencedSOPClassUID = outcome.sop_class_uid or None
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid or None
    return item


def native_xml(ds: Dataset) -> bytes:
    """`ds` in the Native DICOM Model (PS3.19 A.1), for the few VRs a response module holds."""
    root = ET.Element("NativeDicomModel", xmlns=NATIVE_DICOM_NS)
    _xml_attributes(root, ds)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _xml_attributes(parent: ET.Element, ds: Dataset) -> None:
    for element in ds:
        tag = f"{element.tag.group:04X}{element.tag.element:04X}"
        node = ET.SubElement(parent, "DicomAttribute",
                             {"tag": tag, "vr": element.VR, "keyword": keyword_for_tag(element.tag)})
        if element.VR == "SQ":
            for number, item in enumerate(element.value, start=1):
                _xml_attributes(ET.SubElement(node, "Item", number=str(number)), item)
        elif element.value not in (None, ""):
            values = element.value if element.VM > 1 else [element.value]
            for number, value in enumerate(values, start=1):
                ET.SubElement(node, "Value", number=str(number)).text = str(value)


def _warning_headers(outcomes: Sequence[PartOutcome], extra: str = "") -> list[tuple[str, str]]:
    """Warning fields (RFC 7234 5.5, code 299 as PS3.18 uses it) saying why parts failed: the
    response module has a Failure Reason code but no text. Each starts with the DICOM status
    (the form PS3.18 13.4.3.2 recommends); UIDs and reasons only, never patient data."""
    texts = [f"{o.failure:04X} part {o.part}: {o.reason}" for o in outcomes if not o.stored]
    if extra:
        texts.append(extra)
    headers = []
    for text in texts[:MAX_WARNINGS]:
        printable = "".join(c if " " <= c <= "~" else "?" for c in text)  # RFC 9110 5.5: no controls
        quoted = printable.replace("\\", "\\\\").replace('"', '\\"')
        headers.append(("warning", f'299 fracnode "{quoted[:500]}"'))
    return headers


def _answer(status: int, outcomes: Sequence[PartOutcome], media_type: str, extra: str = "") -> Response:
    ds = response_dataset(outcomes)
    if media_type == DICOM_XML:
        body = native_xml(ds)
    else:
        body = json.dumps(ds.to_json_dict()).encode()
    response = Response(body, status_code=status, media_type=media_type)
    for name, value in _warning_headers(outcomes, extra):
        response.headers.append(name, value)
    return response


async def _store(request: Request, study: str | None) -> Response:
    commands: Commands = request.app.state.commands
    settings: WebSettings = request.app.state.config.web
    boundary = request_boundary(request.headers.get("content-type"))
    media_type = response_media_type(request.headers.get("accept"))
    if media_type is None:
        raise HTTPException(406, f"the response is {DICOM_JSON} or {DICOM_XML}; Accept allows neither")
    limit = settings.max_request_mb * 2**20
    too_large = f"the request body is larger than web.max_request_mb ({settings.max_request_mb} MiB)"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, too_large + "; send fewer instances per request")
    client = request.client
    address = (client.host, client.port) if client else ("", 0)
    started = time.monotonic()
    transaction = commands.begin_stow(request.state.principal, address, boundary, study)
    status = 500
    try:
        status, response = await _receive(request, transaction, limit, media_type, too_large)
        return response
    finally:
        if not transaction.ended:
            transaction.abort()  # the client went away, or the handler was cancelled
        stored = sum(1 for o in transaction.outcomes if o.stored)
        event(log, logging.INFO, "STOW-RS answered", transfer=transaction.record.id, status=status,
              instances_stored=stored, instances_failed=len(transaction.outcomes) - stored,
              bytes=transaction.received, seconds=round(time.monotonic() - started, 3))


async def _receive(request: Request, transaction: StoreTransaction, limit: int, media_type: str,
                   too_large: str) -> tuple[int, Response]:
    pending = bytearray()
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                await run_in_threadpool(transaction.abort, "too large")
                if transaction.outcomes:
                    too_large += "; instances completed before the limit stay stored"
                await _drain(request, received, limit + DRAIN_BYTES)
                return 413, _refusal(413, too_large)
            pending += chunk
            if len(pending) >= FEED_BYTES:
                data, pending = bytes(pending), bytearray()
                await run_in_threadpool(transaction.feed, data)
        if pending:
            await run_in_threadpool(transaction.feed, bytes(pending))
        outcomes = await run_in_threadpool(transaction.finish)
    except ClientDisconnect:
        # parts that arrived whole are kept (nothing was acknowledged, yet nothing is lost)
        await run_in_threadpool(_keep_whole_parts, transaction, bytes(pending))
        return 499, Response(status_code=400)  # nobody reads it
    except MalformedMultipart as exc:
        outcomes = transaction.outcomes
        if not any(o.stored for o in outcomes):
            return 400, _refusal(400, f"malformed multipart/related body: {exc}")
        return 202, _answer(202, outcomes, media_type, f"malformed multipart/related body after part"
                                                      f" {len(outcomes)}: {exc}")
    if not outcomes:
        return 400, _refusal(400, "the multipart/related body holds no part")
    status = response_status(outcomes)
    return status, _answer(status, outcomes, media_type)


def _keep_whole_parts(transaction: StoreTransaction, pending: bytes) -> None:
    try:
        transaction.feed(pending)
    except MalformedMultipart:
        pass  # the transfer ended with the part it broke in
    transaction.abort()


async def _drain(request: Request, received: int, cap: int) -> None:
    """Read (and drop) what the client still sends, up to `cap`, so that it reads the answer
    instead of a connection reset; a larger rest is cut off with the connection."""
    async for chunk in request.stream():
        received += len(chunk)
        if received > cap:
            return


def _refusal(status: int, detail: str) -> Response:
    return JSONResponse({"detail": detail}, status_code=status)
