"""`fracnode serve --roles`: parsing, what SQLite allows, and the locks per role and host."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import roles
from node.config import Config
from node.roles import NodeAlreadyRunning, Roles


def _config(tmp_path: Path, database: str = "sqlite", port: int = 11112, http_port: int = 18080) -> Config:
    return Config.model_validate(
        {
            "storage": {"data_dir": str(tmp_path), "database": database},
            "node": {"port": port},
            "web": {"port": http_port},
        }
    )


PG = "postgresql://fracnode@db-host:5432/fracnode"


def test_roles_parse_a_comma_list_and_all_is_the_default() -> None:
    assert Roles.parse("listener, WEB").names == {"listener", "web"}
    assert Roles.parse("all").all and Roles.parse("").all
    assert str(Roles.parse("web,listener")) == "listener,web"


def test_an_unknown_role_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown role 'listner'; use a comma list of listener, worker"):
        Roles.parse("listner,worker")


def test_split_roles_need_postgresql(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage.database to postgresql://"):
        roles.check(_config(tmp_path), Roles.parse("worker"))
    roles.check(_config(tmp_path), Roles.every())
    roles.check(_config(tmp_path, PG), Roles.parse("worker"))


def test_sqlite_keeps_one_process_per_data_folder(tmp_path: Path) -> None:
    held = roles.take_locks(_config(tmp_path), Roles.every())
    try:
        with pytest.raises(NodeAlreadyRunning, match="another fracnode process uses"):
            roles.take_locks(_config(tmp_path, port=11113), Roles.every())
    finally:
        roles.release(held)


def test_with_postgresql_two_listeners_on_one_host_and_port_are_refused(tmp_path: Path) -> None:
    held = roles.take_locks(_config(tmp_path, PG), Roles.parse("listener"))
    try:
        refused = r"listener on .* uses DICOM port 11112; stop it, or set node.port"
        with pytest.raises(NodeAlreadyRunning, match=refused):
            roles.take_locks(_config(tmp_path, PG, http_port=18081), Roles.every())
        other_port = roles.take_locks(_config(tmp_path, PG, port=11113), Roles.parse("listener"))
        workers = [roles.take_locks(_config(tmp_path, PG), Roles.parse("worker,dispatcher")) for _ in range(2)]
        assert workers == [[], []]  # they claim their work in the database: no lock
        roles.release(other_port)
    finally:
        roles.release(held)


def test_with_postgresql_two_web_roles_on_one_host_and_port_are_refused(tmp_path: Path) -> None:
    held = roles.take_locks(_config(tmp_path, PG), Roles.parse("web"))
    try:
        with pytest.raises(NodeAlreadyRunning, match="web role on .* uses HTTP port 18080"):
            roles.take_locks(_config(tmp_path, PG, port=11113), Roles.parse("listener,web"))
        # the refused process gave back the listener lock it had taken
        roles.release(roles.take_locks(_config(tmp_path, PG, port=11113), Roles.parse("listener")))
    finally:
        roles.release(held)
