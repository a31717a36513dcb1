"""Several fracnode processes, one state (issue 23): two listeners on two ports, two workers, a
dispatcher and a web, each a separate `fracnode serve --roles …` OS process on one PostgreSQL
database and one data folder, with a real Orthanc as the PACS. While 200 instances arrive over
both listeners, in studies split across them, and one more study by STOW-RS through the web, the
test SIGKILLs a worker in the middle of a job, a listener in the middle of a transfer and the
dispatcher in the middle of a delivery (each replaced by a new process, as systemd would). Then:

- every instance a listener acknowledged is indexed and analysed (referenced by its study's result);
- each study revision has exactly one job, and the latest revision's job is done;
- each result reaches Orthanc once: one result per study revision whose job was done, each
  outbox row delivered once, no result of a killed worker's attempt anywhere;
- the web's API lists every job, whichever process ran it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from node.store import Database, open_database
from tests.conftest import API_TOKEN, REPO, wait_until
from tests.support import dicomgen
from tests.support.orthanc import Orthanc, free_port
from tests.support.pipelines import referenced_instances
from tests.support.served import FRACNODE

STUDIES, PER_STUDY = 20, 10  # 200 instances
LEASE_S = 3.0  # jobs.lease_s and dispatch.lease_s: a dead process's work is taken over this soon
DELAY_S = "1.5"  # test-slow-kos: long enough to kill a worker in the middle of a job
KOS = "1.2.840.10008.5.1.4.1.1.88.59"


class Process:
    """One `fracnode serve --roles ROLES` process of the group."""

    def __init__(self, name: str, config: Path, roles: str, folder: Path, port: int = 0) -> None:
        self.name, self.roles, self.port = name, roles, port
        self.log = folder / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRACNODE_")}
        env.update(PYTHONPATH=str(REPO), TEST_PIPELINE_DELAY_S=DELAY_S)
        if port:
            env["FRACNODE_PORT"] = str(port)
        with self.log.open("ab") as stream:
            self.process = subprocess.Popen(
                [str(FRACNODE), "-c", str(config), "serve", "--roles", roles],
                stdout=stream,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        self.instance = wait_until(self._started, timeout_s=60)

    def _started(self) -> str:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.text()[-3000:]}")
        for line in self.text().splitlines():
            if '"node started"' in line:
                return str(json.loads(line)["instance"])
        return ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def group(tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def _config(tmp_path: Path, postgres_url: str, orthanc: Orthanc, http_port: int) -> Path:
    config: dict[str, Any] = {
        "node": {"ae_title": "FRACNODE", "bind": "127.0.0.1", "port": 11112},
        "storage": {"data_dir": str(tmp_path / "shared"), "min_free_mb": 0, "database": postgres_url},
        "assembly": {"quiet_period_s": 3.0},
        "jobs": {"workers": 1, "lease_s": LEASE_S, "retry": {"initial_s": 0.2, "factor": 2.0, "max_s": 1.0}},
        "dispatch": {"lease_s": LEASE_S, "batch_size": 1, "retry": {"initial_s": 0.2, "factor": 2.0, "max_s": 1.0}},
        "logging": {"level": "INFO", "format": "json"},
        "web": {"bind": "127.0.0.1", "port": http_port, "auth": {"tokens": [API_TOKEN]}},
        "peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}],
        "destinations": [{"name": "pacs", "type": "dimse", "peer": "pacs"}],
        "routes": [
            {"name": "ct", "match": {"modality": ["CT"]}, "pipeline": "test-slow-kos", "destinations": ["pacs"]}
        ],
        "pipeline_modules": ["tests.support.pipelines"],
    }
    path = tmp_path / "fracnode.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Sender:
    """A modality sending over one association to one listener, instance by instance, that
    remembers what was acknowledged (status 0x0000) and what was not."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acknowledged: list[Dataset] = []
        self.unacknowledged: list[Dataset] = []

    def send(self, datasets: list[Dataset], on_acknowledged=None) -> None:  # type: ignore[no-untyped-def]
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="FRACNODE")
        for k, ds in enumerate(datasets):
            status = assoc.send_c_store(ds) if assoc.is_established else None
            if status is not None and status.get("Status") == 0x0000:
                self.acknowledged.append(ds)
                if on_acknowledged is not None:
                    on_acknowledged(len(self.acknowledged))
            else:
                self.unacknowledged += datasets[k:]
                break
        if assoc.is_established:
            assoc.release()


def _owner_process(processes: list[Process], owner: str) -> Process:
    return next(p for p in processes if owner.startswith(p.instance))


def test_two_listeners_two_workers_and_a_dispatcher_lose_nothing_and_send_each_result_once_across_sigkills(
    tmp_path: Path, postgres_url: str, group: list[Process]
) -> None:
    db = open_database(postgres_url, upgrade=True)  # `fracnode db upgrade`; the test reads the state here
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"fracnode": ["FRACNODE", "127.0.0.1", 11112]})
    orthanc.start()
    try:
        _run(tmp_path, postgres_url, db, orthanc, group)
    finally:
        orthanc.stop()
        db.close()


def _run(tmp_path: Path, url: str, db: Database, orthanc: Orthanc, group: list[Process]) -> None:  # noqa: C901
    http_port = free_port()
    config = _config(tmp_path, url, orthanc, http_port)

    def start(name: str, roles: str, port: int = 0) -> Process:
        process = Process(name, config, roles, tmp_path, port)
        group.append(process)
        return process

    listeners = [start("listener-1", "listener", free_port()), start("listener-2", "listener", free_port())]
    workers = [start("worker-1", "worker"), start("worker-2", "worker")]
    start("web", "web")  # the dashboard, the API and STOW-RS, on the state the others write
    web = f"http://127.0.0.1:{http_port}"
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    stowed = dicomgen.ct_series(5, description="CT Neck by STOW-RS", seed=99)
    stow_reply: list[Dataset] = []
    # the dispatcher starts once results wait in the outbox, so that its death lands mid-delivery

    studies = [
        dicomgen.ct_series(PER_STUDY, description=f"CT Neck {n}", seed=n) for n in range(STUDIES)
    ]  # each study's first half goes to listener 1, its second half to listener 2, at once
    halves = [[s[: PER_STUDY // 2] for s in studies], [s[PER_STUDY // 2 :] for s in studies]]
    senders = [Sender(listeners[0].port), Sender(listeners[1].port)]
    killed = threading.Event()

    def kill_listener_2(acknowledged: int) -> None:  # a listener dies in the middle of a transfer
        if acknowledged == 37 and not killed.is_set():
            listeners[1].kill()
            killed.set()

    threads = [
        threading.Thread(target=senders[0].send, args=([ds for half in halves[0] for ds in half],)),
        threading.Thread(target=senders[1].send, args=([ds for half in halves[1] for ds in half], kill_listener_2)),
    ]
    threads.append(
        threading.Thread(
            target=lambda: stow_reply.append(
                DICOMwebClient(url=f"{web}/dicomweb", headers=auth).store_instances(stowed)
            )
        )
    )
    for thread in threads:
        thread.start()

    # a worker dies in the middle of a job: its job is taken over when the lease lapses
    running = wait_until(lambda: db.query("SELECT id, lease_owner FROM jobs WHERE state = 'running'"), 120)
    victim_job, owner = running[0]["id"], running[0]["lease_owner"]
    victim = _owner_process(workers, owner)
    victim.kill()
    for thread in threads:
        thread.join(timeout=180)
    assert killed.is_set(), "listener 2 was not killed mid-transfer"
    assert senders[1].unacknowledged, "the kill left nothing unacknowledged"
    assert len(senders[0].acknowledged) == STUDIES * PER_STUDY // 2
    assert "FailedSOPSequence" not in stow_reply[0]

    # the sender tries again, reaching the other listener (a load balancer's other address)
    retry = Sender(listeners[0].port)
    retry.send(senders[1].unacknowledged)
    assert not retry.unacknowledged
    start("worker-3", "worker")  # systemd restarts the dead worker; its lease still has to lapse
    listeners.append(start("listener-3", "listener", listeners[1].port))  # the listener's replacement

    # results wait in the outbox; a dispatcher claims them and dies in the middle of a delivery
    wait_until(lambda: db.query("SELECT 1 FROM outbox WHERE state = 'pending' LIMIT 1"), 120)
    dispatcher = start("dispatcher-1", "dispatcher")
    claimed = wait_until(
        lambda: db.query("SELECT id FROM outbox WHERE state = 'pending' AND lease_owner IS NOT NULL"), 60, 0.01
    )
    dispatcher.kill()
    start("dispatcher-2", "dispatcher")

    acknowledged = {
        str(ds.SOPInstanceUID) for ds in senders[0].acknowledged + senders[1].acknowledged + retry.acknowledged + stowed
    }
    assert len(acknowledged) == STUDIES * PER_STUDY + len(stowed)

    def settled() -> bool:
        open_jobs = db.query("SELECT 1 FROM jobs WHERE state IN ('queued', 'running') LIMIT 1")
        pending = db.query("SELECT 1 FROM outbox WHERE state = 'pending' LIMIT 1")
        incomplete = db.query("SELECT 1 FROM studies WHERE pending = 1 LIMIT 1")
        return not open_jobs and not pending and not incomplete

    wait_until(settled, timeout_s=240, interval_s=0.5)

    # every acknowledged instance is indexed
    indexed = {row["sop_instance_uid"] for row in db.query("SELECT sop_instance_uid FROM instances")}
    assert acknowledged <= indexed

    # each study revision: exactly one job; the latest revision's is done
    jobs = db.query("SELECT id, study_uid, revision, state, attempts FROM jobs ORDER BY id")
    per_revision: dict[tuple[str, int], list[Any]] = {}
    for job in jobs:
        per_revision.setdefault((job["study_uid"], job["revision"]), []).append(job)
    assert all(len(found) == 1 for found in per_revision.values()), per_revision
    latest = {uid: max(rev for (u, rev) in per_revision if u == uid) for uid, _ in per_revision}
    assert len(latest) == STUDIES + 1  # and the study sent by STOW-RS
    assert all(per_revision[(uid, rev)][0]["state"] == "done" for uid, rev in latest.items())
    assert {job["state"] for job in jobs} <= {"done", "superseded"}
    taken_over = next(job for job in jobs if job["id"] == victim_job)
    if taken_over["state"] == "done":  # claimed again by another worker once the lease lapsed
        assert taken_over["attempts"] >= 2

    # each result reaches Orthanc once: one KOS per job that was done, each outbox row delivered once
    done = [job for job in jobs if job["state"] == "done"]
    outbox = db.query("SELECT job_id, sop_instance_uid, state FROM outbox ORDER BY id")
    assert sorted(row["job_id"] for row in outbox) == sorted(job["id"] for job in done)  # one result each
    assert {row["state"] for row in outbox} == {"delivered"}
    assert claimed[0]["id"] in {row["id"] for row in db.query("SELECT id FROM outbox")}
    results = wait_until(lambda: _kos_in(orthanc, len(done)), timeout_s=60)
    assert {str(ds.SOPInstanceUID) for ds in results} == {row["sop_instance_uid"] for row in outbox}

    # analysed: every acknowledged instance is referenced by its study's latest result
    latest_jobs = {per_revision[(uid, rev)][0]["id"] for uid, rev in latest.items()}
    by_job = {row["sop_instance_uid"]: row["job_id"] for row in outbox}
    referenced = set().union(
        *(referenced_instances(ds) for ds in results if by_job[str(ds.SOPInstanceUID)] in latest_jobs)
    )
    assert acknowledged <= referenced

    # the web serves the shared state: every job, whichever process ran it
    listed = httpx.get(f"{web}/api/v1/jobs", params={"limit": 500}, headers=auth, timeout=30).json()
    assert sorted(job["id"] for job in listed) == [job["id"] for job in jobs]

    # no file of a killed attempt is left in the outbox folder beyond the delivered results' own
    leftovers = [p for p in (tmp_path / "shared" / "outbox").rglob("*.dcm")]
    assert leftovers == [], leftovers
    assert "job lease lost" not in victim.text()  # it died; it did not come back to record anything
    for process in group:
        if process.process.poll() is None:
            assert '"level": "ERROR"' not in process.text(), f"{process.name}:\n{process.text()[-3000:]}"


def _kos_in(orthanc: Orthanc, count: int) -> list[Dataset] | None:
    found = []
    for orthanc_id in orthanc.instances():
        tags = orthanc.instance_tags(orthanc_id)
        if tags.get("SOPClassUID") == KOS:
            found.append(dcmread(_file(orthanc, orthanc_id)))
    return found if len(found) >= count else None


def _file(orthanc: Orthanc, orthanc_id: str) -> io.BytesIO:
    return io.BytesIO(orthanc.rest_bytes(f"/instances/{orthanc_id}/file"))
