"""`storage.database`: the embedded SQLite file, or a PostgreSQL server given by a URL.

The URL never carries a password: configuration files are copied, shown and logged. libpq finds
the password itself in `storage.database_password_file`, `PGPASSWORD` or the passfile
(`PGPASSFILE`, default ~/.pgpass), as every PostgreSQL client does.
"""

from __future__ import annotations

from urllib.parse import urlsplit

SQLITE = "sqlite"
SCHEMES = ("postgresql", "postgres")


def check_database(value: str) -> str:
    """`sqlite`, or a `postgresql://user@host:port/database` URL libpq can parse (no connection)."""
    value = value.strip()
    if value in ("", SQLITE):
        return SQLITE
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in SCHEMES:
        raise ValueError("must be 'sqlite' or a URL postgresql://user@host:port/database")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"is not a valid PostgreSQL URL ({exc})") from None
    # never echo the value: it may hold the very password it must not hold
    if parts.password is not None or _conninfo(value).get("password"):
        raise ValueError(
            "must not contain a password: put it in a file named by storage.database_password_file "
            "(readable by the node's user only), or in PGPASSFILE / ~/.pgpass or PGPASSWORD"
        )
    if not parts.path.strip("/"):
        raise ValueError("names no database: postgresql://user@host:port/DATABASE")
    return value


def _conninfo(value: str) -> dict[str, str]:
    """libpq's own reading of the URL (PQconninfoParse: no connection is made)."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(value).items() if v is not None}
    except ProgrammingError as exc:
        # libpq's message may quote the URL: say only that it is not one
        raise ValueError("is not a valid PostgreSQL URL (libpq cannot parse it)") from exc


def is_postgres(value: str) -> bool:
    return value != SQLITE
