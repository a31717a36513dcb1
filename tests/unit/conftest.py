"""Fixtures for unit tests: a real index and spool in the test's temporary folder.

`db` is each backend in turn: the SQLite file, and the session's PostgreSQL cluster (its tables
dropped before each test), so every test written against `db` is the store suite of both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.spool import Spool
from node.store import Database, open_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = open_database(tmp_path / "index.sqlite")
    else:
        database = open_database(request.getfixturevalue("postgres_url"), upgrade=True)
    yield database
    database.close()


@pytest.fixture
def spool(tmp_path: Path, db: Database) -> Spool:
    return Spool(tmp_path / "spool", db)
