"""The node's database: one module per table, the only place SQL is written.

| module | table |
| --- | --- |
| `instances` | the spool's index: one row per SOP instance |
| `studies` | studies received, their completion and revision |
| `associations` | the trail of associations, STOW-RS requests and WADO-RS retrievals |
| `jobs` | the job queue |
| `outbox` | derived objects waiting per destination |
| `pulls` | studies retrieved from peers on request |
| `outcomes` | what each job concluded (findings, timings) for the dashboard |
| `search` | the keyed hash of each study's Accession Number |
| `schema` | the tables themselves and the schema version |

Every other module calls these typed functions with a `Database` (each statement commits on its
own) or with the `Sql` of one of its transactions (`with db.transaction() as sql:`), and gets
records back, never rows. The SQL is written once for every backend (`node.store.sql` says
which subset); a backend is a module like `node.store.sqlite` (the embedded default) or
`node.store.postgres` that implements `Database` over its driver with its `Dialect`, and
`open_database` / `open_configured` is where it is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from node.store.schema import SchemaOutdated
from node.store.sql import Database, DatabaseUnavailable, Dialect, Row, Sql, StorageFull, StoreError

if TYPE_CHECKING:
    from node.config import Config

__all__ = [
    "Database", "DatabaseUnavailable", "Dialect", "Row", "SchemaOutdated", "Sql", "StorageFull",
    "StoreError", "open_configured", "open_database",
]


def open_database(path: Path | str, readonly: bool = False, *, password_file: Path | None = None,
                  upgrade: bool = False) -> Database:
    """The node's database: the SQLite file `path` (created or upgraded unless `readonly`), or the
    PostgreSQL database of the URL `path` (its schema checked; created or migrated if `upgrade`)."""
    if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
        from node.store.postgres import PostgresDatabase

        return PostgresDatabase(path, password_file, upgrade=upgrade)
    from node.store.sqlite import SqliteDatabase

    return SqliteDatabase(Path(path), readonly)


def open_configured(config: Config, readonly: bool = False, *, upgrade: bool = False) -> Database:
    """The database `storage.database` names (the SQLite file in data_dir by default)."""
    storage = config.storage
    if storage.database == "sqlite":
        return open_database(config.database_path, readonly)
    return open_database(storage.database, readonly, password_file=storage.database_password_file,
                         upgrade=upgrade)
