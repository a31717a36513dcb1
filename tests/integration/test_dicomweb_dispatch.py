"""STOW-RS dispatch to a real Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb).

Results go through the same outbox as DIMSE destinations: delivered once, retried with backoff
while the peer is down, and a refusal (wrong credentials) is recorded with its reason.
"""

from __future__ import annotations

import sqlite3
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.conftest import wait_until
from tests.integration.test_durability import CT_ROUTE, fracnode_status, storescu, write_config
from tests.support import dicomgen
from tests.support.orthanc import Orthanc, free_port
from tests.support.pipelines import referenced_instances

USERS = {"fracnode": "stow-secret-1"}


def dicomweb_sections(url: str, password: str = USERS["fracnode"], **peer: Any) -> dict[str, Any]:
    return {
        "peers": [
            {
                "name": "orthanc-web",
                "type": "dicomweb",
                "url": url,
                "auth": {"type": "basic", "user": "fracnode", "password": password},
                **peer,
            }
        ],
        "destinations": [{"name": "pacs-web", "type": "dicomweb", "peer": "orthanc-web"}],
        "routes": [{**CT_ROUTE, "destinations": ["pacs-web"]}],
    }


@pytest.fixture
def orthanc_web(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = Orthanc(tmp_path / "orthanc-web", dicomweb=True, users=USERS)
    server.start()
    yield server
    server.stop()


def outbox_rows(node) -> list[sqlite3.Row]:  # type: ignore[no-untyped-def]
    return node.db.query("SELECT * FROM outbox WHERE destination = 'pacs-web'")


def test_results_reach_orthanc_by_stow_rs(tmp_path, start_node, orthanc_web, database):
    _, config = write_config(tmp_path, **dicomweb_sections(orthanc_web.dicomweb_url), storage=database)
    node = start_node(config)
    staged: dict[str, bytes] = {}  # a delivered result leaves the outbox: its bytes kept here
    deliver = node.outbox.delivered

    def keeping(item, now):  # type: ignore[no-untyped-def]
        staged[item.sop_instance_uid] = item.path.read_bytes()
        deliver(item, now)

    node.outbox.delivered = keeping
    series = dicomgen.ct_series(4)
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "ct")).returncode == 0

    (found,) = orthanc_web.wait_for_instances(1, timeout_s=60)
    stored = dcmread(BytesIO(orthanc_web.rest_bytes(f"/instances/{found}/file")))
    assert stored.Modality == "KO"
    assert stored.StudyInstanceUID == series[0].StudyInstanceUID
    assert referenced_instances(stored) == {ds.SOPInstanceUID for ds in series}
    (row,) = wait_until(lambda: [r for r in outbox_rows(node) if r["state"] == "delivered"])
    assert row["sop_instance_uid"] == stored.SOPInstanceUID
    assert (row["attempts"], row["last_error"]) == (1, "")
    # byte for byte what the node staged (Orthanc keeps the file it was sent)
    assert orthanc_web.rest_bytes(f"/instances/{found}/file") == staged[row["sop_instance_uid"]]
    assert not Path(row["path"]).exists()


@pytest.mark.slow
def test_results_wait_while_the_dicomweb_peer_is_down_and_arrive_once(tmp_path, start_node, database):
    http_port = free_port()  # nothing listens here until Orthanc starts below
    url = f"http://127.0.0.1:{http_port}/dicom-web"
    config_path, config = write_config(tmp_path, **dicomweb_sections(url), storage=database)
    node = start_node(config)
    series = dicomgen.ct_series(3)
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "ct")).returncode == 0

    def retrying() -> sqlite3.Row | None:
        rows = outbox_rows(node)
        return rows[0] if rows and rows[0]["attempts"] >= 2 else None

    item = wait_until(retrying, timeout_s=60)
    assert item["state"] == "pending"
    assert "cannot reach" in item["last_error"] and str(http_port) in item["last_error"]
    assert "pacs-web pending 1" in fracnode_status(config_path)

    orthanc = Orthanc(tmp_path / "orthanc-web", dicomweb=True, users=USERS)
    orthanc.http_port = http_port
    orthanc.start()
    try:
        found = orthanc.wait_for_instances(1, timeout_s=60)
        delivered = wait_until(lambda: [r for r in outbox_rows(node) if r["state"] == "delivered"])
        assert delivered[0]["attempts"] > item["attempts"]
        assert delivered[0]["last_error"] == ""
        assert orthanc.instance_tags(found[0])["StudyInstanceUID"] == series[0].StudyInstanceUID
        # the retries never stored it twice
        assert len(orthanc.instances()) == 1
    finally:
        orthanc.stop()


def test_wrong_credentials_are_recorded_with_the_reason_and_retried(tmp_path, start_node, orthanc_web):
    config_path, config = write_config(
        tmp_path, **dicomweb_sections(orthanc_web.dicomweb_url, password="not-the-password")
    )
    node = start_node(config)
    series = dicomgen.ct_series(2)
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "ct")).returncode == 0

    item = wait_until(lambda: next((r for r in outbox_rows(node) if r["attempts"] >= 2), None), timeout_s=60)
    assert item["state"] == "pending"  # the object is fine: once the password is, it goes out
    assert "HTTP 401" in item["last_error"]
    assert "peers[orthanc-web].auth" in item["last_error"]
    assert orthanc_web.instances() == []
    assert "pacs-web pending 1" in fracnode_status(config_path)


@pytest.mark.slow
def test_an_object_the_peer_cannot_read_is_given_up_with_the_reason(tmp_path, start_node, database):
    http_port = free_port()  # down while the result is staged, so the file can be damaged first
    _, config = write_config(tmp_path, **dicomweb_sections(f"http://127.0.0.1:{http_port}/dicom-web"), storage=database)
    node = start_node(config)
    assert storescu(node.ingest.port, dicomgen.write(dicomgen.ct_series(2), tmp_path / "ct")).returncode == 0
    item = wait_until(lambda: next(iter(outbox_rows(node)), None), timeout_s=60)
    Path(item["path"]).write_bytes(b"not a DICOM file " * 64)  # e.g. a damaged disk block

    orthanc = Orthanc(tmp_path / "orthanc-web", dicomweb=True, users=USERS)
    orthanc.http_port = http_port
    orthanc.start()
    try:
        failed = wait_until(lambda: [r for r in outbox_rows(node) if r["state"] == "failed"], timeout_s=60)
        assert "HTTP 400" in failed[0]["last_error"]
        attempts = failed[0]["attempts"]
        node.dispatch_once()  # given up: not sent again
        assert outbox_rows(node)[0]["attempts"] == attempts
        assert orthanc.instances() == []
    finally:
        orthanc.stop()
