"""The HTTP side under odd input: never a 500, always an answer, safe headers, HTTPS with HSTS,
the API description behind authentication and without outside scripts, private state files."""

from __future__ import annotations

import re
import socket
import ssl
import stat
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_TOKEN, node_config, wait_until
from tests.integration.test_stow import multipart, part10, stow
from tests.support import dicomgen
from tests.support.certs import make_pki

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
HUGE = "99999999999999999999999"


def get(node, path: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(f"http://127.0.0.1:{node.web.port}{path}", headers=AUTH, timeout=30, **kwargs)


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/jobs/{HUGE}",
        f"/api/v1/jobs/-{HUGE}",
        f"/api/v1/studies/1.2.3/preview.png?job={HUGE}",
        f"/api/v1/pulls/{HUGE}",
        "/api/v1/jobs/0",
        f"/api/v1/jobs?limit={HUGE}",
        "/api/v1/pulls?limit=" + HUGE,
    ],
)
def test_oversized_integers_are_answered_never_with_a_500(tmp_path, start_node, path):
    node = start_node(node_config(tmp_path / "data"))
    response = get(node, path)
    assert response.status_code < 500, (path, response.status_code, response.text)
    assert response.status_code in (200, 404, 422)


@pytest.mark.parametrize(
    "body",
    [
        b"1e999999",
        b'{"peer": NaN}',
        b'{"peer": Infinity}',
        b"-1e999999",
        b'{"peer": "x", "extra": 1e999}',
        b"\xff\xfe",
        b"[" * 5000,
        b'"\\ud800"',
    ],
)
def test_non_finite_or_broken_json_is_422_not_500(tmp_path, start_node, body):
    node = start_node(node_config(tmp_path / "data"))
    response = httpx.post(
        f"http://127.0.0.1:{node.web.port}/api/v1/studies/1.2.3/analyze",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, (body[:20], response.status_code, response.text)
    assert response.json()["detail"]


def test_a_control_character_in_a_part_header_still_gets_an_answer(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    body = multipart(part10(dicomgen.ct_series(1)[0]), content_type="application/x\x01\x7f\x1bdicom")
    response = stow(node, body)
    assert response.status_code == 409  # an answer, with the reason, its control characters replaced
    warning = response.headers["warning"]
    assert "application/x???dicom" in warning and all(" " <= c <= "~" for c in warning)


def test_responses_carry_security_headers_and_no_store(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    base = f"http://127.0.0.1:{node.web.port}"
    for response in (
        get(node, "/api/v1/jobs"),
        get(node, "/api/v1/studies/1.2.3"),
        httpx.get(base + "/api/v1/jobs"),
        get(node, "/metrics"),
        stow(node, multipart(b"x")),
        httpx.get(base + "/health"),
    ):
        headers = response.headers
        assert headers["cache-control"] == "no-store", response.url
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "strict-transport-security" not in headers  # plain HTTP: HSTS would mean nothing


def test_the_api_description_needs_credentials_and_loads_no_outside_script(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    base = f"http://127.0.0.1:{node.web.port}"
    for path in ("/api/docs", "/api/openapi.json"):
        assert httpx.get(base + path).status_code == 401
    docs = get(node, "/api/docs")
    assert docs.status_code == 200 and "/api/v1/jobs/{job_id}/retry" in docs.text
    assert "<script" not in docs.text.lower()
    assert not re.search(r"(src|href)=[\"']?https?:", docs.text)  # nothing fetched from elsewhere
    assert "default-src 'none'" in docs.headers["content-security-policy"]
    assert get(node, "/api/openapi.json").json()["paths"]


def test_https_with_hsts_and_no_plain_http(tmp_path, start_node):
    pki = make_pki(tmp_path / "pki")
    node = start_node(
        node_config(
            tmp_path / "data",
            web={"tls": {"certificate": str(pki.server.certificate), "private_key": str(pki.server.key)}},
        )
    )
    context = ssl.create_default_context(cafile=str(pki.ca))
    response = httpx.get(f"https://localhost:{node.web.port}/api/v1/jobs", headers=AUTH, verify=context)
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{node.web.port}/health", timeout=5)
    with (
        socket.create_connection(("127.0.0.1", node.web.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as secure,
    ):
        assert secure.version() in ("TLSv1.2", "TLSv1.3")  # BCP 195


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_files_are_0600_and_folders_0700(tmp_path, start_node):
    from tests.integration.test_flow import storescu

    node = start_node(
        node_config(
            tmp_path / "data",
            routes=[
                {"name": "r", "match": {"modality": ["CR"]}, "pipeline": "test-kos", "destinations": ["results-folder"]}
            ],
        )
    )
    cr = dicomgen.cr_image(size=64)
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0
    wait_until(lambda: node.db.query("SELECT 1 FROM outbox WHERE state = 'delivered'"), timeout_s=60)
    data = node.config.storage.data_dir
    state = [p for p in data.rglob("*") if "results" not in p.parts]
    assert any(p.name == "fracnode.sqlite-wal" for p in state)
    assert any(p.suffix == ".dcm" for p in state) and any(p.name == "audit.log" for p in state)
    for path in [data, *state]:
        expected = 0o700 if path.is_dir() else 0o600
        assert mode(path) == expected, f"{path}: {oct(mode(path))}"
