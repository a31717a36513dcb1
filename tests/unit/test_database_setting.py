"""`storage.database`: sqlite by default, or a PostgreSQL URL checked without a server and never
holding a password (it would be copied wherever the configuration goes)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from node.cli import build_parser
from node.config import Config, ConfigError, parse


def storage(**settings: object) -> Config:
    return Config.model_validate({"storage": settings})


def refusal(**settings: object) -> str:
    """What `fracnode config check` and a starting node print about the storage section."""
    text = "storage:\n" + "".join(f"  {key}: '{value}'\n" for key, value in settings.items())
    with pytest.raises(ConfigError) as caught:
        parse(text, "site.yaml", {})
    return str(caught.value)


def test_the_database_is_the_embedded_sqlite_file_unless_set() -> None:
    assert Config().storage.database == "sqlite"
    assert storage(database="sqlite").storage.database == "sqlite"


def test_a_postgresql_url_without_a_password_is_accepted() -> None:
    url = "postgresql://fracnode@db-host:5432/fracnode?sslmode=verify-full"
    assert storage(database=url).storage.database == url


@pytest.mark.parametrize("url", [
    "postgresql://fracnode:s3cr3t-word@db-host:5432/fracnode",
    "postgresql://fracnode@db-host/fracnode?password=s3cr3t-word",
])
def test_a_url_with_a_password_is_refused_saying_where_the_password_goes_without_echoing_it(url: str) -> None:
    message = refusal(database=url)
    assert "database_password_file" in message and "PGPASSFILE" in message
    assert "s3cr3t-word" not in message


@pytest.mark.parametrize(("url", "why"), [
    ("mysql://fracnode@db-host/fracnode", "must be 'sqlite' or a URL postgresql://"),
    ("postgresql://fracnode@db-host:99999/fracnode", "not a valid PostgreSQL URL"),
    ("postgresql://fracnode@db-host:5432/", "names no database"),
    ("postgresql://fracnode@db-host/fracnode?no_such_option=1", "not a valid PostgreSQL URL"),
])
def test_a_database_that_is_not_a_postgresql_url_is_refused_with_the_reason(url: str, why: str) -> None:
    assert why in refusal(database=url)


def test_a_password_file_without_a_postgresql_database_is_refused(tmp_path: Path) -> None:
    assert "not a PostgreSQL URL" in refusal(database_password_file=str(tmp_path / "pw"))


def test_config_check_accepts_a_postgresql_url_while_no_server_listens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [v for v in os.environ if v.startswith("FRACNODE_")]:
        monkeypatch.delenv(variable)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://fracnode@127.0.0.1:{port}/fracnode"
    path = tmp_path / "site.yaml"
    path.write_text(f"storage:\n  data_dir: {tmp_path / 'data'}\n  database: {url}\n")
    args = build_parser().parse_args(["config", "check", str(path)])
    assert args.func(args) == 0
    assert f"index in {url}" in capsys.readouterr().out
