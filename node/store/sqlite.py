"""The SQLite backend: one connection in WAL mode, shared by all stages through one lock.

The spool files are the truth for received instances; the `instances` table indexes them and
can be rebuilt from the files (see `spool.reconcile`). Jobs and the outbox live only here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from node.store import schema
from node.store.sql import Dialect, Params, Row, Sql, StorageFull, StoreError

DIALECT = Dialect(
    name="sqlite",
    id_column="INTEGER PRIMARY KEY AUTOINCREMENT",
    real="REAL",
    claim_lock="",  # BEGIN IMMEDIATE already holds the database's one write lock
    row_lock="",
    concat="GROUP_CONCAT(DISTINCT {})",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
)


@contextmanager
def _translated() -> Iterator[None]:
    """sqlite3's errors as the store's: callers never import a driver."""
    try:
        yield
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise StorageFull(f"the database's disk is full ({exc})") from exc
        raise StoreError(str(exc)) from exc


class _Statements:
    """`Sql` over a connection; the caller holds the lock."""

    dialect = DIALECT

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self._conn = conn
        self._lock = lock

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with self._lock, _translated():
            # fetchall: a statement with RETURNING is finished (and so committed) only when read out
            return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Params = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Params = ()) -> int:
        with self._lock, _translated():
            return self._conn.execute(sql, params).rowcount

    def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        with self._lock, _translated():
            self._conn.executemany(sql, rows)


class SqliteDatabase(_Statements):
    """The node's index in one SQLite file; `transaction()` gives BEGIN IMMEDIATE ... COMMIT.

    Outside a transaction each statement commits on its own (autocommit)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        with _translated():
            if readonly:
                uri = f"file:{path}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
            else:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # SQLite gives the -wal and -shm files the database file's mode: create it private
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
                os.chmod(path, 0o600)
                conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
                # WAL + NORMAL: a process crash never loses a commit; after power loss the index is
                # rebuilt from the fsynced spool files (spool.reconcile), so FULL is not needed here.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
        conn.row_factory = sqlite3.Row
        super().__init__(conn, threading.RLock())
        if not readonly:
            with self.transaction() as sql:
                # one process owns the file: it upgrades itself
                self.upgraded = schema.upgrade(sql)

    @contextmanager
    def transaction(self) -> Iterator[Sql]:
        with self._lock:
            with _translated():
                self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Statements(self._conn, self._lock)
                with _translated():
                    self._conn.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (e.g. SQLITE_FULL) may leave the transaction open
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
