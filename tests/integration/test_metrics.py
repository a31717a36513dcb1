"""Prometheus metrics at /metrics: scraped from a running node after real storescu sends and parsed
with prometheus_client's own parser."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_TOKEN, node_config, wait_until
from tests.integration.test_api import api, finished_job, route
from tests.integration.test_flow import storescu
from tests.integration.test_radiograph_flow import eager_models  # noqa: F401 (fixture)
from tests.support import dicomgen
from tests.support.orthanc import free_port
from tests.support.pipelines import FLAKY_FAILURES

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node) -> Samples:  # type: ignore[no-untyped-def]
    response = httpx.get(f"http://127.0.0.1:{node.web.port}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_by_exactly_what_was_sent(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", routes=[route("test-kos", modality="CT")]))
    before = scrape(node)
    assert value(before, "fracnode_instances_received_total", transport="dimse") == 0
    assert value(before, "fracnode_jobs", state="done") == 0
    ct = dicomgen.ct_series(5, description="CT Wrist")
    cr = dicomgen.cr_image()  # no route for CR: complete, but no job
    assert storescu(node.ingest.port, dicomgen.write([*ct, cr], tmp_path / "in")).returncode == 0
    assert storescu(node.ingest.port, dicomgen.write(ct[:2], tmp_path / "again")).returncode == 0  # identical resend
    finished_job(node, ct[0].StudyInstanceUID)
    wait_until(lambda: value(scrape(node), "fracnode_studies_completed_total") == 2)

    after = scrape(node)
    assert value(after, "fracnode_instances_received_total", transport="dimse") == 6
    assert value(after, "fracnode_instances_received_total", transport="stow") == 0
    assert value(after, "fracnode_studies_completed_total") == 2
    assert value(after, "fracnode_jobs", state="done") == 1
    assert value(after, "fracnode_jobs", state="failed") == 0
    assert value(after, "fracnode_jobs_finished_total", pipeline="test-kos", outcome="done") == 1
    assert value(after, "fracnode_results_delivered_total", destination="results-folder") == 1
    assert value(after, "fracnode_dispatch_failures_total", destination="results-folder") == 0
    assert value(after, "fracnode_outbox_pending", destination="results-folder") == 0
    assert value(after, "fracnode_studies_pending") == 0
    for stage, count in (("assembly", 2), ("queue", 1), ("pipeline", 1), ("dispatch", 1)):
        assert value(after, "fracnode_stage_seconds_count", stage=stage) == count, stage
    # the assembly stage waited at least the quiet period (0.5 s) for each study
    assert value(after, "fracnode_stage_seconds_sum", stage="assembly") >= 1.0
    assert value(after, "fracnode_stage_seconds_bucket", stage="assembly", le="0.25") == 0


def test_failed_jobs_and_failed_deliveries_are_counted(tmp_path, start_node):
    FLAKY_FAILURES["remaining"] = 1
    config = node_config(
        tmp_path / "data",
        peers=[{"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": free_port()}],
        destinations=[{"name": "pacs", "type": "dimse", "peer": "gone"}],
        routes=[route("test-flaky", "pacs", modality="CR"), route("test-kos", "pacs", modality="CT")],
        jobs={"max_attempts": 1},
    )
    node = start_node(config)
    cr, ct = dicomgen.cr_image(), dicomgen.ct_series(2)
    assert storescu(node.ingest.port, dicomgen.write([cr, *ct], tmp_path / "in")).returncode == 0
    assert finished_job(node, cr.StudyInstanceUID)["state"] == "failed"

    samples = wait_until(
        lambda: (s := scrape(node)) and value(s, "fracnode_dispatch_failures_total", destination="pacs") >= 2 and s
    )
    assert value(samples, "fracnode_jobs", state="failed") == 1
    assert value(samples, "fracnode_jobs", state="done") == 1  # the CT job: done, its result waits
    assert value(samples, "fracnode_jobs_finished_total", pipeline="test-flaky", outcome="failed") == 1
    assert value(samples, "fracnode_outbox_pending", destination="pacs") == 1
    assert value(samples, "fracnode_results_delivered_total", destination="pacs") == 0

    api(node, f"/api/v1/jobs/{finished_job(node, cr.StudyInstanceUID)['id']}/retry", "POST")
    wait_until(lambda: value(scrape(node), "fracnode_jobs", state="failed") == 0)
    assert value(scrape(node), "fracnode_jobs_finished_total", pipeline="test-flaky", outcome="done") == 1


def test_each_node_keeps_its_own_numbers(tmp_path, start_node):
    first = start_node(node_config(tmp_path / "one"))
    second = start_node(node_config(tmp_path / "two"))
    assert storescu(first.ingest.port, dicomgen.write([dicomgen.cr_image()], tmp_path / "in")).returncode == 0
    wait_until(lambda: value(scrape(first), "fracnode_instances_received_total", transport="dimse") == 1)
    assert value(scrape(second), "fracnode_instances_received_total", transport="dimse") == 0


def test_metrics_need_credentials(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    refused = httpx.get(f"http://127.0.0.1:{node.web.port}/metrics")
    assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["detail"]


@pytest.mark.slow
def test_model_inference_is_timed_per_model(tmp_path, start_node, eager_models):  # noqa: F811
    config = node_config(
        tmp_path / "data",
        routes=[route("radiograph-fracture", modality="CR")],
        inference={"models_dir": str(eager_models), "device": "cpu"},
    )
    node = start_node(config)
    cr = dicomgen.cr_image(size=512)
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0
    job = finished_job(node, cr.StudyInstanceUID)
    assert job["state"] == "done", job["last_error"]

    samples = scrape(node)
    assert value(samples, "fracnode_inference_images_total", model="radiograph_fracture") == 1
    assert value(samples, "fracnode_inference_seconds_count", model="radiograph_fracture") == 1
    assert 0 < value(samples, "fracnode_inference_seconds_sum", model="radiograph_fracture") < 30
    # the real model's findings reach the API, and their preview renders
    image = job["findings"]["images"][0]
    assert image["sop_instance_uid"] == cr.SOPInstanceUID and image["regions"]
    assert job["findings"]["algorithm"]["name"] and len(job["findings"]["algorithm"]["weights_sha256"]) == 64
    preview = api(node, job["previews"][0])
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")


def test_instances_stored_by_stow_rs_are_counted_as_stow(tmp_path, start_node):
    from tests.integration.test_stow import multipart, part10, stow

    node = start_node(node_config(tmp_path))
    cr = dicomgen.cr_image()
    assert stow(node, multipart(part10(cr))).status_code == 200
    assert stow(node, multipart(part10(cr))).status_code == 200  # identical resend: not counted again
    samples = scrape(node)
    assert value(samples, "fracnode_instances_received_total", transport="stow") == 1
    assert value(samples, "fracnode_instances_received_total", transport="dimse") == 0
