"""The tables and their versions; `meta.schema_version` says which schema a database has.

One text for every backend: `{id}` and `{real}` are the dialect's types for a key the database
assigns and for Unix seconds. A change of the schema raises SCHEMA_VERSION and adds to MIGRATIONS
the statements that bring a database of the previous version up to it.

SQLite upgrades itself when the node opens it (one process owns the file). A shared PostgreSQL
database is upgraded only by `fracnode db upgrade`: a node checks the version at start and refuses
an older one (`SchemaOutdated`), so that no two versions of the node write one database unawares.
"""

from __future__ import annotations

from node.store.sql import Sql, StoreError

SCHEMA_VERSION = 2

# version -> the statements that bring a database of version - 1 up to it (same placeholders as TABLES)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: dispatchers claim outbox rows with a lease, as workers claim jobs (several may run)
    2: (
        "ALTER TABLE outbox ADD COLUMN lease_owner TEXT",
        "ALTER TABLE outbox ADD COLUMN lease_until {real}",
    ),
}


class SchemaOutdated(StoreError):
    """The database's schema is not the one this fracnode writes: older (run `fracnode db upgrade`)
    or newer (a newer fracnode upgraded it)."""


TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    body_part TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    protocol_name TEXT NOT NULL DEFAULT '',
    image_type TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    size BIGINT NOT NULL,  -- bytes: a multi-frame instance may pass 2 GiB (PostgreSQL INTEGER is 32 bits)
    received_at {real} NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    association_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid, series_uid);

CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL DEFAULT '',
    first_received_at {real} NOT NULL,
    last_received_at {real} NOT NULL,
    pending INTEGER NOT NULL DEFAULT 1,
    release_ready INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL DEFAULT 0,
    completed_at {real},
    route_status TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS studies_pending ON studies (pending, last_received_at);

CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    started_at {real} NOT NULL,
    ended_at {real},
    peer_ae TEXT NOT NULL DEFAULT '',
    peer_address TEXT NOT NULL DEFAULT '',
    peer_port INTEGER,
    called_ae TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    instances_received INTEGER NOT NULL DEFAULT 0,
    instances_failed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS associations_started ON associations (started_at);

CREATE TABLE IF NOT EXISTS jobs (
    id {id},
    study_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    route TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    destinations TEXT NOT NULL,
    series_uids TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '',
    created_at {real} NOT NULL,
    not_before {real} NOT NULL,
    started_at {real},
    finished_at {real},
    lease_owner TEXT,
    lease_until {real},
    superseded_by INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid);

CREATE TABLE IF NOT EXISTS outbox (
    id {id},
    job_id INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {real} NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at {real} NOT NULL,
    delivered_at {real},
    lease_owner TEXT,  -- the dispatcher sending it now (node.dispatch), until lease_until
    lease_until {real}
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (destination, state, next_attempt_at);

-- studies pulled from a peer on request (node.pull): WADO-RS, C-GET or C-MOVE
CREATE TABLE IF NOT EXISTS pulls (
    id {id},
    study_uid TEXT NOT NULL,
    peer TEXT NOT NULL,
    method TEXT NOT NULL,
    state TEXT NOT NULL,
    expected INTEGER,
    received INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    requested_by TEXT NOT NULL DEFAULT '',
    created_at {real} NOT NULL,
    started_at {real},
    finished_at {real}
);
CREATE INDEX IF NOT EXISTS pulls_study ON pulls (study_uid, state);

-- what each job concluded, for the dashboard (node.outcomes): findings as JSON, timings
CREATE TABLE IF NOT EXISTS job_outcomes (
    job_id INTEGER PRIMARY KEY,
    findings TEXT NOT NULL DEFAULT '',
    timings TEXT NOT NULL DEFAULT '{{}}',
    recorded_at {real} NOT NULL
);

-- a keyed hash of each study's Accession Number, never the number (node.search)
CREATE TABLE IF NOT EXISTS study_search (
    study_uid TEXT PRIMARY KEY,
    accession_hmac TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS study_search_accession ON study_search (accession_hmac);
"""


def statements(sql: Sql) -> list[str]:
    """The schema's statements in the dialect of `sql`."""
    text = TABLES.format(id=sql.dialect.id_column, real=sql.dialect.real)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def version(sql: Sql) -> int | None:
    """The database's schema version; None when it has no schema yet (no `meta` table)."""
    if not sql.one(sql.dialect.table_exists, ("meta",)):
        return None
    row = sql.one("SELECT value FROM meta WHERE key = 'schema_version'")
    return int(row["value"]) if row else None


def upgrade(sql: Sql) -> tuple[int | None, int]:
    """Create a new database's tables, or migrate an older one, inside the caller's transaction.

    Returns (the version before, the version now). A database newer than this code is refused."""
    before = version(sql)
    if before is not None and before > SCHEMA_VERSION:
        raise SchemaOutdated(_newer(before))
    if before is None:
        for statement in statements(sql):
            sql.execute(statement)
    else:
        for target in range(before + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS.get(target, ()):
                sql.execute(statement.format(id=sql.dialect.id_column, real=sql.dialect.real))
    sql.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )
    return before, SCHEMA_VERSION


def check(sql: Sql) -> None:
    """Refuse a database whose schema is not this code's (`SchemaOutdated` says what to do)."""
    found = version(sql)
    if found is None:
        raise SchemaOutdated(
            "the database has no fracnode schema yet: run `fracnode db upgrade` (same configuration) first"
        )
    if found < SCHEMA_VERSION:
        raise SchemaOutdated(
            f"the database has schema version {found}, this fracnode needs {SCHEMA_VERSION}:"
            " run `fracnode db upgrade` (same configuration), then start the node"
        )
    if found > SCHEMA_VERSION:
        raise SchemaOutdated(_newer(found))


def _newer(found: int) -> str:
    return (
        f"the database has schema version {found}, newer than this fracnode's {SCHEMA_VERSION}:"
        " run the fracnode version that upgraded it"
    )
