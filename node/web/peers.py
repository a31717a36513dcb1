"""Connectivity checks of configured peers: C-ECHO for DIMSE peers (PS3.4 Annex A), a QIDO-RS
`GET {url}/studies?limit=1` for DICOMweb peers (PS3.18 10.6), each with its latency."""

from __future__ import annotations

import time
from typing import Any

import httpx

from node.dispatch.dimse import AssociationFailed, Target, echo
from node.web.models import ConnectivityCheck, Peer
from node.webclient import PeerSetupError, tls_context


def describe(peer: Any) -> Peer:
    """A configured peer (DIMSE, or DICOMweb where the configuration has that type)."""
    kind = str(getattr(peer, "type", "dimse") or "dimse")
    return Peer(
        name=peer.name,
        type=kind,
        ae_title=getattr(peer, "ae_title", None),
        host=getattr(peer, "host", None),
        port=getattr(peer, "port", None),
        url=str(peer.url) if getattr(peer, "url", None) else None,
    )


def _check(
    peer: str, kind: str, check: str, started: float, ok: bool, status: int | None, message: str
) -> ConnectivityCheck:
    latency = round((time.monotonic() - started) * 1000, 1)
    return ConnectivityCheck(
        peer=peer, type=kind, check=check, ok=ok, latency_ms=latency if ok else None, status=status, message=message
    )


def echo_dimse(peer: Any, calling_ae: str, timeout_s: float) -> ConnectivityCheck:
    target = Target(peer.ae_title, peer.host, peer.port, peer.tls)
    started = time.monotonic()
    try:
        status = echo(target, calling_ae, timeout_s)
    except (AssociationFailed, OSError) as exc:
        return _check(peer.name, "dimse", "C-ECHO", started, False, None, str(exc))
    if status != 0:
        return _check(peer.name, "dimse", "C-ECHO", started, False, status, f"C-ECHO {target}: status 0x{status:04X}")
    return _check(peer.name, "dimse", "C-ECHO", started, True, status, f"C-ECHO {target}: success")


def _auth(peer: Any) -> tuple[dict[str, str], httpx.BasicAuth | None]:
    """The request headers and Basic credentials the peer's `auth` configures."""
    headers = {"Accept": "application/dicom+json"}
    auth = getattr(peer, "auth", None)
    kind = getattr(auth, "type", "none")
    if kind == "bearer":
        headers["Authorization"] = f"Bearer {auth.secret()}"  # type: ignore[union-attr]
    if kind == "basic":
        return headers, httpx.BasicAuth(auth.user, auth.secret())  # type: ignore[union-attr]
    return headers, None


def probe_dicomweb(peer: Any, timeout_s: float) -> ConnectivityCheck:
    url = str(peer.url).rstrip("/") + "/studies"
    started = time.monotonic()
    try:
        headers, auth = _auth(peer)
        with httpx.Client(verify=tls_context(peer), timeout=timeout_s, follow_redirects=False) as client:
            response = client.get(url, params={"limit": 1}, headers=headers, auth=auth)
    except (ValueError, PeerSetupError) as exc:  # a credentials or certificate file that cannot be read
        return _check(peer.name, "dicomweb", "QIDO-RS", started, False, None, str(exc))
    except httpx.HTTPError as exc:
        return _check(
            peer.name,
            "dicomweb",
            "QIDO-RS",
            started,
            False,
            None,
            f"GET {url}: {type(exc).__name__}: {exc} (is it running and reachable?)",
        )
    ok = response.status_code in (200, 204)
    if ok:
        message = f"GET {url}: HTTP {response.status_code}"
    elif response.status_code in (401, 403):
        message = (
            f"GET {url}: HTTP {response.status_code}: the peer refused the credentials"
            " (check this peer's auth in the configuration)"
        )
    else:
        message = f"GET {url}: HTTP {response.status_code} {response.reason_phrase}"
    return _check(peer.name, "dicomweb", "QIDO-RS", started, ok, response.status_code, message)


def check(peer: Any, calling_ae: str, timeout_s: float) -> ConnectivityCheck:
    if getattr(peer, "url", None):
        return probe_dicomweb(peer, timeout_s)
    return echo_dimse(peer, calling_ae, timeout_s)
