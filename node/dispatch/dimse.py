"""C-STORE and C-ECHO as SCU (PS3.4 Annex A and B), used by dispatch and the CLI."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.config import PeerTls
from node.net import set_nodelay
from node.tls import TlsSetupError, tls_args, why_no_connection

log = logging.getLogger("fracnode.dispatch")
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: at most 128 presentation contexts per association
# proposed after each object's own transfer syntax, for peers that cannot take it (PS3.5 10.1)
FALLBACK_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Target:
    ae_title: str
    host: str
    port: int
    tls: PeerTls | None = None  # DICOM TLS (PS3.15 B.1) to the peer's TLS port

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


@dataclass(frozen=True)
class StoreResult:
    path: Path
    ok: bool
    message: str


class AssociationFailed(Exception):
    """The peer could not be reached or refused the association."""


def _nodelay_handler(event: evt.Event) -> None:
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        set_nodelay(transport.socket)


def _associate(ae: AE, target: Target) -> Association:
    """Request an association; raise AssociationFailed with the reason when none is made."""
    connected: list[bool] = []
    answers: list[object] = []  # the A-ASSOCIATE response primitive, for a rejection's reason

    def on_open(event: evt.Event) -> None:
        connected.append(True)
        _nodelay_handler(event)

    try:
        secure = tls_args(target.tls, target.host, f"peer {target}")
    except TlsSetupError as exc:
        raise AssociationFailed(str(exc)) from exc
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title,
                         evt_handlers=[(evt.EVT_CONN_OPEN, on_open),
                                       (evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive))],
                         tls_args=secure)
    if not assoc.is_established:
        # pynetdicom marks a refused TCP connection as aborted too: tell them apart
        if not connected and target.tls is not None:
            reason = why_no_connection(target.tls, target.host, target.port, f"peer {target}",
                                       ae.connection_timeout or 10.0)
            raise AssociationFailed(f"{target}: {reason}")
        if not connected:
            raise AssociationFailed(f"cannot connect to {target} (is it running and reachable?)")
        raise AssociationFailed(_why_not(assoc, target, ae.ae_title, answers))
    return assoc


def scu_ae(calling_ae: str, timeout_s: float) -> AE:
    """A pynetdicom AE for associations the node requests, identified as fracnode (PS3.7 D.3.3.2)."""
    ae = AE(ae_title=calling_ae)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    return ae


def echo(target: Target, calling_ae: str, timeout_s: float = 10.0) -> int:
    """C-ECHO `target`; return the status (0x0000 is success). Raises AssociationFailed."""
    ae = scu_ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, target)
    try:
        status = assoc.send_c_echo()
        if not status:
            raise AssociationFailed(f"{target}: no C-ECHO response (timeout or abort)")
        return int(status.Status)
    finally:
        assoc.release()


# PS3.8 9.3.4, A-ASSOCIATE-RJ reasons given by the service user (source 1)
CALLING_AE_REFUSED, CALLED_AE_REFUSED = 3, 7


def _why_not(assoc: object, target: Target, calling_ae: str = "", answers: Sequence[object] = ()) -> str:
    if getattr(assoc, "is_rejected", False):
        answer = next((a for a in answers if getattr(a, "result", None) in (1, 2)), None)
        source, reason = getattr(answer, "result_source", None), getattr(answer, "diagnostic", None)
        if source == 1 and reason == CALLED_AE_REFUSED:
            return (f"{target} rejected the association: it does not answer to the called AE title"
                    f" {target.ae_title!r} (give its AE title: AE@HOST:PORT, or the peer's ae_title)")
        if source == 1 and reason == CALLING_AE_REFUSED:
            return (f"{target} rejected the association: it does not accept the calling AE title"
                    f" {calling_ae!r} (add it on the peer, or use --calling-ae)")
        said = f" ({getattr(answer, 'reason_str', '')})" if answer is not None else ""
        return (f"{target} rejected the association{said}; called AE title {target.ae_title!r},"
                f" calling AE title {calling_ae!r}: check the AE titles configured on both sides")
    if getattr(assoc, "is_aborted", False):
        return f"{target} aborted the association"
    return f"cannot connect to {target} (is it running and reachable?)"


def proposed_syntaxes(syntax: str) -> list[str]:
    """The transfer syntaxes of one presentation context for objects stored in `syntax`.

    An SCP accepts one syntax per context (PS3.8 9.3.3.2) and may prefer its own order, and the
    node never transcodes pixel data: an encapsulated (compressed) or big-endian object is
    proposed in its own syntax alone, since a context accepted with a fallback could not carry
    it. Little-endian native objects are re-encoded by pynetdicom, so they offer the fallbacks.
    """
    uid = UID(syntax)
    if uid.is_compressed or not uid.is_little_endian:
        return [syntax]
    return list(dict.fromkeys([syntax, *FALLBACK_TRANSFER_SYNTAXES]))


def store(
    target: Target, calling_ae: str, paths: Sequence[Path], timeout_s: float = 30.0
) -> list[StoreResult]:
    """Send files over one association. Raises AssociationFailed if none can be sent."""
    headers = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        headers.append((path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    ae = scu_ae(calling_ae, timeout_s)
    for sop_class, syntax in sorted({(c, t) for _, c, t in headers})[:MAX_CONTEXTS]:
        ae.add_requested_context(sop_class, proposed_syntaxes(syntax))
    assoc = _associate(ae, target)
    results = []
    try:
        for path, sop_class, _ in headers:
            try:
                status = assoc.send_c_store(dcmread(path))
            except ValueError as exc:  # no accepted presentation context for this object
                results.append(StoreResult(path, False, f"{target} did not accept {sop_class}: {exc}"))
                continue
            if not status:
                results.append(StoreResult(path, False, f"{target}: no C-STORE response"))
                if not assoc.is_established:
                    break
                continue
            code = int(status.Status)
            # 0xB000, 0xB007, 0xB006: warnings, the object was stored (PS3.4 B.2.3)
            ok = code == 0x0000 or (code & 0xF000) == 0xB000
            comment = str(status.get("ErrorComment", "")) if hasattr(status, "get") else ""
            results.append(StoreResult(path, ok, f"status 0x{code:04X} {comment}".strip()))
    finally:
        if assoc.is_established:
            assoc.release()
    sent = {r.path for r in results}
    results += [StoreResult(p, False, f"{target}: association ended early") for p, _, _ in headers if p not in sent]
    return results
