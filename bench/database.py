"""Ingest with the index in PostgreSQL against the embedded SQLite file, in one run.

    .venv/bin/python -m bench.database [--repeat 3] [--slices 300] [--studies 40] [--label TEXT] [--no-results]

`fracnode serve` (its own process, no routes) receives two workloads from DCMTK `storescu`
(TCP_NODELAY=1), over 1 association and over 4 parallel ones, once with `storage.database`
unset (SQLite, the default) and once with a PostgreSQL 15 cluster made here:

- CT: `--slices` slices of 512×512 int16, Explicit VR Little Endian (0.5 MB each), as `bench.ingest`;
- CR: `--studies` radiograph studies of 2 or 3 images (alternately), copies of the real JPEG 2000
  lossless CR sample (1760×1760, 0.8 MB) with new UIDs, sent as they are (`storescu -xv`).

Each run starts a fresh node on an empty data folder and, for PostgreSQL, an emptied database
whose schema `fracnode db upgrade` makes first. The backends take turns in alternating order;
medians are reported. Every instance must be acknowledged with Success and be found indexed
and spooled. The node acknowledges an instance only after its file is fsynced and renamed, its
folder fsynced and its index row committed: with PostgreSQL that commit waits for the WAL flush,
so the cluster must run with `fsync` and `synchronous_commit` on (checked; the run stops otherwise).
For PostgreSQL each run also counts write transactions (transaction ids assigned) and WAL bytes.
`--diagnose-unflushed` adds PostgreSQL with `synchronous_commit` off, labelled as the diagnosis it
is (what the WAL flush of each commit costs), never as a way to run.

Then (`--footprint-studies`, 0 skips it) `bench.db_footprint` measures what studies cost the
database: one node on PostgreSQL analyses radiograph studies to the end and the tables are
measured (see that module).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import db_footprint
from bench.ingest import (
    REPO,
    RESULTS,
    Fracnode,
    Measurement,
    load_average,
    machine,
    measure,
    require_dcmtk,
    write_results,
)
from bench.on_postgres import OnPostgres, describe_cluster, start_cluster
from bench.radiograph import make_studies
from tests.support import dicomgen
from tests.support import postgres as postgres_support

SCENARIOS = (1, 4)  # parallel associations
SQLITE, POSTGRESQL = "sqlite", "postgresql"
# diagnosis only, never a configuration: commits acknowledged before their WAL is flushed
UNFLUSHED = "postgresql-unflushed"  # synchronous_commit off


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    files: list[Path]
    proposal: tuple[str, ...]  # storescu's transfer syntax options
    megabytes: float = 0.0


@dataclass(frozen=True)
class Run:
    workload: str
    measurement: Measurement
    node_cpu_s: float  # the node process's own CPU during the send
    server_cpu_s: float = 0.0  # PostgreSQL only: every server process's CPU during the send
    transactions: int = 0  # PostgreSQL only: transaction ids assigned during the send
    wal_bytes: int = 0  # PostgreSQL only: WAL written during the send

    def per_instance_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.measurement.instances


def workloads(tmp: Path, slices: int, studies: int) -> list[Workload]:
    ct = dicomgen.write(dicomgen.ct_series(slices, size=512), tmp / "ct")
    cr = [path for _, path in make_studies(studies, tmp / "cr", images_per_study=(2, 3))]
    return [
        Workload("CT", f"1 study, {slices} slices of 512×512 int16, Explicit VR LE", ct, ("-xe",), _mb(ct)),
        Workload(
            "CR", f"{studies} studies of 2–3 images, {len(cr)} JPEG 2000 lossless 1760×1760", cr, ("-xv",), _mb(cr)
        ),
    ]


def _mb(files: Sequence[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


def receiver_for(backend: str, cluster: postgres_support.Cluster) -> Fracnode:
    if backend == SQLITE:
        return Fracnode(name=SQLITE)
    return OnPostgres(cluster, synchronous_commit="off" if backend == UNFLUSHED else "on", name=backend)


def run_all(
    cluster: postgres_support.Cluster, loads: Sequence[Workload], repeat: int, tmp: Path, backends: Sequence[str]
) -> list[Run]:
    runs: list[Run] = []
    for rep in range(repeat):
        for load in loads:
            for n in SCENARIOS:
                shift = (rep + n) % len(backends)
                for backend in [*backends[shift:], *backends[:shift]]:
                    receiver = receiver_for(backend, cluster)
                    where = tmp / f"run-{rep}-{load.name}-{n}-{backend}"
                    m = measure(receiver, load.files, n, where, load.proposal)
                    node_cpu = receiver.cpu_at_stored - receiver.cpu_at_start
                    if isinstance(receiver, OnPostgres):
                        xids = receiver.at_end[0] - receiver.at_start[0]
                        wal = receiver.at_end[1] - receiver.at_start[1]
                        run = Run(load.name, m, node_cpu, receiver.server_cpu_s, xids, wal)
                    else:
                        run = Run(load.name, m, node_cpu)
                    runs.append(run)
                    print(
                        f"rep {rep + 1}/{repeat}  {load.name} {backend:10s} {n} assoc  {m.rate:7.1f} instances/s"
                        f"  ({m.seconds:.2f} s; CPU per instance: node {run.per_instance_ms(node_cpu):.2f} ms,"
                        f" PostgreSQL {run.per_instance_ms(run.server_cpu_s):.2f} ms, machine"
                        f" {m.busy_ms_per_instance:.2f} ms, {m.idle:.0%} idle; load {load_average()})",
                        flush=True,
                    )
    return runs


def report(runs: Sequence[Run], loads: Sequence[Workload]) -> str:
    """The PostgreSQL/SQLite table; a second one when the unflushed diagnosis was run."""

    def cell(load: str, backend: str, n: int) -> list[Run]:
        key = (load, backend, n)
        return [r for r in runs if (r.workload, r.measurement.receiver, r.measurement.associations) == key]

    def rate(cell_runs: list[Run]) -> float:
        return statistics.median(r.measurement.rate for r in cell_runs)

    def listed(cell_runs: list[Run]) -> str:
        return ", ".join(f"{r.measurement.rate:.1f}" for r in cell_runs)

    def cpu_ms(cell_runs: list[Run], server: bool = False) -> float:
        return statistics.median(r.per_instance_ms(r.server_cpu_s if server else r.node_cpu_s) for r in cell_runs)

    lines = [
        "| workload | associations | SQLite: instances/s (median) | runs | PostgreSQL: instances/s (median) | runs"
        " | **PostgreSQL / SQLite** | node's CPU per instance, SQLite / PostgreSQL | PostgreSQL server's CPU per"
        " instance | write transactions per instance | WAL per instance |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    diagnosis = [
        "",
        f"Diagnosis only, not a configuration to run: `{UNFLUSHED}` is the same cluster with `synchronous_commit`"
        " off for the node's database; it acknowledges a commit before its WAL"
        " is flushed, so a crash of the database host could lose indexed instances the node has acknowledged.",
        "",
        "| workload | associations | instances/s (median) | runs | / SQLite | / PostgreSQL | node's CPU per"
        " instance | PostgreSQL server's CPU per instance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for load in loads:
        for n in SCENARIOS:
            lite, pg, unflushed = (cell(load.name, backend, n) for backend in (SQLITE, POSTGRESQL, UNFLUSHED))
            xacts = statistics.median(r.transactions / r.measurement.instances for r in pg)
            wal = statistics.median(r.wal_bytes / r.measurement.instances for r in pg)
            lines.append(
                f"| {load.name} | {n} | {rate(lite):.1f} | {listed(lite)} | {rate(pg):.1f} | {listed(pg)}"
                f" | **{rate(pg) / rate(lite):.2f}** | {cpu_ms(lite):.2f} / {cpu_ms(pg):.2f} ms"
                f" | {cpu_ms(pg, server=True):.2f} ms | {xacts:.2f} | {wal / 1024:.1f} KiB |"
            )
            if unflushed:
                diagnosis.append(
                    f"| {load.name} | {n} | {rate(unflushed):.1f} | {listed(unflushed)}"
                    f" | {rate(unflushed) / rate(lite):.2f} | {rate(unflushed) / rate(pg):.2f}"
                    f" | {cpu_ms(unflushed):.2f} ms | {cpu_ms(unflushed, server=True):.2f} ms |"
                )
    return "\n".join(lines + (diagnosis if any(r.measurement.receiver == UNFLUSHED for r in runs) else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300, help="CT slices (one study)")
    parser.add_argument("--studies", type=int, default=40, help="CR studies of 2-3 images")
    parser.add_argument("--footprint-studies", type=int, default=40, help="radiograph studies analysed; 0 skips")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where to generate and receive")
    parser.add_argument("--label", default="ingest on PostgreSQL and SQLite (bench.database)")
    parser.add_argument("--notes", default="", help="text appended to the RESULTS.md section")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument(
        "--diagnose-unflushed",
        action="store_true",
        help="also run PostgreSQL with synchronous_commit off, to show what flushing each commit costs",
    )
    args = parser.parse_args(argv)
    backends = [SQLITE, POSTGRESQL, *([UNFLUSHED] if args.diagnose_unflushed else [])]
    require_dcmtk(parser)

    tmp = Path(tempfile.mkdtemp(prefix="fracnode-bench-db-", dir=args.tmpdir))
    cluster, settings = start_cluster()
    try:
        info = machine(tmp)
        info["PostgreSQL"] = describe_cluster(settings)
        info["Load before"] = f"{load_average()} (1, 5, 15 min)"
        for key, value in info.items():
            print(f"{key}: {value}")
        loads = workloads(tmp, args.slices, args.studies)
        runs = run_all(cluster, loads, args.repeat, tmp, backends)
        footprint = (
            db_footprint.measure(cluster, args.footprint_studies, tmp / "footprint") if args.footprint_studies else None
        )
        info["Load after"] = f"{load_average()} (1, 5, 15 min)"
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)

    text = report(runs, loads) if runs else "(no ingest runs: --repeat 0)"
    print(f"\nload after: {info['Load after']}\n\n{text}")
    if footprint is not None:
        print(f"\n{footprint.report()}")
    if not args.no_results:
        title = f"{datetime.date.today().isoformat()}: {args.label}"
        sections = [
            f"## {title}",
            "",
            "Machine:",
            *(f"- {k}: {v}" for k, v in info.items()),
            "",
            f"Method: `python -m bench.database --repeat {args.repeat} --slices {args.slices} --studies {args.studies}"
            f"{' --diagnose-unflushed' if args.diagnose_unflushed else ''}` (see its docstring). Workloads: "
            + "; ".join(f"{w.name}: {w.description} ({w.megabytes:.0f} MB)" for w in loads)
            + ". Each cell: fresh node and storage per run, `sync` before each timed send, backends in"
            " alternating order. CPU per instance: the node process's own (utime + stime) and the"
            " PostgreSQL server's (postmaster and all its children) while the senders ran, divided by the"
            " instances; write transactions are transaction ids assigned meanwhile, WAL the bytes"
            " written meanwhile.",
            "",
            text,
        ]
        if footprint is not None:
            sections += ["", footprint.report()]
        if args.notes:
            sections += ["", args.notes.strip()]
        write_results(title, "\n".join(sections) + "\n")
        print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
