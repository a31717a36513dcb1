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
which subset); a backend is a module like `node.store.sqlite` that implements `Database` over its
driver with its `Dialect`, and `open_database` is where it is chosen.
"""

from __future__ import annotations

from pathlib import Path

from node.store.sql import Database, Dialect, Row, Sql, StorageFull, StoreError

__all__ = ["Database", "Dialect", "Row", "Sql", "StorageFull", "StoreError", "open_database"]


def open_database(path: Path, readonly: bool = False) -> Database:
    """The node's database in the SQLite file `path` (created with its schema unless `readonly`)."""
    from node.store.sqlite import SqliteDatabase

    return SqliteDatabase(path, readonly)
