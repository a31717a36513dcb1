"""What an operator meets on day one: asking for an analysis again, a destination that cannot
succeed raising its hand (API, `fracnode status`, /metrics), a results folder that explains
itself, and the start-up banner. Real nodes, real storescu, real subprocesses."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

import pytest
from pydicom import dcmread

from tests.conftest import REPO, node_config, wait_until
from tests.integration.test_api import api, finished_job, route
from tests.integration.test_cli import FRACNODE, cli_env, fracnode
from tests.integration.test_flow import storescu
from tests.integration.test_metrics import scrape, value
from tests.support import dicomgen

BROKEN = "/proc/fracnode-cannot-write-here"  # not writable, even by root


def jobs_of(node, study_uid: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return api(node, "/api/v1/jobs", params={"study_uid": study_uid}).json()


def test_an_unchanged_resend_is_logged_and_analyze_without_a_peer_runs_the_spooled_copy_again(
    tmp_path, start_node, caplog
):
    node = start_node(node_config(tmp_path / "data", routes=[route("test-kos", modality="CT")]))
    series = dicomgen.ct_series(3)
    uid = series[0].StudyInstanceUID
    files = dicomgen.write(series, tmp_path / "in")
    assert storescu(node.ingest.port, files).returncode == 0
    first = finished_job(node, uid)

    with caplog.at_level(logging.INFO, logger="fracnode.node"):
        assert storescu(node.ingest.port, files).returncode == 0  # the same bytes again
        resent = wait_until(lambda: [r for r in caplog.records if r.getMessage().startswith("study resent unchanged")])
    fields = resent[0].fields  # type: ignore[attr-defined]
    assert fields["study_uid"] == uid and fields["latest_job"] == first["id"] and fields["latest_state"] == "done"
    assert f"fracnode analyze-again {uid}" in fields["to_analyse_again"]
    time.sleep(1.0)  # longer than the quiet period: an unchanged resend queues nothing
    assert len(jobs_of(node, uid)) == 1

    asked = api(node, f"/api/v1/studies/{uid}/analyze", "POST")
    assert asked.status_code == 202, asked.text
    assert asked.json()["queued"] is True and asked.json()["instances"] == 3
    assert asked.headers["Location"] == f"/api/v1/studies/{uid}"
    second = wait_until(lambda: [j for j in jobs_of(node, uid) if j["revision"] == 2 and j["state"] == "done"])
    assert second[0]["id"] != first["id"] and second[0]["calling_ae"] == first["calling_ae"]

    # an empty JSON body means the same; an unknown study is a 404 that says so
    assert api(node, f"/api/v1/studies/{uid}/analyze", "POST", json={}).status_code in (200, 202)
    missing = api(node, "/api/v1/studies/1.2.3.999/analyze", "POST")
    assert missing.status_code == 404 and "no study 1.2.3.999" in missing.json()["detail"]


def test_analyze_again_from_the_command_line_queues_a_revision_for_the_running_node(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", routes=[route("test-kos", modality="CT")]))
    series = dicomgen.ct_series(2)
    uid = series[0].StudyInstanceUID
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "in")).returncode == 0
    finished_job(node, uid)
    config = tmp_path / "node.yaml"
    config.write_text(json.dumps({"storage": {"data_dir": str(tmp_path / "data")}}))

    result = fracnode("-c", config, "analyze-again", uid)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"study {uid}: study queued for a new analysis of its 2 spooled instance(s)" in result.stdout
    assert "not running" not in result.stdout  # this node holds the data folder's lock
    (audited,) = [
        line
        for line in (tmp_path / "data" / "audit.log").read_text(encoding="utf-8").splitlines()
        if f"fracnode analyze-again {uid} (command line)" in line
    ]  # among the running node's
    assert 'csd-code="110132"' in audited  # Use of Restricted Function
    wait_until(lambda: [j for j in jobs_of(node, uid) if j["revision"] == 2 and j["state"] == "done"])

    unknown = fracnode("-c", config, "analyze-again", "1.2.3.4")
    assert unknown.returncode == 1 and "no study 1.2.3.4 in the node's index" in unknown.stdout


def test_a_destination_that_cannot_succeed_shows_in_the_api_status_and_metrics(tmp_path, start_node):
    node = start_node(
        node_config(
            tmp_path / "data",
            destinations=[
                {"name": "results-folder", "type": "folder", "path": str(tmp_path / "data" / "results")},
                {"name": "archive", "type": "folder", "path": BROKEN},
            ],
            routes=[route("test-kos", "results-folder", "archive", modality="CT")],
        )
    )
    series = dicomgen.ct_series(2)
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "in")).returncode == 0

    def troubled() -> dict | None:
        found = {d["name"]: d for d in api(node, "/api/v1/destinations").json()}
        return found if found["archive"]["in_trouble"] else None

    found = wait_until(troubled, timeout_s=60)
    archive, fine = found["archive"], found["results-folder"]
    assert archive["pending"] == 1 and archive["attempts"] >= 3 and archive["oldest_pending_age_s"] > 0
    assert BROKEN in archive["last_error"] and "1 result(s) undelivered" in archive["trouble"]
    assert not fine["in_trouble"] and fine["trouble"] == "" and fine["delivered"] == 1

    samples = scrape(node)
    assert value(samples, "fracnode_destination_in_trouble", destination="archive") == 1
    assert value(samples, "fracnode_destination_in_trouble", destination="results-folder") == 0
    assert value(samples, "fracnode_outbox_oldest_pending_seconds", destination="archive") > 0
    assert value(samples, "fracnode_outbox_pending_attempts_max", destination="archive") >= 3
    assert value(samples, "fracnode_disk_free_bytes") > 0
    assert value(samples, "fracnode_disk_size_bytes") >= value(samples, "fracnode_disk_free_bytes")
    assert value(samples, "fracnode_spool_bytes") == sum(p.stat().st_size for p in node.config.spool_dir.rglob("*.dcm"))

    config = tmp_path / "node.yaml"
    config.write_text(
        json.dumps(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "destinations": [d.model_dump(mode="json") for d in node.config.destinations],
            }
        )
    )
    status = fracnode("-c", config, "status")
    assert status.returncode == 0, status.stderr
    assert re.search(
        r"TROUBLE: destination archive: 1 result\(s\) undelivered, the oldest for \d+ s, after up to"
        rf" \d+ attempt\(s\): folder {BROKEN}",
        status.stdout,
    ), status.stdout
    assert "TROUBLE: destination results-folder" not in status.stdout

    check = fracnode("config", "check", config)
    assert check.returncode == 1
    assert f"destinations[1] ('archive').path: {BROKEN}: not writable" in check.stdout, check.stdout


def test_results_are_named_by_kind_and_series_and_a_new_revision_sets_the_old_ones_aside(tmp_path, start_node):
    results = tmp_path / "data" / "results"
    node = start_node(node_config(tmp_path / "data", routes=[route("test-kos", modality="CT")]))
    series = dicomgen.ct_series(2)
    uid = series[0].StudyInstanceUID
    assert storescu(node.ingest.port, dicomgen.write(series, tmp_path / "in")).returncode == 0
    first = finished_job(node, uid)
    [kos] = wait_until(lambda: sorted((results / uid).glob("*.dcm")))
    assert re.fullmatch(r"KO_990_[\d.]+\.dcm", kos.name) and dcmread(kos).SOPInstanceUID in kos.name
    assert "superseded" in (results / "README.txt").read_text()

    assert api(node, f"/api/v1/studies/{uid}/analyze", "POST").status_code == 202
    wait_until(
        lambda: [
            j
            for j in jobs_of(node, uid)
            if j["revision"] == 2 and j["state"] == "done" and all(d["pending"] == 0 for d in j["deliveries"])
        ]
    )
    moved = wait_until(lambda: list((results / uid / "superseded" / f"job{first['id']}-rev1").glob("*.dcm")))
    assert [p.name for p in moved] == [kos.name]
    current = sorted((results / uid).glob("*.dcm"))
    assert len(current) == 1 and current[0].name != kos.name  # the new revision's object only


@pytest.mark.slow
def test_serve_prints_a_banner_a_person_reads_and_keeps_library_info_out_of_the_log(tmp_path):
    import subprocess

    config = tmp_path / "node.yaml"
    config.write_text(
        json.dumps(
            {
                "node": {"bind": "127.0.0.1", "port": 0},
                "web": {"bind": "127.0.0.1", "port": 0},
                "storage": {"data_dir": str(tmp_path / "data"), "min_free_mb": 0},
            }
        )
    )
    log = tmp_path / "serve.log"
    command = [str(FRACNODE)] if FRACNODE.exists() else [sys.executable, "-m", "node.cli"]
    with log.open("w") as stream:
        process = subprocess.Popen(
            [*command, "-c", str(config), "serve"],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=cli_env(),
        )
    try:
        text = wait_until(lambda: log.read_text() if "fracnode: models" in log.read_text() else None, timeout_s=180)
    finally:
        process.terminate()
        process.wait(timeout=30)
    banner = "\n".join(line for line in text.splitlines() if not line.startswith("{"))
    assert "not for diagnostic use" in banner
    assert re.search(r"DICOM\s+listening as FRACNODE on 127\.0\.0\.1:\d+", banner), banner
    assert re.search(r"dashboard\s+http://localhost:\d+/", banner), banner
    assert f"sign in    with the token in {tmp_path / 'data' / 'api-token'}" in banner
    assert f"results-folder: folder {REPO / 'fracnode-data' / 'results'}" in banner
    assert "out-of-scope body parts excluded" in banner
    for bundle in ("radiograph_fracture", "cspine_vertebrae", "cspine_fracture"):
        metadata = json.loads((REPO / "models" / bundle / "configs" / "metadata.json").read_text())
        assert f"{bundle} {metadata['version']}," in banner, banner  # read from the bundle, never hard-coded
    auc = json.loads((REPO / "models" / "radiograph_fracture" / "configs" / "metadata.json").read_text())
    assert f"ROC AUC {auc['eval_metrics']['roc_auc']:.3f}" in banner
    assert re.search(r"fracnode: models radiograph-fracture ready in [\d.]+ s", banner), banner
    loggers = {json.loads(line)["logger"] for line in text.splitlines() if line.startswith("{")}
    assert all(name.split(".")[0] in ("fracnode", "node") for name in loggers), loggers
