"""The operator's REST API (/api/v1) on a running node: studies sent with storescu, real pipelines
from tests/support/pipelines/, a real Orthanc for the connectivity check."""

from __future__ import annotations

from io import BytesIO

import httpx
import numpy as np
import pytest
from PIL import Image

from node.config import Config
from tests.conftest import API_TOKEN, node_config, wait_until
from tests.integration.test_flow import storescu
from tests.support import dicomgen
from tests.support.orthanc import free_port
from tests.support.pipelines import FLAKY_FAILURES, REGION_BOX

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
RED = (255, 48, 48)  # node.results.colours.COLOURS["fracture"]


def api(node, path: str, method: str = "GET", **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.request(method, f"http://127.0.0.1:{node.web.port}{path}", headers=AUTH, timeout=30, **kwargs)


def route(pipeline: str, *destinations: str, modality: str = "CR") -> dict:
    return {"name": f"{pipeline}-route", "match": {"modality": [modality]}, "pipeline": pipeline,
            "destinations": list(destinations or ["results-folder"])}


def finished_job(node, study_uid: str) -> dict:  # type: ignore[no-untyped-def]
    """The study's job once it ended and its deliveries did too."""
    def ended() -> dict | None:
        jobs = api(node, "/api/v1/jobs", params={"study_uid": study_uid}).json()
        done = [j for j in jobs if j["state"] in ("done", "failed", "not_applicable")
                and all(d["pending"] == 0 for d in j["deliveries"])]
        return done[0] if done else None
    return wait_until(ended, timeout_s=60)


def test_a_sent_study_shows_its_job_routes_timings_deliveries_and_no_patient_data(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", routes=[route("test-regions")]))
    cr = dicomgen.cr_image(size=256)
    ct = dicomgen.ct_series(3, description="CT Head")  # no route takes CT: routed to nothing
    files = dicomgen.write([cr, *ct], tmp_path / "in")
    assert storescu(node.ingest.port, files).returncode == 0

    job = finished_job(node, cr.StudyInstanceUID)
    assert job["state"] == "done" and job["route"] == "test-regions-route" and job["revision"] == 1
    assert job["attempts"] == 1 and job["retryable"] is False and job["last_error"] == ""
    assert job["summary"] == "1 image(s): fracture"
    timings = job["timings"]
    for stage in ("assembly_s", "queue_s", "run_s", "pipeline_s", "stage_s", "dispatch_s"):
        assert timings[stage] is not None and timings[stage] >= 0, stage
    assert timings["assembly_s"] >= 0.5  # the test configuration's quiet period
    assert job["deliveries"] == [{
        "destination": "results-folder", "objects": 1, "delivered": 1, "pending": 0, "failed": 0,
        "attempts": 1, "last_error": "", "last_delivered_at": job["deliveries"][0]["last_delivered_at"],
    }]
    image = job["findings"]["images"][0]
    assert image["sop_instance_uid"] == cr.SOPInstanceUID and image["category"] == "fracture"
    assert len(image["regions"][0]["polygon"]) == 4
    assert api(node, f"/api/v1/jobs/{job['id']}").json() == job

    studies = {s["study_uid"]: s for s in api(node, "/api/v1/studies").json()}
    wait_until(lambda: not api(node, f"/api/v1/studies/{ct[0].StudyInstanceUID}").json()["receiving"])
    studies = {s["study_uid"]: s for s in api(node, "/api/v1/studies").json()}
    assert studies[cr.StudyInstanceUID]["routes"] == ["test-regions-route"]
    assert studies[cr.StudyInstanceUID]["jobs"] == {"done": 1}
    assert studies[ct[0].StudyInstanceUID]["routes"] == []
    assert studies[ct[0].StudyInstanceUID]["route_status"] == "no route matched"
    assert (studies[ct[0].StudyInstanceUID]["instances"], studies[ct[0].StudyInstanceUID]["series"]) == (3, 1)

    detail = api(node, f"/api/v1/studies/{cr.StudyInstanceUID}").json()
    assert [s["series_uid"] for s in detail["series_list"]] == [cr.SeriesInstanceUID]
    assert detail["series_list"][0]["modality"] == "CR" and detail["series_list"][0]["instances"] == 1
    assert [j["id"] for j in detail["job_list"]] == [job["id"]]
    assert detail["job_list"][0]["previews"] == job["previews"] and len(job["previews"]) == 1

    # no patient data anywhere in what the API answers
    everything = "".join(api(node, path).text for path in (
        "/api/v1/jobs", f"/api/v1/jobs/{job['id']}", "/api/v1/studies",
        f"/api/v1/studies/{cr.StudyInstanceUID}", f"/api/v1/studies/{ct[0].StudyInstanceUID}"))
    for sentinel in (dicomgen.PATIENT_NAME, "Sentinel", dicomgen.PATIENT_ID, dicomgen.PATIENT_BIRTH_DATE,
                     dicomgen.ACCESSION_NUMBER):
        assert sentinel not in everything


def test_the_preview_is_the_source_with_the_jobs_region_drawn(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", routes=[route("test-regions")]))
    cr = dicomgen.cr_image(size=600)
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0
    job = finished_job(node, cr.StudyInstanceUID)

    response = api(node, job["previews"][0])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(BytesIO(response.content)).convert("RGB")).astype(int)
    assert picture.shape == (600, 600, 3)
    c0, r0, c1, r1 = (round(f * 600) for f in REGION_BOX)
    # the outline runs along the box's edges, in the fracture colour
    for row, column in ((r0, (c0 + c1) // 2), (r1, (c0 + c1) // 2), ((r0 + r1) // 2, c0), ((r0 + r1) // 2, c1)):
        assert np.abs(picture[row, column] - RED).max() <= 10, (row, column, picture[row, column])
    # inside and outside the region the radiograph stays grey (R = G = B)
    for row, column in ((300, 300), (r0 - 20, c0 - 20), (r1 + 20, c1 + 20)):
        red, green, blue = picture[row, column]
        assert red == green == blue, (row, column)
    # the latest job's preview by default, and the same picture again
    default = api(node, f"/api/v1/studies/{cr.StudyInstanceUID}/preview.png")
    assert default.content == response.content

    wrong_job = api(node, f"/api/v1/studies/{cr.StudyInstanceUID}/preview.png", params={"job": 999})
    assert wrong_job.status_code == 404 and "no job 999" in wrong_job.json()["detail"]
    wrong_image = api(node, f"/api/v1/studies/{cr.StudyInstanceUID}/preview.png", params={"instance": "1.2.3"})
    assert wrong_image.status_code == 404 and "1.2.3" in wrong_image.json()["detail"]


def test_a_failed_job_can_be_retried_once_and_other_states_get_409(tmp_path, start_node):
    FLAKY_FAILURES["remaining"] = 1
    config = node_config(tmp_path / "data", routes=[route("test-flaky")], jobs={"max_attempts": 1})
    node = start_node(config)
    cr = dicomgen.cr_image()
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0
    failed = finished_job(node, cr.StudyInstanceUID)
    assert failed["state"] == "failed" and failed["retryable"] is True
    assert failed["last_error"] == "RuntimeError: simulated model failure"
    assert api(node, "/api/v1/jobs", params={"state": "failed"}).json()[0]["id"] == failed["id"]

    retried = api(node, f"/api/v1/jobs/{failed['id']}/retry", "POST")
    assert retried.status_code == 200, retried.text
    assert retried.json()["job"]["state"] in ("queued", "running", "done")
    done = wait_until(lambda: (j := api(node, f"/api/v1/jobs/{failed['id']}").json())["state"] == "done" and j)
    assert done["attempts"] == 1 and done["finished_at"] >= failed["finished_at"]

    again = api(node, f"/api/v1/jobs/{failed['id']}/retry", "POST")
    assert again.status_code == 409
    assert again.json()["detail"] == f"job {failed['id']} is done; only failed jobs can be retried"
    missing = api(node, "/api/v1/jobs/4242/retry", "POST")
    assert missing.status_code == 404 and missing.json()["detail"] == "no job 4242"


def test_job_list_filters_by_state_and_rejects_unknown_states(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", routes=[route("test-decline")]))
    cr = dicomgen.cr_image()
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0
    job = finished_job(node, cr.StudyInstanceUID)
    assert job["state"] == "not_applicable" and job["summary"] == "the test pipeline declines every study"
    assert [j["id"] for j in api(node, "/api/v1/jobs", params={"state": ["not_applicable", "done"]}).json()] == [job["id"]]
    assert api(node, "/api/v1/jobs", params={"state": "failed"}).json() == []
    unknown = api(node, "/api/v1/jobs", params={"state": "exploded"})
    assert unknown.status_code == 422 and "exploded" in unknown.json()["detail"]
    assert api(node, "/api/v1/studies/1.2.3.4").status_code == 404
    assert api(node, "/api/v1/jobs/777").json()["detail"] == "no job 777"


def test_echo_reaches_a_running_orthanc_and_explains_an_unreachable_peer(tmp_path, start_node, orthanc):
    closed = free_port()
    config = node_config(tmp_path / "data", peers=[
        {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
        {"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": closed},
    ])
    node = start_node(config)
    peers = api(node, "/api/v1/peers").json()
    assert [(p["name"], p["type"], p["port"]) for p in peers] == [
        ("pacs", "dimse", orthanc.dicom_port), ("gone", "dimse", closed)]

    reached = api(node, "/api/v1/peers/pacs/echo", "POST").json()
    assert reached["ok"] is True and reached["status"] == 0 and reached["check"] == "C-ECHO"
    assert 0 < reached["latency_ms"] < 5000
    unreachable = api(node, "/api/v1/peers/gone/echo", "POST", params={"timeout_s": 3}).json()
    assert unreachable["ok"] is False and unreachable["latency_ms"] is None
    assert unreachable["message"] == f"cannot connect to GONE@127.0.0.1:{closed} (is it running and reachable?)"
    unknown = api(node, "/api/v1/peers/nope/echo", "POST")
    assert unknown.status_code == 404 and "known: pacs, gone" in unknown.json()["detail"]


def folder_and_gone_pacs(tmp_path, *routes: dict) -> Config:  # type: ignore[no-untyped-def]
    """Results to a folder and to a PACS that is not there (its deliveries keep waiting)."""
    return node_config(
        tmp_path / "data",
        peers=[{"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": free_port()}],
        destinations=[{"name": "results-folder", "type": "folder", "path": str(tmp_path / "results")},
                      {"name": "pacs", "type": "dimse", "peer": "gone"}],
        routes=list(routes),
    )


def test_destinations_count_deliveries_and_keep_the_last_error(tmp_path, start_node):
    node = start_node(folder_and_gone_pacs(tmp_path, route("test-kos", "results-folder", "pacs")))
    cr = dicomgen.cr_image()
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0

    def both_tried() -> dict | None:
        found = {d["name"]: d for d in api(node, "/api/v1/destinations").json()}
        return found if found["results-folder"]["delivered"] == 1 and found["pacs"]["last_error"] else None

    found = wait_until(both_tried)
    assert found["results-folder"]["pending"] == 0 and found["results-folder"]["target"] == str(tmp_path / "results")
    assert found["pacs"]["pending"] == 1 and found["pacs"]["delivered"] == 0 and found["pacs"]["target"] == "gone"
    assert "cannot connect to GONE@127.0.0.1" in found["pacs"]["last_error"]
    assert found["pacs"]["next_attempt_at"] is not None


def test_a_result_downloads_from_the_outbox_then_from_the_folder_it_was_delivered_to(tmp_path, start_node):
    # a result delivered to every destination leaves the outbox (docs/security.md): the download
    # then reads the folder destination's copy, and says so when the node holds none
    node = start_node(folder_and_gone_pacs(
        tmp_path, {**route("test-kos", "results-folder", "pacs"), "match": {"body_part": "HAND"}},
        {**route("test-kos", "results-folder"), "name": "knees", "match": {"body_part": "KNEE"}}))
    cr, dx = dicomgen.cr_image(), dicomgen.cr_image(body_part="KNEE")
    assert storescu(node.ingest.port, dicomgen.write([cr, dx], tmp_path / "in")).returncode == 0
    waiting = wait_until(lambda: [j for j in api(node, "/api/v1/jobs", params={"study_uid": cr.StudyInstanceUID}).json()
                                  if any(d["delivered"] for d in j["deliveries"])])[0]
    (held,) = api(node, f"/api/v1/jobs/{waiting['id']}/results").json()  # the pacs still waits: the outbox has it
    outbox_copy = next(node.config.outbox_dir.rglob(f"{held['sop_instance_uid']}.dcm"))
    assert held["size"] == outbox_copy.stat().st_size
    assert api(node, held["url"]).content == outbox_copy.read_bytes()

    delivered = finished_job(node, dx.StudyInstanceUID)
    (result,) = api(node, f"/api/v1/jobs/{delivered['id']}/results").json()
    assert not list(node.config.outbox_dir.rglob(f"{result['sop_instance_uid']}.dcm"))
    (folder_copy,) = (tmp_path / "results" / dx.StudyInstanceUID).glob(f"*_{result['sop_instance_uid']}.dcm")
    assert result["size"] == folder_copy.stat().st_size
    download = api(node, result["url"])
    assert download.status_code == 200 and download.content == folder_copy.read_bytes()
    assert folder_copy.name in download.headers["content-disposition"]

    folder_copy.unlink()  # a person moved it away: the node holds no copy any more
    (result,) = api(node, f"/api/v1/jobs/{delivered['id']}/results").json()
    assert result["size"] is None
    missing = api(node, result["url"])
    assert missing.status_code == 404 and "holds no copy" in missing.json()["detail"]
    assert api(node, "/api/v1/jobs/99999999999999999999999/results").status_code == 422


def test_configuration_is_shown_read_only_with_secrets_redacted(tmp_path, start_node):
    secret_password = "correct horse battery staple"
    config = node_config(tmp_path / "data", web={
        "auth": {"tokens": [API_TOKEN], "users": [{"name": "admin", "password": secret_password}]},
    })
    node = start_node(config)
    response = api(node, "/api/v1/config")
    shown = response.json()
    assert shown["web"]["auth"]["tokens"] == ["***"]
    assert shown["web"]["auth"]["users"] == [{"name": "admin", "password": "***"}]
    assert shown["node"]["ae_title"] == "FRACNODE" and shown["jobs"]["max_attempts"] == 3
    assert secret_password not in response.text and API_TOKEN not in response.text
    assert api(node, "/api/v1/config", "PUT", json=shown).status_code == 405


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/jobs"), ("GET", "/api/v1/jobs/1"), ("POST", "/api/v1/jobs/1/retry"),
    ("GET", "/api/v1/studies"), ("GET", "/api/v1/studies/1.2.3"), ("GET", "/api/v1/studies/1.2.3/preview.png"),
    ("GET", "/api/v1/peers"), ("POST", "/api/v1/peers/pacs/echo"), ("GET", "/api/v1/destinations"),
    ("GET", "/api/v1/config"), ("GET", "/metrics"),
])
def test_every_endpoint_refuses_without_credentials(tmp_path, start_node, method, path):
    node = start_node(node_config(tmp_path / "data"))
    url = f"http://127.0.0.1:{node.web.port}{path}"
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": "Basic bm86cGU="}):
        refused = httpx.request(method, url, headers=headers)
        assert refused.status_code == 401, (path, headers)
        assert refused.json()["detail"].startswith("authentication required: send 'Authorization: Bearer <token>'")


def test_openapi_documents_the_operator_endpoints(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    schema = api(node, "/api/openapi.json").json()
    paths = schema["paths"]
    expected = {
        "/api/v1/jobs": {"get"}, "/api/v1/jobs/{job_id}": {"get"}, "/api/v1/jobs/{job_id}/retry": {"post"},
        "/api/v1/studies": {"get"}, "/api/v1/studies/{study_uid}": {"get"},
        "/api/v1/studies/{study_uid}/preview.png": {"get"}, "/api/v1/peers": {"get"},
        "/api/v1/peers/{name}/echo": {"post"}, "/api/v1/destinations": {"get"}, "/api/v1/config": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    assert "409" in paths["/api/v1/jobs/{job_id}/retry"]["post"]["responses"]
    assert "JobDetail" in schema["components"]["schemas"]
