"""The PostgreSQL backend: a psycopg 3 connection pool, one shared database for many processes.

Outside a transaction each statement takes a pooled connection in autocommit mode; a transaction
holds one connection from BEGIN to COMMIT. The shared SQL's `?` placeholders become psycopg's `%s`.
Driver errors come out as the store's: a server that cannot be reached as `DatabaseUnavailable`
(the listeners answer it with 0xA700), a full disk as `StorageFull`, the rest as `StoreError`.
The password is never in the URL: libpq reads it from `password_file`, PGPASSWORD or PGPASSFILE.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import errors
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool, PoolTimeout

from node.store import schema
from node.store.sql import DatabaseUnavailable, Dialect, Params, Row, Sql, StorageFull, StoreError

log = logging.getLogger("fracnode.store")

DIALECT = Dialect(
    name="postgresql",
    id_column="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    real="DOUBLE PRECISION",
    # a claim skips rows another worker is claiming instead of waiting for it
    claim_lock=" FOR UPDATE SKIP LOCKED",
    # a study's completion is re-read under its row lock: two assemblers complete it once
    row_lock=" FOR UPDATE",
    concat="string_agg(DISTINCT {}, ',')",
    table_exists="SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = ?",
)

# a statement, a connection attempt or a wait for a pooled connection fails after this long, so
# that a listener answers 0xA700 while its peer still waits rather than hanging with the server
CONNECT_TIMEOUT_S = 5
POOL_WAIT_S = 5.0
# serialises `fracnode db upgrade` runs against one database (pg_advisory_xact_lock's key)
UPGRADE_LOCK_KEY = 0x6672_6163  # "frac"


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """The shared SQL with psycopg's placeholders (the shared SQL has no literal `%`)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Row(tuple[Any, ...]):
    """A row by position or by column name, like sqlite3.Row."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Self:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[_Row]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: _Row(values, index)


@contextmanager
def _translated() -> Iterator[None]:
    """psycopg's errors as the store's: callers never import a driver."""
    try:
        yield
    except PoolTimeout as exc:
        raise DatabaseUnavailable(f"no connection to the database within {POOL_WAIT_S:.0f}s") from exc
    except errors.DiskFull as exc:
        raise StorageFull(f"the database's disk is full ({exc.sqlstate})") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        # a server gone mid-statement, shut down (57P01-03) or unreachable: retried later, never success
        raise DatabaseUnavailable(f"the database cannot be reached ({type(exc).__name__})") from exc
    except psycopg.Error as exc:
        raise StoreError(f"{type(exc).__name__} ({exc.sqlstate}): {exc}") from exc


class _Statements:
    """`Sql` over one connection (a transaction's)."""

    dialect = DIALECT

    def __init__(self, conn: psycopg.Connection[_Row]) -> None:
        self._conn = conn

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with _translated():
            cursor = self._conn.execute(_placeholders(sql), params)
            return list(cursor.fetchall()) if cursor.description else []

    def one(self, sql: str, params: Params = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Params = ()) -> int:
        with _translated():
            return self._conn.execute(_placeholders(sql), params).rowcount

    def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        with _translated(), self._conn.cursor() as cursor:
            cursor.executemany(_placeholders(sql), list(rows))


class PostgresDatabase:
    """The node's index in a PostgreSQL database shared by every fracnode process that names it.

    Opening checks the schema version (`schema.SchemaOutdated` when it is not this code's) unless
    `upgrade` is asked, which creates or migrates it (`fracnode db upgrade`)."""

    dialect = DIALECT

    def __init__(self, url: str, password_file: Path | None = None, *, upgrade: bool = False,
                 max_connections: int = 16) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": _rows,
                                  "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "fracnode"}
        if password_file is not None:
            kwargs["password"] = _read_password(password_file)
        self._pool: ConnectionPool[psycopg.Connection[_Row]] = ConnectionPool(
            url, kwargs=kwargs, min_size=1, max_size=max_connections, open=False,
            timeout=POOL_WAIT_S, check=ConnectionPool.check_connection, name="fracnode",
        )
        with _translated():
            self._pool.open(wait=False)
        try:
            with self.transaction() as sql:
                if upgrade:
                    sql.execute("SELECT pg_advisory_xact_lock(?)", (UPGRADE_LOCK_KEY,))
                    self.upgraded = schema.upgrade(sql)
                else:
                    schema.check(sql)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[_Row]]:
        with _translated(), self._pool.connection() as conn:
            yield conn

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with self._connection() as conn:
            return _Statements(conn).query(sql, params)

    def one(self, sql: str, params: Params = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Params = ()) -> int:
        with self._connection() as conn:
            return _Statements(conn).execute(sql, params)

    def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        # one transaction, as sqlite3's executemany is one statement
        with self._connection() as conn, _translated(), conn.transaction():
            _Statements(conn).execute_many(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[Sql]:
        """BEGIN ... COMMIT on one pooled connection; ROLLBACK on any exception. Writers of one
        row wait for each other's row locks, not for the whole database as in SQLite."""
        with self._connection() as conn, _translated(), conn.transaction():
            yield _Statements(conn)

    def close(self) -> None:
        self._pool.close()


def _read_password(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise StoreError(f"cannot read storage.database_password_file {path}: {exc.strerror}") from exc
    return text.splitlines()[0] if text else ""
