"""The node's index: one SQLite database in WAL mode, shared by all stages through one lock.

The spool files are the truth for received instances; the `instances` table indexes them and
can be rebuilt from the files (see `spool.reconcile`). Jobs and the outbox live only here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

SCHEMA = """
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
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    association_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid, series_uid);

CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL DEFAULT '',
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    pending INTEGER NOT NULL DEFAULT 1,
    release_ready INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL DEFAULT 0,
    completed_at REAL,
    route_status TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS studies_pending ON studies (pending, last_received_at);

CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    created_at REAL NOT NULL,
    not_before REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    lease_owner TEXT,
    lease_until REAL,
    superseded_by INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid);

CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (destination, state, next_attempt_at);

-- studies pulled from a peer on request (node.pull): WADO-RS, C-GET or C-MOVE
CREATE TABLE IF NOT EXISTS pulls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS pulls_study ON pulls (study_uid, state);
"""


class Database:
    """One SQLite connection guarded by a lock; `transaction()` gives BEGIN IMMEDIATE … COMMIT."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            uri = f"file:{path}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
        else:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # SQLite gives the -wal and -shm files the database file's mode: create it private
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
            # WAL + NORMAL: a process crash never loses a commit; after power loss the index is
            # rebuilt from the fsynced spool files (spool.reconcile), so FULL is not needed here.
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (e.g. SQLITE_FULL) may leave the transaction open
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        """Run one statement in its own transaction; return the number of rows changed."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
