"""A PostgreSQL cluster that flushes every commit, and `fracnode serve` on its database, for benchmarks.

The cluster is tests/support/postgres.py's (initdb in /tmp, a loopback port, the password in a
passfile). A benchmark that compares it with SQLite is honest only if every commit the node waits
for is on disk, so `start_cluster` checks the settings that decide it and refuses otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.ingest import Fracnode, process_cpu_seconds
from tests.support import postgres as postgres_support

# what the honesty of the comparison rests on: every commit is flushed to disk before it returns
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
SETTINGS = (*DURABLE, "wal_sync_method", "shared_buffers", "server_version")


def start_cluster() -> tuple[postgres_support.Cluster, dict[str, str]]:
    """A fresh cluster (tests/support/postgres.py: initdb in /tmp, loopback port) with its settings;
    PGPASSFILE is set for the node and for this process. Refuses a cluster that does not flush commits."""
    why = postgres_support.available()
    if why:
        raise SystemExit(why)
    cluster = postgres_support.Cluster().create()
    os.environ["PGPASSFILE"] = str(cluster.passfile)
    settings = {name: cluster.psql(f"SHOW {name}").strip() for name in SETTINGS}
    lax = {name: settings[name] for name, value in DURABLE.items() if settings[name] != value}
    if lax:
        cluster.destroy()
        raise SystemExit(f"the PostgreSQL cluster does not flush every commit: {lax}")
    return cluster, settings


def describe_cluster(settings: dict[str, str]) -> str:
    """The cluster's line of a benchmark's machine description."""
    return (
        f"{settings['server_version']}, a cluster made by tests/support/postgres.py in /tmp (same disk),"
        + "".join(f" {name} {settings[name]}," for name in SETTINGS[:-1])
        + " other settings initdb's defaults"
    )


def server_cpu_seconds(cluster: postgres_support.Cluster) -> dict[int, float]:
    """CPU seconds of the postmaster and each of its children (backends, WAL writer, checkpointer …)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    seconds = {postmaster: process_cpu_seconds(postmaster)}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == postmaster:
            pid = int(stat.parent.name)
            seconds[pid] = process_cpu_seconds(pid)
    return seconds


def server_counters(cluster: postgres_support.Cluster) -> tuple[int, int]:
    """(the next transaction id, WAL bytes written since initdb). Transaction ids are assigned to
    writing transactions only, and the counter is exact at once (pg_stat_database lags)."""
    out = cluster.psql(
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')",
        postgres_support.DATABASE,
    )
    xid, wal = out.strip().split("|")
    return int(xid), int(float(wal))


class OnPostgres(Fracnode):
    """`fracnode serve` on the cluster's database, emptied and upgraded before each start; the
    server's counters are read once the node is up and again when the send is over."""

    def __init__(
        self,
        cluster: postgres_support.Cluster,
        sections: str | None = None,
        log_level: str = "WARNING",
        synchronous_commit: str = "on",
        name: str = "postgresql",
        roles: str | None = None,
    ) -> None:
        super().__init__(sections=sections, log_level=log_level, database=cluster.url, name=name, roles=roles)
        self.cluster = cluster
        # "off" only to measure what the WAL flush of each commit costs: a crash of the server's host
        # could then lose acknowledged rows (PostgreSQL's documentation, "Asynchronous Commit")
        self.synchronous_commit = synchronous_commit
        self.at_start = self.at_end = (0, 0)
        self.server_cpu_at_start: dict[int, float] = {}
        self.server_cpu_at_end: dict[int, float] = {}

    def start(self, workdir: Path) -> int:
        self.cluster.empty()
        # the node's connections are new after this, so they all take the database's setting
        self.cluster.psql(
            f"ALTER DATABASE {postgres_support.DATABASE} SET synchronous_commit = {self.synchronous_commit}"
        )
        port = super().start(workdir)
        self.at_start = server_counters(self.cluster)
        self.server_cpu_at_start = server_cpu_seconds(self.cluster)
        return port

    def stored(self) -> int:
        self.server_cpu_at_end = server_cpu_seconds(self.cluster)
        self.at_end = server_counters(self.cluster)
        return super().stored()

    @property
    def server_cpu_s(self) -> float:
        """The server's CPU seconds between start() and stored() (a process born meanwhile from 0)."""
        end, start = self.server_cpu_at_end, self.server_cpu_at_start
        return sum(seconds - start.get(pid, 0.0) for pid, seconds in end.items())
