"""The helpers `python -m bench.database` rests on; the benchmark itself is run by hand (bench/RESULTS.md)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from pydicom import dcmread

from bench.database import Run, Workload, report
from bench.db_footprint import bytes_per_row_at_scale
from bench.ingest import Measurement, process_cpu_seconds
from bench.radiograph import make_studies
from tests.support import postgres as postgres_support


def test_process_cpu_seconds_grows_with_work_and_is_zero_for_a_process_gone() -> None:
    before = process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    assert process_cpu_seconds(os.getpid()) >= before + 0.05
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert process_cpu_seconds(gone.pid) == 0.0


def test_make_studies_gives_each_study_its_own_uids_and_images(tmp_path: Path) -> None:
    images = make_studies(3, tmp_path, images_per_study=(2, 3))
    datasets = [(uid, dcmread(path)) for uid, path in images]
    assert [sum(1 for u, _ in images if u == uid) for uid in dict.fromkeys(u for u, _ in images)] == [2, 3, 2]
    assert all(ds.StudyInstanceUID == uid for uid, ds in datasets)
    assert len({ds.SOPInstanceUID for _, ds in datasets}) == 7
    assert all(ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID for _, ds in datasets)
    assert len({ds.SeriesInstanceUID for _, ds in datasets}) == 3  # one series per study


def test_report_divides_the_median_postgresql_rate_by_the_median_sqlite_rate(tmp_path: Path) -> None:
    def run(backend: str, seconds: float) -> Run:
        # 100 instances: 1 s of node CPU is 10 ms each
        return Run(
            "CT", Measurement(backend, 1, 100, seconds), 1.0, 0.5 if backend == "postgresql" else 0.0, 120, 204800
        )

    runs = [run("sqlite", s) for s in (1.0, 2.0, 4.0)] + [run("postgresql", s) for s in (2.0, 4.0, 8.0)]
    runs += [Run("CT", Measurement(backend, 4, 100, 1.0), 1.0, 0.0, 0, 0) for backend in ("sqlite", "postgresql")]
    row = next(line for line in report(runs, [Workload("CT", "", [], ())]).splitlines() if line.startswith("| CT | 1 "))
    # medians 50 and 25 instances/s; no unflushed runs, no second table
    assert row.split(" | ")[2:] == ["50.0", "100.0, 50.0, 25.0", "25.0", "50.0, 25.0, 12.5", "**0.50**",
                                    "10.00 / 10.00 ms", "5.00 ms", "1.20", "2.0 KiB |"]  # fmt: skip


def test_bytes_per_row_at_scale_copies_the_rows_with_unique_keys_and_drops_the_copy(
    postgres_url: str, postgres_cluster: postgres_support.Cluster
) -> None:
    db = postgres_support.DATABASE
    postgres_cluster.psql(
        "CREATE TABLE texts (uid TEXT PRIMARY KEY, payload TEXT NOT NULL);"
        " INSERT INTO texts SELECT 'uid' || i, repeat('x', 100) FROM generate_series(1, 10) AS i;"
        " CREATE TABLE numbers (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
        " INSERT INTO numbers SELECT i, i FROM generate_series(1, 10) AS i",
        db,
    )
    texts = bytes_per_row_at_scale(postgres_cluster, "texts", 10)
    numbers = bytes_per_row_at_scale(postgres_cluster, "numbers", 10)
    # a heap tuple of ~24 B header + 4 B line pointer + its data, and one index entry per row
    assert 130 < texts < 400
    assert 40 < numbers < texts
    left = postgres_cluster.psql("SELECT tablename FROM pg_tables WHERE tablename LIKE 'scratch%'", db)
    assert left.strip() == ""
