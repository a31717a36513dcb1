"""A node on PostgreSQL: `fracnode db upgrade` owns the schema, and a database that goes away is
answered with 0xA700 (out of resources), never with success, until it is back: over DIMSE and
STOW-RS; the API answers 503 saying why, and the dashboard says so on every page."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import requests
import yaml
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from node.config import Config
from node.service import Node
from node.store import DatabaseUnavailable, SchemaOutdated, open_configured
from node.store.schema import SCHEMA_VERSION
from tests.conftest import API_TOKEN, REPO, node_config, wait_until
from tests.integration.test_dashboard import browser  # noqa: F401 - the fixture
from tests.support import dicomgen
from tests.support.postgres import Cluster

OUT_OF_RESOURCES = 0xA700


def db_upgrade(config: Config, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`fracnode db upgrade`, configured through FRACNODE_CONFIG as a deployment's unit would be."""
    path = tmp_path / "fracnode.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "db", "upgrade"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FRACNODE_CONFIG": str(path), "PYTHONPATH": str(REPO)},
    )


def test_db_upgrade_creates_and_migrates_the_schema_and_a_node_refuses_an_older_one(
    tmp_path: Path, postgres_url: str, postgres_cluster: Cluster
) -> None:
    config = node_config(tmp_path / "data", storage={"database": postgres_url})
    with pytest.raises(SchemaOutdated, match="run `fracnode db upgrade`"):
        Node(config)

    created = db_upgrade(config, tmp_path)
    assert created.returncode == 0, created.stderr
    assert f"schema version {SCHEMA_VERSION} created" in created.stdout
    again = db_upgrade(config, tmp_path)
    assert f"schema version {SCHEMA_VERSION}, already current" in again.stdout

    # a database of version 1 (before the outbox's claims): the node refuses it until the operator upgrades
    assert SCHEMA_VERSION == 2, "make this database the previous version's"
    postgres_cluster.psql(
        "ALTER TABLE outbox DROP COLUMN lease_owner, DROP COLUMN lease_until;"
        " UPDATE meta SET value = '1' WHERE key = 'schema_version'",
        "fracnode",
    )
    with pytest.raises(SchemaOutdated, match=f"version {SCHEMA_VERSION - 1}.*run `fracnode db upgrade`"):
        Node(config)
    upgraded = db_upgrade(config, tmp_path)
    assert f"from version {SCHEMA_VERSION - 1} to {SCHEMA_VERSION}" in upgraded.stdout, upgraded.stderr
    node = Node(config)
    assert node.db.query("SELECT lease_owner, lease_until FROM outbox") == []  # the migration's columns
    node.db.close()


def test_db_upgrade_of_an_unreachable_database_fails_saying_so(tmp_path: Path, postgres_url: str) -> None:
    unreachable = postgres_url.replace("127.0.0.1", "127.0.0.2")  # loopback, nothing listens there
    result = db_upgrade(node_config(tmp_path / "data", storage={"database": unreachable}), tmp_path)
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr or "no connection" in result.stderr, result.stderr


def c_store_statuses(port: int, datasets: list[Dataset]) -> list[int | None]:
    ae = AE(ae_title="MODALITY")
    ae.dimse_timeout = 60  # longer than the pool's wait: the node answers, late, with a status
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACNODE")
    assert assoc.is_established
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else None)
        return statuses
    finally:
        assoc.release()


@pytest.mark.slow
def test_a_stopped_database_gets_out_of_resources_never_success_and_the_node_recovers(
    tmp_path: Path,
    postgres_url: str,
    postgres_cluster: Cluster,
    start_node,
    browser,  # noqa: F811 - the fixture
    caplog: pytest.LogCaptureFixture,
) -> None:
    from playwright.sync_api import expect

    caplog.set_level(logging.INFO, logger="fracnode")
    users = [{"name": "operator", "password": "dashboard-password"}]
    config = node_config(
        tmp_path / "data", storage={"database": postgres_url}, web={"auth": {"tokens": [API_TOKEN], "users": users}}
    )
    assert db_upgrade(config, tmp_path).returncode == 0
    node = start_node(config)
    before, during, after = (dicomgen.ct_series(2, seed=seed) for seed in (1, 2, 3))
    assert c_store_statuses(node.ingest.port, before) == [0, 0]

    web = f"http://127.0.0.1:{node.web.port}"
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    page = browser.new_context(http_credentials={"username": "operator", "password": "dashboard-password"}).new_page()
    assert page.goto(web + "/#/jobs").status == 200
    outage = page.locator("#outage-banner")
    expect(outage).to_be_hidden(timeout=20_000)

    postgres_cluster.stop()
    try:
        assert c_store_statuses(node.ingest.port, during) == [OUT_OF_RESOURCES] * 2
        with pytest.raises(DatabaseUnavailable):
            node.jobs.claim("w", 0.0)  # a worker's claim fails, it does not take the job for none
        # STOW-RS: none stored (409), each instance failed with 0xA700 (PS3.18 10.5.3)
        with pytest.raises(requests.HTTPError) as refused:
            DICOMwebClient(url=f"{web}/dicomweb", headers=auth).store_instances(dicomgen.ct_series(2, seed=4))
        assert refused.value.response.status_code == 409
        failed = refused.value.response.json()["00081198"]["Value"]
        assert [item["00081197"]["Value"] for item in failed] == [[OUT_OF_RESOURCES]] * 2
        # the API says what is wrong (503, not a 500 "internal error"), and when to ask again
        answer = httpx.get(f"{web}/api/v1/jobs", headers=auth, timeout=30)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert "database cannot be reached" in answer.json()["detail"]
        # and every page of the dashboard says so
        page.reload()
        # a request waits up to 5 s for a connection before it is answered 503
        expect(outage).to_contain_text("Database unavailable: the node's database cannot be reached", timeout=20_000)
        # the jobs list that could not load says why, not "Loading…" for as long as the outage lasts
        expect(page.locator("p.loading")).to_have_text("Not shown while the database is unavailable.")
        page.screenshot(path=str(tmp_path / "dashboard-database-down.png"))
    finally:
        postgres_cluster.start()

    # the pool reconnects: the same running node stores again, and nothing acknowledged went missing
    wait_until(lambda: c_store_statuses(node.ingest.port, after) == [0, 0], timeout_s=60, interval_s=1)
    db = open_configured(config)
    try:
        held = {r["sop_instance_uid"] for r in db.query("SELECT sop_instance_uid FROM instances")}
    finally:
        db.close()
    assert {ds.SOPInstanceUID for ds in before + after} <= held
    page.reload()
    expect(page.locator("#jobs")).to_be_visible()
    expect(outage).to_be_hidden(timeout=20_000)

    # each stage said once that the database went away and once that it came back, not at every tick
    def stages(message: str) -> list[str]:
        return [r.fields["stage"] for r in caplog.records if r.getMessage() == message]  # type: ignore[attr-defined]

    down = stages("database unavailable; retrying")
    assert down and len(down) == len(set(down)), down
    wait_until(lambda: set(stages("database available again")) == set(down), timeout_s=30)
