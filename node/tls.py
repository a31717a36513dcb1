"""TLS contexts for every link the node has, and handshakes that a slow peer cannot stretch.

DICOM TLS follows PS3.15 Annex B.1 (The Basic TLS Secure Transport Connection Profile) with the
BCP 195 choices DCMTK's default "non-downgrading BCP 195" profile makes: TLS 1.2 or 1.3 only,
forward-secret AEAD cipher suites only. The same contexts serve HTTPS and syslog over TLS
(RFC 5425). Refusals are described in words an operator can act on (`failure_reason`).
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from pathlib import Path

from node.config import NodeTls, PeerTls, WebTls

# BCP 195 (RFC 9325 4.2): TLS 1.2 suites with ECDHE or DHE and an AEAD cipher; TLS 1.3's are all fine
BCP195_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)


class TlsSetupError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and why."""


def _load(
    context: ssl.SSLContext, certificate: Path | None, key: Path | None, ca_certificates: Path | None, where: str
) -> None:
    try:
        if certificate is not None and key is not None:
            context.load_cert_chain(str(certificate), str(key))
        if ca_certificates is not None:
            context.load_verify_locations(cafile=str(ca_certificates))
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TlsSetupError(f"{where}: cannot use the certificate, key or CA files: {reason}") from exc


def _bcp195(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(settings: NodeTls | WebTls, where: str) -> ssl.SSLContext:
    """The context of a TLS listener (DICOM or HTTPS); client certificates as `settings` says."""
    context = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ca_certificates = getattr(settings, "ca_certificates", None)
    _load(context, settings.certificate, settings.private_key, ca_certificates, where)
    if getattr(settings, "require_client_certificate", False):
        context.verify_mode = ssl.CERT_REQUIRED
    elif ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL  # a certificate, if sent, must be from a trusted CA
    return context


def client_context(settings: PeerTls, where: str) -> ssl.SSLContext:
    """The context of a TLS connection the node opens (C-STORE/C-ECHO/C-GET/C-MOVE, syslog)."""
    context = _bcp195(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))  # system CAs, hostname check
    _load(context, settings.certificate, settings.private_key, settings.ca_certificates, where)
    if not settings.verify_hostname:
        context.check_hostname = False
    return context


def handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """The TLS handshake of an accepted connection, done by `deadline` (time.monotonic()) however
    slowly the peer's bytes come; raises TimeoutError, ssl.SSLError or OSError."""
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                readable: list[ssl.SSLSocket] = [sock]
                writable: list[ssl.SSLSocket] = []
            except ssl.SSLWantWriteError:
                readable, writable = [], [sock]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(readable, writable, [], remaining)[:2]):
                raise TimeoutError("the TLS handshake did not finish in time")
    finally:
        sock.setblocking(True)


def looks_like_plain_dicom(sock: socket.socket, timeout_s: float) -> bool:
    """Whether a connection to a TLS port opens with an A-ASSOCIATE-RQ (PDU type 01) instead
    of a TLS record (content type 22): a client configured without TLS."""
    sock.settimeout(timeout_s)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return False
    return first == b"\x01"


_REASONS = (  # OpenSSL reason → what it means for the operator
    ("CERTIFICATE_VERIFY_FAILED", "the certificate is not trusted"),
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "the peer sent no client certificate, and one is required"),
    ("CERTIFICATE_REQUIRED", "a client certificate is required and none was sent"),
    ("TLSV1_ALERT_UNKNOWN_CA", "the peer does not trust our certificate (unknown CA)"),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "the peer says our certificate has expired"),
    ("SSLV3_ALERT_BAD_CERTIFICATE", "the peer refused our certificate"),
    ("WRONG_VERSION_NUMBER", "the peer does not speak TLS 1.2 or newer (a plain client?)"),
    ("HTTP_REQUEST", "plain HTTP on the TLS port"),
    ("NO_SHARED_CIPHER", "no BCP 195 cipher suite in common"),
    ("UNSUPPORTED_PROTOCOL", "the peer offers only TLS versions older than 1.2"),
)


def failure_reason(exc: BaseException) -> str:
    """What went wrong in a TLS handshake, in one line: the verification result when there is
    one ("certificate has expired", "self-signed certificate"), else OpenSSL's reason named."""
    if isinstance(exc, TimeoutError):
        return "the TLS handshake did not finish within node.negotiation_timeout_s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the certificate is not trusted: {exc.verify_message}"
    reason = getattr(exc, "reason", None) or ""
    for code, text in _REASONS:
        if code == reason:
            return f"{text} ({reason})"
    return f"{type(exc).__name__}: {reason or exc}"


def peer_subject(sock: ssl.SSLSocket) -> str:
    """The common name of the peer's certificate ('' without one): who, for the audit trail."""
    certificate = sock.getpeercert()
    if not certificate:
        return ""
    for rdn in certificate.get("subject", ()):
        for pair in rdn:
            if pair[0] == "commonName":
                return str(pair[1])
    return ""


def tls_args(settings: PeerTls | None, host: str, where: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's `tls_args` for an association to a peer: (context, the name to verify)."""
    if settings is None:
        return None
    return client_context(settings, where), settings.server_name or host


def why_no_connection(settings: PeerTls, host: str, port: int, where: str, timeout_s: float) -> str:
    """After a failed TLS association: the handshake tried again alone, to say why it failed
    (pynetdicom logs the reason but does not return it)."""
    try:
        context = client_context(settings, where)
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=settings.server_name or host),
        ):
            return "the TLS handshake succeeds now; the peer refused the association after it"
    except TlsSetupError as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return f"TLS handshake with {host}:{port} failed: {failure_reason(exc)}"
        return f"cannot connect to {host}:{port}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
