"""The HTTP side's frame: served by the node, authenticated, OpenAPI documented."""

from __future__ import annotations

import socket
import stat

import httpx

from node.web.auth import TOKEN_FILE
from tests.conftest import API_TOKEN, node_config


def base_url(node) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{node.web.port}"


def test_health_answers_without_credentials(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    response = httpx.get(base_url(node) + "/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_api_without_credentials_is_refused_with_how_to_authenticate(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    for method, path in (
        ("GET", "/api/v1/session"),
        ("POST", "/dicomweb/studies"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/docs"),
    ):
        refused = httpx.request(method, base_url(node) + path)
        assert refused.status_code == 401, path
        assert "Authorization: Bearer" in refused.json()["detail"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.request(method, base_url(node) + path, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401


def test_basic_users_and_bearer_tokens_are_both_accepted(tmp_path, start_node):
    config = node_config(
        tmp_path / "data",
        web={
            "bind": "127.0.0.1",
            "port": 0,
            "auth": {"tokens": [API_TOKEN], "users": [{"name": "admin", "password": "correct horse"}]},
        },
    )
    node = start_node(config)
    url = base_url(node) + "/api/v1/session"
    assert httpx.get(url, auth=("admin", "correct horse")).json()["principal"] == "admin"
    assert httpx.get(url, auth=("admin", "wrong password")).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 200
    assert httpx.get(url).headers["www-authenticate"].startswith("Basic")


def test_without_configured_credentials_a_private_token_is_generated(tmp_path, start_node):
    data = tmp_path / "data"
    node = start_node(node_config(data, web={"bind": "127.0.0.1", "port": 0, "auth": {}}))
    token_file = data / TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    url = base_url(node) + "/api/v1/session"
    refused = httpx.get(url)
    assert str(token_file.resolve()) in refused.json()["detail"]
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_http_port_in_use_fails_the_start_with_what_to_change(tmp_path):
    from node.service import Node
    from node.web.server import WebBindError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Node(node_config(tmp_path / "data", web={"bind": "127.0.0.1", "port": port}))
        try:
            node.start()
        except WebBindError as exc:
            assert "web.port" in str(exc) and str(port) in str(exc)
        else:
            raise AssertionError("the node started on an HTTP port that is in use")
        finally:
            node.stop()
