"""What studies cost the PostgreSQL database: rows, bytes and WAL per instance, study, job and result.

Run by `python -m bench.database` (`--footprint-studies N`). One `fracnode serve` on the cluster's
emptied database (`assembly.complete_on_release`, one worker, route CR → `radiograph-fracture` →
a folder destination) receives N radiograph studies of 2 or 3 images, alternately, in one
association (`storescu -xv`). Once every job has ended and every result is delivered, each table
is measured twice:

- as it is: rows and `pg_total_relation_size` (heap, indexes, TOAST, free-space and visibility
  maps). With a few dozen rows a table is mostly empty pages, so this overstates a row's cost;
- at scale: its rows are copied into a scratch table `LIKE` it with its indexes, again and again
  (keys made unique by a suffix, inserted in random order as UIDs arrive) until it holds about
  20,000 rows; that table's `pg_total_relation_size` per row is what a row costs in a large
  database, before the dead row versions that UPDATEs leave behind (autovacuum makes their
  space reusable; it does not give it back to the disk).

The WAL written from the first instance to the last delivery and the jobs' run times
(`started_at` → `finished_at`) are recorded too.

`radiograph_node`, `wait_until_analysed` and `bench.on_postgres` are also what `bench.workers`
(jobs/s with several worker processes on one database) is built from.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.ingest import Fracnode, load_average, send
from bench.on_postgres import OnPostgres
from bench.radiograph import make_studies
from node.store import jobs, outbox
from tests.support import postgres as postgres_support

SCRATCH_ROWS = 20_000
IMAGES_PER_STUDY = (2, 3)


@dataclass(frozen=True)
class Table:
    name: str
    rows: int
    total_bytes: int  # pg_total_relation_size as the run left it
    bytes_per_row_at_scale: float


@dataclass(frozen=True)
class Footprint:
    studies: int
    instances: int
    tables: tuple[Table, ...]
    wal_bytes: int
    job_seconds: tuple[float, ...]  # each done job's started_at → finished_at
    jobs_span_s: float  # first job started → last job finished
    result_files: int  # what the folder destination received
    result_bytes: int
    load: str

    def per_study(self, table: str) -> float:
        return next(t.rows for t in self.tables if t.name == table) / self.studies

    def bytes_per_study(self) -> float:
        """At-scale bytes of every row a study of this run leaves (its association's share included)."""
        return sum(t.bytes_per_row_at_scale * t.rows for t in self.tables) / self.studies

    def report(self) -> str:
        lines = [
            f"### Database footprint: {self.studies} radiograph studies analysed on PostgreSQL (bench.db_footprint)",
            "",
            f"{self.studies} studies, {self.instances} CR instances (2 or 3 per study), one association,"
            " route CR → radiograph-fracture → folder, one worker; every job done and every result"
            f" delivered before the tables were measured (load {self.load}).",
            "",
            "| table | rows | rows per study | bytes as the run left it (pg_total_relation_size) | bytes per row at"
            f" scale (~{SCRATCH_ROWS:,} copied rows, with indexes) |",
            "|---|---|---|---|---|",
        ]
        for t in self.tables:
            lines.append(
                f"| {t.name} | {t.rows} | {t.rows / self.studies:.2f} | {t.total_bytes:,} |"
                f" {t.bytes_per_row_at_scale:.0f} |"
            )
        done = len(self.job_seconds)
        lines += [
            "",
            f"At scale, the rows of one such study take **{self.bytes_per_study() / 1024:.1f} KiB** (all tables,"
            f" one association shared by {self.studies} studies). WAL written from the first instance to the last"
            f" delivery: {self.wal_bytes / 1e6:.1f} MB, **{self.wal_bytes / self.studies / 1024:.0f} KiB per study**"
            f" ({self.wal_bytes / self.instances / 1024:.0f} KiB per instance). Results delivered:"
            f" {self.result_files} files, {self.result_bytes / self.studies / 1024:.0f} KiB per study.",
            "",
            f"Radiograph jobs on this machine's CPU, under the load above: {done} done, each"
            f" {statistics.median(self.job_seconds):.2f} s (median; {min(self.job_seconds):.2f}–"
            f"{max(self.job_seconds):.2f} s), {done / self.jobs_span_s:.2f} studies/s with one worker"
            f" ({self.jobs_span_s:.1f} s from the first job's start to the last one's end).",
        ]
        return "\n".join(lines)


def query(cluster: postgres_support.Cluster, sql: str) -> list[list[str]]:
    """The rows of `sql` on the node's database, each a list of its fields as text."""
    out = cluster.psql(sql, postgres_support.DATABASE)
    return [line.split("|") for line in out.splitlines() if line]


def bytes_per_row_at_scale(cluster: postgres_support.Cluster, table: str, rows: int) -> float:
    """The table's rows copied into a scratch table LIKE it (indexes included) up to ~SCRATCH_ROWS
    rows, its primary key made unique per copy; its total size per row."""
    copies = min(SCRATCH_ROWS, max(1, math.ceil(SCRATCH_ROWS / rows)))
    columns = query(
        cluster,
        "SELECT column_name, data_type FROM information_schema.columns"
        f" WHERE table_schema = current_schema() AND table_name = '{table}' ORDER BY ordinal_position",
    )
    keys = {
        name
        for (name,) in query(
            cluster,
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            f" AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '{table}'::regclass AND i.indisprimary",
        )
    }

    def copied(name: str, kind: str) -> str:
        if name not in keys:
            return name
        # below 2^31 for an INTEGER key: ids here are small and copies at most SCRATCH_ROWS
        return f"{name} || '.' || g" if kind == "text" else f"{name} + g * 100000"

    scratch = f"scratch_{table}"
    select = ", ".join(copied(name, kind) for name, kind in columns)
    query(
        cluster,
        f"CREATE TABLE {scratch} (LIKE {table} INCLUDING DEFAULTS INCLUDING INDEXES);"
        f" INSERT INTO {scratch} SELECT {select} FROM {table}, generate_series(1, {copies}) AS g ORDER BY random()",
    )
    ((size, count),) = query(cluster, f"SELECT pg_total_relation_size('{scratch}'), COUNT(*) FROM {scratch}")
    query(cluster, f"DROP TABLE {scratch}")
    return int(size) / int(count)


def wait_until_analysed(cluster: postgres_support.Cluster, studies: int, timeout_s: float = 1800) -> None:
    """Until `studies` jobs have ended and no result waits for delivery; a failed job stops the run."""
    final = ", ".join(f"'{state}'" for state in jobs.FINAL_STATES)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ((ended, failed, waiting),) = query(
            cluster,
            f"SELECT (SELECT COUNT(*) FROM jobs WHERE state IN ({final})),"
            f" (SELECT COUNT(*) FROM jobs WHERE state = '{jobs.FAILED}'),"
            f" (SELECT COUNT(*) FROM outbox WHERE state <> '{outbox.DELIVERED}')",
        )
        if int(failed):
            raise RuntimeError(f"{failed} job(s) failed: {query(cluster, 'SELECT last_error FROM jobs')}")
        if int(ended) >= studies and int(waiting) == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the jobs of {studies} studies did not end within {timeout_s:.0f} s")


def results_folder(workdir: Path) -> Path:
    return workdir / "data" / "results"


def radiograph_node(
    cluster: postgres_support.Cluster, workdir: Path, workers: int = 1, roles: str | None = None
) -> Fracnode:
    """`fracnode serve` on the cluster: radiographs to the model, results to a folder."""
    return OnPostgres(
        cluster,
        roles=roles,
        sections=(
            "assembly: {complete_on_release: true}\n"
            f"jobs: {{workers: {workers}}}\n"
            f"destinations: [{{name: results-folder, type: folder, path: {results_folder(workdir)}}}]\n"
            "routes: [{name: radiographs, match: {modality: [CR, DX]}, pipeline: radiograph-fracture,"
            " destinations: [results-folder]}]\n"
        ),
    )


def measure(cluster: postgres_support.Cluster, studies: int, workdir: Path) -> Footprint:
    files = [path for _, path in make_studies(studies, workdir / "studies", IMAGES_PER_STUDY)]
    node = radiograph_node(cluster, workdir)
    port = node.start(workdir)
    try:
        ((wal_before,),) = query(cluster, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        seconds, acked = send(files, node.ae_title, port, 1, ("-xv",))
        if acked != len(files):
            raise RuntimeError(f"sent {len(files)}, acknowledged {acked}")
        print(f"footprint: {len(files)} instances received in {seconds:.1f} s; waiting for the jobs …", flush=True)
        wait_until_analysed(cluster, studies)
        ((wal_after,),) = query(cluster, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
    finally:
        node.stop()
    names = [
        name
        for (name,) in query(
            cluster, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
        )
        if name != "meta"
    ]
    tables = []
    for name in names:
        ((rows, size),) = query(cluster, f"SELECT COUNT(*), pg_total_relation_size('{name}') FROM {name}")
        per_row = bytes_per_row_at_scale(cluster, name, int(rows)) if int(rows) else 0.0
        tables.append(Table(name, int(rows), int(size), per_row))
    times = query(
        cluster,
        f"SELECT finished_at - started_at, started_at, finished_at FROM jobs WHERE state = '{jobs.DONE}'",
    )
    results = [path for path in results_folder(workdir).rglob("*") if path.is_file()]
    return Footprint(
        studies=studies,
        instances=len(files),
        tables=tuple(tables),
        wal_bytes=int(float(wal_after) - float(wal_before)),
        job_seconds=tuple(float(t[0]) for t in times),
        jobs_span_s=max(float(t[2]) for t in times) - min(float(t[1]) for t in times),
        result_files=len(results),
        result_bytes=sum(path.stat().st_size for path in results),
        load=load_average(),
    )
