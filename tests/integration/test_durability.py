"""Durability promises, proven with real components (DESIGN.md, "Operating principles").

- nothing a C-STORE acknowledged is lost when the node is killed mid-transfer, and the
  restarted node processes it;
- results wait in the outbox while a destination refuses connections, and arrive once it is up;
- a full disk gives 0xA700 for what cannot be kept, never a partial file or a dead node;
- jobs survive a restart and a dead worker's lease; failing pipelines are retried a bounded
  number of times and the reason is recorded.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from node import owners
from node.config import Config, load
from node.service import Node
from node.store import Row, open_configured
from tests.conftest import REPO, node_config, require_tool, wait_until
from tests.support import dicomgen, pipelines
from tests.support.orthanc import Orthanc, free_port
from tests.support.pipelines import referenced_instances

CT_ROUTE = {
    "name": "ct",
    "match": {"modality": ["CT"]},
    "pipeline": "test-kos",
    "destinations": ["results-folder"],
}
TOOL_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}


# -- helpers ------------------------------------------------------------------------------------


def write_config(tmp_path: Path, **sections: Any) -> tuple[Path, Config]:
    """The test configuration as a YAML file (for `fracnode -c`) and as loaded from that file."""
    config = node_config(tmp_path / "data", **sections)
    path = tmp_path / "fracnode.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path, load(path)


def fracnode_command() -> list[str]:
    script = Path(sys.executable).with_name("fracnode")
    return [str(script)] if script.exists() else [sys.executable, "-m", "node.cli"]


def fracnode_status(config_path: Path) -> str:
    result = subprocess.run(
        [*fracnode_command(), "-c", str(config_path), "status"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def storescu_command(port: int, files: list[Path], *options: str) -> list[str]:
    return [
        require_tool("storescu"),
        *options,
        "-aet",
        "STORESCU",
        "-aec",
        "FRACNODE",
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]


def storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        storescu_command(port, files),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=TOOL_ENV,
    )


def documents_in(folder: Path) -> list[Dataset]:
    return [dcmread(p) for p in sorted(folder.rglob("*.dcm"))] if folder.exists() else []


def temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def assemble(node: Node, studies: int) -> None:
    """Step assembly until `studies` studies completed their quiet period and were routed."""
    completed: list[int] = []
    wait_until(lambda: completed.append(node.assemble_once()) or sum(completed) >= studies, timeout_s=30)
    assert sum(completed) == studies


def dead_pid() -> int:
    """The process id of a process that ran and ended (and is not in use again)."""
    process = subprocess.Popen(["true"])
    process.wait()
    assert owners.gone(f"{owners.host_tag()}-{process.pid}")
    return process.pid


def job_rows(config: Config) -> list[Row]:
    """The jobs table as another process sees it (the node that wrote it may be stopped)."""
    db = open_configured(config, readonly=True)
    try:
        return db.query("SELECT * FROM jobs ORDER BY id")
    finally:
        db.close()


class NodeProcess:
    """`fracnode -c FILE serve` as a separate process, so that it can be SIGKILLed."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout_s: float = 60.0) -> NodeProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*fracnode_command(), "-c", str(self.config_path), "serve"],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

        def listening() -> int:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"fracnode exited with {self.process.returncode}:\n{self.log_tail()}")
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = re.search(r"listening as \S+ on [\d.]+:(\d+)", text)
            return int(match[1]) if match else 0

        self.port = wait_until(listening, timeout_s=timeout_s)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def node_processes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def idle_node(tmp_path: Path) -> Iterator[Any]:
    """A Node whose DICOM listener runs but whose stages run only when the test steps them."""
    nodes: list[Node] = []

    def make(config: Config) -> Node:
        node = Node(config)
        node.recover()
        node.ingest.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.ingest._servers:  # not stopped by the test already
            node.stop()


@pytest.fixture
def flaky_failures() -> Iterator[dict[str, int]]:
    yield pipelines.FLAKY_FAILURES
    pipelines.FLAKY_FAILURES["remaining"] = 0


# -- 1. SIGKILL mid-transfer --------------------------------------------------------------------


def send_until_killed(port: int, files: list[Path], kill_after: int, kill: Callable[[], None]) -> tuple[set[Path], str]:
    """Run `storescu -v`; call `kill()` once `kill_after` stores were acknowledged.

    Returns the files whose C-STORE response was Success, as storescu printed them
    ("Sending file: PATH" … "Received Store Response (Success)"), and storescu's log.
    """
    command = storescu_command(port, files, "-v")
    client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=TOOL_ENV)
    watchdog = threading.Timer(120, client.kill)
    watchdog.start()
    acknowledged: set[Path] = set()
    lines: list[str] = []
    current: Path | None = None
    killed = False
    try:
        assert client.stderr is not None
        for line in client.stderr:
            lines.append(line)
            if line.startswith("I: Sending file: "):
                current = Path(line.removeprefix("I: Sending file: ").strip())
            elif "Received Store Response" in line and "(Success)" in line:
                assert current is not None, "a store response before any file was sent"
                acknowledged.add(current)
                if len(acknowledged) >= kill_after and not killed:
                    kill()
                    killed = True
        client.wait(timeout=60)
    finally:
        watchdog.cancel()
        if client.poll() is None:
            client.kill()
            client.wait()
    assert killed, "storescu finished before the node could be killed:\n" + "".join(lines[-20:])
    return acknowledged, "".join(lines)


@pytest.mark.slow
def test_instances_acknowledged_before_sigkill_survive_and_are_processed(tmp_path, node_processes, database):
    config_path, config = write_config(
        tmp_path,
        storage=database,
        assembly={"quiet_period_s": 1.0},
        destinations=[{"name": "results-folder", "type": "folder", "path": str(tmp_path / "results")}],
        routes=[CT_ROUTE],
    )
    series = dicomgen.ct_series(200, size=128)
    sent = {ds.SOPInstanceUID: ds for ds in series}
    files = dicomgen.write(series, tmp_path / "ct")
    study_uid = series[0].StudyInstanceUID

    node = NodeProcess(config_path, tmp_path / "node.log").start()
    node_processes.append(node)
    acknowledged_files, client_log = send_until_killed(node.port, files, kill_after=60, kill=node.kill)
    acknowledged = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in acknowledged_files}
    assert 60 <= len(acknowledged) < len(series), client_log[-2000:]

    restarted = NodeProcess(config_path, tmp_path / "node.log").start()
    node_processes.append(restarted)

    # every acknowledged instance is in the spool, whole: it parses and its pixels are the ones sent
    spool = config.spool_dir / study_uid
    for uid in acknowledged:
        stored = dcmread(spool / f"{uid}.dcm")
        assert stored.SOPInstanceUID == uid
        assert stored.PixelData == sent[uid].PixelData, f"{uid}: pixel data differs from what was sent"

    # the spool may also hold instances that were written but not yet acknowledged: kept too
    held = {p.stem for p in spool.glob("*.dcm")}
    assert acknowledged <= held <= set(sent)

    # the restarted node processed all of it: a result references every instance the spool holds
    results = tmp_path / "results" / study_uid

    def complete_document() -> Dataset | None:
        return next((d for d in documents_in(results) if referenced_instances(d) == held), None)

    try:
        document = wait_until(complete_document, timeout_s=90, interval_s=0.3)
    except AssertionError:
        found = [len(referenced_instances(d)) for d in documents_in(results)]
        raise AssertionError(
            f"no result references the {len(held)} spooled instances (results reference"
            f" {found})\n{restarted.log_tail()}"
        ) from None
    assert document.StudyInstanceUID == study_uid
    assert referenced_instances(document) >= acknowledged
    # start-up recovery left no temporary file of an interrupted write behind
    assert temporary_files(config.storage.data_dir) == []


# -- 2. a destination that refuses connections for a while --------------------------------------


@pytest.mark.slow
def test_results_for_an_unreachable_destination_arrive_once_it_listens(tmp_path, start_node, database):
    pacs_port = free_port()  # nothing listens here until Orthanc starts below
    config_path, config = write_config(
        tmp_path,
        storage=database,
        peers=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_port}],
        destinations=[{"name": "pacs", "type": "dimse", "peer": "pacs"}],
        routes=[{**CT_ROUTE, "destinations": ["pacs"]}],
    )
    node = start_node(config)
    series = dicomgen.ct_series(5)
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "ct")).returncode == 0

    def retrying() -> Row | None:
        rows = node.db.query("SELECT * FROM outbox WHERE destination = 'pacs'")
        return rows[0] if rows and rows[0]["attempts"] >= 2 else None

    item = wait_until(retrying, timeout_s=60)
    assert item["state"] == "pending"
    assert item["study_uid"] == series[0].StudyInstanceUID
    assert "cannot connect" in item["last_error"] and str(pacs_port) in item["last_error"]
    status = fracnode_status(config_path)
    assert "pacs pending 1" in status, status

    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.dicom_port = pacs_port
    orthanc.start()
    try:
        found = orthanc.wait_for_instances(1, timeout_s=60)
        tags = orthanc.instance_tags(found[0])
        assert tags["Modality"] == "KO"
        assert tags["StudyInstanceUID"] == series[0].StudyInstanceUID
        delivered = wait_until(
            lambda: node.db.query("SELECT * FROM outbox WHERE id = ? AND state = 'delivered'", (item["id"],)),
            timeout_s=30,
        )
        assert delivered[0]["attempts"] > item["attempts"]
        assert delivered[0]["last_error"] == ""
    finally:
        orthanc.stop()


# -- 3. full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True, timeout=30)


def c_store(port: int, datasets: list[Dataset]) -> dict[str, int | None]:
    """Send with pynetdicom; the status of each instance (None: no answer even after a resend).

    pynetdicom's requestor can lose a response that arrives very fast (its reactor thread takes
    it as an unexpected message and the caller waits out the DIMSE timeout; see pynetdicom
    issue #875). The node's C-STORE is idempotent, so like any SCU this one resends an instance
    that got no answer, on a new association.
    """
    ae = AE(ae_title="DISKFILLER")
    ae.dimse_timeout = 5
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    statuses: dict[str, int | None] = {}
    pending = list(datasets)
    for _ in range(3):
        assoc = ae.associate("127.0.0.1", port, ae_title="FRACNODE")
        assert assoc.is_established
        unanswered = []
        try:
            for ds in pending:
                if not assoc.is_established:
                    unanswered.append(ds)
                    continue
                status = assoc.send_c_store(ds)
                statuses[ds.SOPInstanceUID] = int(status.Status) if status else None
                if not status:
                    unanswered.append(ds)
        finally:
            if assoc.is_established:
                assoc.release()
        pending = unanswered
        if not pending:
            break
    return statuses


def test_full_disk_refuses_with_out_of_resources_and_keeps_what_it_acknowledged(tmp_path, small_disk):
    config = node_config(small_disk / "data")
    node = Node(config)
    node.start()
    try:
        # leave ~1.5 MiB: room for some of the 40 slices of 128 KiB, not for all
        ballast = small_disk / "ballast"
        stat = os.statvfs(small_disk)
        ballast.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 1536 * 1024))
        series = dicomgen.ct_series(40, size=256)
        sent = {ds.SOPInstanceUID: ds for ds in series}

        statuses = c_store(node.ingest.port, series)

        assert len(statuses) == len(series)
        stored = {uid for uid, code in statuses.items() if code == 0x0000}
        refused = {uid: code for uid, code in statuses.items() if code != 0x0000}
        assert stored, "nothing was stored: the disk was too full to test anything"
        assert refused, "every instance was stored: the disk never filled up"
        assert set(refused.values()) == {0xA700}, {f"0x{c:04X}" if c is not None else None for c in refused.values()}

        spool = config.spool_dir / series[0].StudyInstanceUID
        for uid in stored:
            on_disk = dcmread(spool / f"{uid}.dcm")
            assert on_disk.PixelData == sent[uid].PixelData
        indexed = {r["sop_instance_uid"] for r in node.db.query("SELECT sop_instance_uid FROM instances")}
        assert indexed == stored
        # whatever else is on disk is whole too (a refused instance may be written but not indexed)
        for path in spool.glob("*.dcm"):
            assert dcmread(path).PixelData == sent[path.stem].PixelData, f"{path.name} is incomplete"
        assert temporary_files(config.storage.data_dir) == []

        # the node still answers, and stores again once there is room
        echo = subprocess.run(
            [require_tool("echoscu"), "-aec", "FRACNODE", "127.0.0.1", str(node.ingest.port)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stderr
        ballast.unlink()
        retried = next(ds for ds in series if ds.SOPInstanceUID in refused)
        extra = dicomgen.ct_series(1, study_uid=series[0].StudyInstanceUID, size=256, seed=7)[0]
        assert c_store(node.ingest.port, [retried, extra]) == {
            retried.SOPInstanceUID: 0,
            extra.SOPInstanceUID: 0,
        }
        assert dcmread(spool / f"{extra.SOPInstanceUID}.dcm").PixelData == extra.PixelData
        assert dcmread(spool / f"{retried.SOPInstanceUID}.dcm").PixelData == retried.PixelData
    finally:
        node.stop()


# -- 4. jobs survive a restart and a dead worker ------------------------------------------------


def test_restart_resumes_queued_and_interrupted_jobs(tmp_path, idle_node, start_node, database):
    config = node_config(
        tmp_path / "data",
        storage=database,
        routes=[CT_ROUTE],
        destinations=[{"name": "results-folder", "type": "folder", "path": str(tmp_path / "results")}],
    )
    node = idle_node(config)
    studies = [dicomgen.ct_series(3, seed=1), dicomgen.ct_series(4, seed=2)]
    for i, series in enumerate(studies):
        assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / f"ct{i}")).returncode == 0
    assemble(node, 2)
    # a worker process of this host that was killed while it ran a job (a clean stop gives its jobs back)
    interrupted = node.jobs.claim(f"{owners.host_tag()}-{dead_pid()}-0a1b2c-w0", time.time())
    assert interrupted is not None
    node.stop()
    assert sorted(r["state"] for r in job_rows(config)) == ["queued", "running"]

    restarted = start_node(config)

    def all_done() -> list[Row] | None:
        rows = restarted.db.query("SELECT * FROM jobs ORDER BY id")
        return rows if all(r["state"] == "done" for r in rows) else None

    rows = wait_until(all_done, timeout_s=60)
    attempts = {r["id"]: r["attempts"] for r in rows}
    assert attempts[interrupted.id] == 2  # taken back from the stopped node and run again
    assert [a for job_id, a in attempts.items() if job_id != interrupted.id] == [1]
    for series in studies:
        folder = tmp_path / "results" / series[0].StudyInstanceUID
        documents = wait_until(lambda folder=folder: documents_in(folder), timeout_s=30)
        assert [referenced_instances(d) for d in documents] == [{ds.SOPInstanceUID for ds in series}]


def test_an_instance_resent_in_a_corrected_study_stays_there_after_a_restart(tmp_path, idle_node):
    """A PACS that merges studies resends an instance with its SOP Instance UID kept and the other
    study's UID: the node holds it in that study only, and a restart does not undo that."""
    config = node_config(tmp_path / "data")
    node = idle_node(config)
    series = dicomgen.ct_series(3, seed=5)
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "first")).returncode == 0
    moved = series[0]
    moved.StudyInstanceUID = dicomgen.ct_series(1, seed=6)[0].StudyInstanceUID
    assert storescu(node.ingest.port, dicomgen.write([moved], tmp_path / "corrected")).returncode == 0

    def where() -> dict[str, str]:
        conn = sqlite3.connect(f"file:{config.database_path}?mode=ro", uri=True)
        try:
            return dict(conn.execute("SELECT sop_instance_uid, study_uid FROM instances"))
        finally:
            conn.close()

    expected = {ds.SOPInstanceUID: ds.StudyInstanceUID for ds in series}
    assert where() == expected
    spooled = sorted(p.relative_to(config.spool_dir) for p in config.spool_dir.rglob("*.dcm"))
    assert spooled == sorted(Path(study, f"{uid}.dcm") for uid, study in expected.items())
    node.stop()

    idle_node(config)  # start-up recovery reconciles the spool with the index
    assert where() == expected
    assert len(list(config.spool_dir.rglob("*.dcm"))) == 3


def test_job_of_a_dead_worker_is_taken_over_when_its_lease_expires(tmp_path, idle_node, database):
    lease_s = 2.0
    config = node_config(tmp_path / "data", routes=[CT_ROUTE], jobs={"lease_s": lease_s}, storage=database)
    node = idle_node(config)
    series = dicomgen.ct_series(3)
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "ct")).returncode == 0
    assemble(node, 1)

    claimed_at = time.time()
    dead = node.jobs.claim("dead-worker", claimed_at)  # claimed, then never renewed nor finished
    assert dead is not None
    assert node.work_once("live-worker", now=claimed_at + lease_s / 2) is False  # lease holds

    wait_until(lambda: node.work_once("live-worker"), timeout_s=lease_s + 30, interval_s=0.2)
    assert time.time() >= claimed_at + lease_s
    row = node.db.query("SELECT * FROM jobs WHERE id = ?", (dead.id,))[0]
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("done", 2, None)
    assert not node.jobs.renew(dead.id, "dead-worker", time.time())  # the dead worker lost the job
    assert node.dispatch_once() == 1
    documents = documents_in(config.storage.data_dir / "results" / series[0].StudyInstanceUID)
    assert [referenced_instances(d) for d in documents] == [{ds.SOPInstanceUID for ds in series}]


# -- 5. pipeline failures: recorded, retried, bounded --------------------------------------------


def flaky_node(
    tmp_path: Path, idle_node: Any, max_attempts: int, database: dict[str, str]
) -> tuple[Node, Path, list[Dataset]]:
    config_path, config = write_config(
        tmp_path,
        storage=database,
        routes=[{**CT_ROUTE, "name": "flaky", "pipeline": "test-flaky"}],
        jobs={"max_attempts": max_attempts},
    )
    node = idle_node(config)
    series = dicomgen.ct_series(3)
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "ct")).returncode == 0
    assemble(node, 1)
    return node, config_path, series


def attempt(node: Node) -> Row:
    """Run the job once, at the earliest moment its backoff allows (and not a moment before)."""
    not_before = node.db.query("SELECT not_before FROM jobs")[0]["not_before"]
    assert node.work_once("worker", now=not_before - 0.01) is False
    assert node.work_once("worker", now=not_before) is True
    return node.db.query("SELECT * FROM jobs")[0]


def test_failing_pipeline_is_retried_with_backoff_until_it_succeeds(tmp_path, idle_node, flaky_failures, database):
    flaky_failures["remaining"] = 2
    node, _, series = flaky_node(tmp_path, idle_node, max_attempts=3, database=database)
    previous_not_before = node.db.query("SELECT not_before FROM jobs")[0]["not_before"]
    for number in (1, 2):
        row = attempt(node)
        assert (row["state"], row["attempts"]) == ("queued", number)
        assert row["last_error"] == "RuntimeError: simulated model failure"
        assert row["not_before"] > previous_not_before  # backed off
        previous_not_before = row["not_before"]
    assert node.db.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0

    row = attempt(node)
    assert (row["state"], row["attempts"], row["last_error"]) == ("done", 3, "")
    assert flaky_failures["remaining"] == 0
    assert node.dispatch_once() == 1
    documents = documents_in(node.config.storage.data_dir / "results")
    assert [referenced_instances(d) for d in documents] == [{ds.SOPInstanceUID for ds in series}]


def test_pipeline_failing_more_than_max_attempts_ends_failed_with_the_reason(
    tmp_path, idle_node, flaky_failures, database
):
    flaky_failures["remaining"] = 10
    node, config_path, _ = flaky_node(tmp_path, idle_node, max_attempts=3, database=database)
    states = [attempt(node)["state"] for _ in range(3)]
    assert states == ["queued", "queued", "failed"]
    assert flaky_failures["remaining"] == 7  # the pipeline ran exactly max_attempts times

    row = node.db.query("SELECT * FROM jobs")[0]
    assert row["attempts"] == 3 and row["finished_at"] is not None and row["lease_owner"] is None
    assert row["last_error"] == "RuntimeError: simulated model failure"
    assert node.work_once("worker", now=time.time() + 86400) is False  # never tried again
    assert node.db.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0
    status = fracnode_status(config_path)
    assert "jobs:    failed 1" in status
    assert "test-flaky (flaky) failed" in status and "attempts 3/3" in status
    assert "simulated model failure" in status
