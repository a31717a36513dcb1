"""Fixtures for unit tests: a real SQLite index and spool in the test's temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.spool import Spool
from node.store import Database, open_database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "index.sqlite")
    yield database
    database.close()


@pytest.fixture
def spool(tmp_path: Path, db: Database) -> Spool:
    return Spool(tmp_path / "spool", db)
