"""HTTP clients for DICOMweb peers (PS3.18): authentication, TLS verification, timeouts.

Shared by STOW-RS dispatch and the WADO-RS/QIDO-RS pull. Secrets given as files are read each
time a client is made, so a rotated token is used without a restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from node import __version__
from node.config import BasicAuth, BearerAuth, DicomwebPeer


class PeerSetupError(Exception):
    """The peer's settings cannot be used as given (an unreadable secret or CA bundle)."""


def tls_context(peer: DicomwebPeer) -> ssl.SSLContext:
    """The TLS settings of requests to `peer`: whom to trust, and our certificate if it asks."""
    try:
        if isinstance(peer.verify_tls, Path):
            context = ssl.create_default_context(cafile=str(peer.verify_tls))
        else:  # the system's trust store: where a hospital installs its own CA
            context = ssl.create_default_context()
        if peer.verify_tls is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
        if peer.client_certificate is not None and peer.client_key is not None:
            context.load_cert_chain(str(peer.client_certificate), str(peer.client_key))
    except (OSError, ssl.SSLError) as exc:
        raise PeerSetupError(f"peer {peer.name!r}: cannot use its TLS settings: {exc}") from exc
    return context


def client_for(peer: DicomwebPeer) -> httpx.Client:
    """An httpx client for one peer's base URL; close it (or use `with`) when done."""
    headers = {"User-Agent": f"fracnode/{__version__}"}
    auth: httpx.Auth | None = None
    try:
        if isinstance(peer.auth, BasicAuth):
            auth = httpx.BasicAuth(peer.auth.user, peer.auth.secret())
        elif isinstance(peer.auth, BearerAuth):
            headers["Authorization"] = f"Bearer {peer.auth.secret()}"
    except ValueError as exc:
        raise PeerSetupError(f"peer {peer.name!r}: {exc}") from exc
    timeout = httpx.Timeout(peer.timeout_s)
    return httpx.Client(
        base_url=peer.url, auth=auth, headers=headers, verify=tls_context(peer), timeout=timeout, follow_redirects=False
    )


def refusal_hint(peer: DicomwebPeer, status: int) -> str:
    """What an operator should check when the peer answers `status` to a request."""
    if status == 401:
        return (
            f"{peer.name!r} refused our credentials (HTTP 401): check peers[{peer.name}].auth"
            " against the users the peer accepts"
        )
    if status == 403:
        return f"{peer.name!r} does not allow this user to do that (HTTP 403): check its permissions"
    if status in (404, 405):
        return f"{peer.url} answered HTTP {status}: is url the DICOMweb base URL (e.g. http://orthanc:8042/dicom-web)?"
    return f"{peer.name!r} answered HTTP {status}"


def short_body(response: httpx.Response, limit: int = 300) -> str:
    """The start of an error response's text, on one line, for a recorded reason."""
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""
    return " ".join(text.split())[:limit]
