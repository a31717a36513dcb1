"""What every table module writes against: the `Sql` protocol, the `Dialect` and the errors.

A table module (`node.store.jobs`, ...) holds the SQL of its table and calls `Sql.query`,
`Sql.one`, `Sql.execute` and `Sql.execute_many`; a backend (`node.store.sqlite`) implements them
over its driver. The SQL is the part both backends share: `?` placeholders, `ON CONFLICT ... DO
UPDATE` for upserts, `RETURNING`, `CASE` sums, no literal `%`. What differs is asked of the
`Dialect`: column types, a comma-joined aggregate, and the row lock a claim needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

Params = Sequence[Any]


class StoreError(Exception):
    """The database refused or failed a statement (the backend's own error is the cause)."""


class StorageFull(StoreError):
    """The database's disk is full: out of resources, not a fault of the node."""


class DatabaseUnavailable(StoreError):
    """The database server cannot be reached (down, restarting, network): out of resources for
    now, answered like a full disk (0xA700) and retried, never taken for success."""


@dataclass(frozen=True)
class Dialect:
    """How one backend spells what the shared SQL cannot say in one way."""

    name: str
    id_column: str  # an integer key the database assigns, ascending
    real: str  # a float column wide enough for Unix seconds
    claim_lock: str  # appended to the SELECT that picks a job to claim
    row_lock: str  # appended to a SELECT that re-reads a row to change it: waits for another writer
    concat: str  # an aggregate joining distinct text values with commas, {} for the expression
    table_exists: str  # a query with one `?` (a table name) that returns a row when the table exists

    def concat_distinct(self, expression: str) -> str:
        return self.concat.format(expression)

    @staticmethod
    def params(count: int) -> str:
        """`count` placeholders for an IN list."""
        return ",".join("?" * count)


class Row(Protocol):
    """One result row: by column name (or position)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Sql(Protocol):
    """Statements against the node's database: the database itself (each statement commits on its
    own) or one of its transactions."""

    @property
    def dialect(self) -> Dialect: ...

    def query(self, sql: str, params: Params = ()) -> list[Row]: ...

    def one(self, sql: str, params: Params = ()) -> Row | None: ...

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def execute_many(self, sql: str, rows: Iterable[Params]) -> None: ...


class Database(Sql, Protocol):
    """A backend: statements, transactions, closing."""

    def transaction(self) -> AbstractContextManager[Sql]:
        """BEGIN ... COMMIT, ROLLBACK on any exception; writers are serialised."""
        ...

    def close(self) -> None: ...

