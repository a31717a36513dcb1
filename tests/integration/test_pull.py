"""Pull on request, against a real Orthanc: WADO-RS (its DICOMweb plugin), C-GET and C-MOVE.

A study held by Orthanc is asked for through the API (or `fracnode analyze --from`); the node
retrieves it into its spool, routes it at once as if it had been pushed, and the test pipeline's
result goes back to Orthanc (by STOW-RS or C-STORE).
"""

from __future__ import annotations

import os
import subprocess
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from tests.conftest import API_TOKEN, REPO, node_config, wait_until
from tests.integration.test_durability import fracnode_command, write_config
from tests.support import dicomgen
from tests.support.orthanc import Orthanc, free_port
from tests.support.pipelines import referenced_instances

USERS = {"fracnode": "pull-secret-1"}
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
CT_ROUTE = {"name": "ct", "match": {"modality": ["CT"]}, "pipeline": "test-kos"}
CLI_ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # the test pipelines are in tests/
SLOW_ASSEMBLY = {"quiet_period_s": 3600}  # only the pull's end can complete a study in time


@pytest.fixture
def orthanc_web(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = Orthanc(tmp_path / "orthanc-web", dicomweb=True, users=USERS)
    server.start()
    yield server
    server.stop()


def web_peer(orthanc: Orthanc, name: str = "orthanc-web", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "dicomweb",
        "url": orthanc.dicomweb_url,
        "ae_title": "ORTHANC",
        "auth": {"type": "basic", "user": "fracnode", "password": USERS["fracnode"]},
        **extra,
    }


def dimse_peer(orthanc: Orthanc, retrieve: str) -> dict[str, Any]:
    return {
        "name": "orthanc-dimse",
        "ae_title": orthanc.ae_title,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "retrieve": retrieve,
    }


def upload(orthanc: Orthanc, files: list[Path]) -> None:
    for path in files:
        orthanc.rest("/instances", path.read_bytes(), "POST")


def study_in_orthanc(orthanc: Orthanc, tmp_path: Path, count: int = 4) -> list[Any]:
    series = dicomgen.ct_series(count)
    upload(orthanc, dicomgen.write(series, tmp_path / "ct"))
    return series


def api(node) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{node.web.port}/api/v1"


def ask(node, study_uid: str, peer: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{api(node)}/studies/{study_uid}/analyze", json={"peer": peer}, headers=AUTH, timeout=60)


def finished(node, location: str, timeout_s: float = 60) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    def state() -> dict[str, Any] | None:
        status = httpx.get(f"http://127.0.0.1:{node.web.port}{location}", headers=AUTH).json()
        return status if status["state"] in ("done", "failed") else None

    return wait_until(state, timeout_s=timeout_s)  # type: ignore[no-any-return]


def kos_in(orthanc: Orthanc, study_uid: str, count: int = 1) -> list[Any]:
    def found() -> list[Any]:
        tags = [orthanc.instance_tags(i) for i in orthanc.instances()]
        return [t for t in tags if t["Modality"] == "KO" and t["StudyInstanceUID"] == study_uid]

    def enough() -> list[Any] | None:
        documents = found()
        return documents if len(documents) >= count else None

    return wait_until(enough, timeout_s=60)  # type: ignore[no-any-return]


# -- WADO-RS, results back by STOW-RS -------------------------------------------------------------


def test_study_pulled_by_wado_rs_is_analysed_and_filed_back_by_stow_rs(tmp_path, start_node, orthanc_web):
    series = study_in_orthanc(orthanc_web, tmp_path)
    study_uid = series[0].StudyInstanceUID
    node = start_node(
        node_config(
            tmp_path / "data",
            assembly=SLOW_ASSEMBLY,
            peers=[web_peer(orthanc_web)],
            destinations=[{"name": "pacs-web", "type": "dicomweb", "peer": "orthanc-web"}],
            routes=[{**CT_ROUTE, "destinations": ["pacs-web"]}],
        )
    )

    response = ask(node, study_uid, "orthanc-web")
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    assert response.json()["status_url"] == location and response.json()["method"] == "wado-rs"
    assert response.json()["expected"] == 4  # QIDO-RS said so before the retrieval began

    status = finished(node, location)
    assert status["state"] == "done", status
    assert (status["received"], status["duplicates"], status["failed"], status["error"]) == (4, 0, 0, "")
    (kos,) = kos_in(orthanc_web, study_uid)
    # the spool holds Orthanc's files byte for byte, routed as if ORTHANC had sent them
    rows = node.db.query("SELECT * FROM instances WHERE study_uid = ?", (study_uid,))
    assert {r["sop_instance_uid"] for r in rows} == {ds.SOPInstanceUID for ds in series}
    stored = {orthanc_web.instance_tags(i)["SOPInstanceUID"]: i for i in orthanc_web.instances()}
    for row in rows:
        assert Path(row["path"]).read_bytes() == orthanc_web.rest_bytes(
            f"/instances/{stored[row['sop_instance_uid']]}/file"
        )
    assert node.db.query("SELECT calling_ae FROM studies WHERE study_uid = ?", (study_uid,))[0][0] == "ORTHANC"
    # the result as delivered (a delivered result leaves the outbox)
    document = dcmread(BytesIO(orthanc_web.rest_bytes(f"/instances/{stored[kos['SOPInstanceUID']]}/file")))
    assert not Path(node.db.query("SELECT path FROM outbox")[0]["path"]).exists()
    assert referenced_instances(document) == {ds.SOPInstanceUID for ds in series}
    jobs = finished(node, location)["jobs"]
    assert [(j["pipeline"], j["state"]) for j in jobs] == [("test-kos", "done")]

    # asked again: the images are here already, but the user asked for an analysis, so it runs
    # again (only the first result, now part of the study in Orthanc, is new)
    again = ask(node, study_uid, "orthanc-web")
    assert again.status_code == 202
    status = finished(node, again.headers["location"])
    assert (status["state"], status["received"], status["duplicates"]) == ("done", 1, 4)
    kos_in(orthanc_web, study_uid, count=2)
    assert node.db.query("SELECT revision FROM studies WHERE study_uid = ?", (study_uid,))[0][0] == 2


def test_pull_errors_say_what_is_wrong_before_anything_is_queued(tmp_path, start_node, orthanc_web):
    strict = Orthanc(tmp_path / "strict").start()  # answers only the modalities it knows: not us
    try:
        check_pull_errors(tmp_path, start_node, orthanc_web, strict)
    finally:
        strict.stop()


def check_pull_errors(tmp_path: Path, start_node, orthanc_web: Orthanc, strict: Orthanc) -> None:  # type: ignore[no-untyped-def]
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    node = start_node(
        node_config(
            tmp_path / "data",
            peers=[
                web_peer(orthanc_web),
                {"name": "down", "type": "dicomweb", "url": down},
                {
                    **web_peer(orthanc_web, name="wrong-password"),
                    "auth": {"type": "basic", "user": "fracnode", "password": "nope"},
                },
                dimse_peer(strict, "c-get"),
            ],
        )
    )
    unknown_study = "1.2.826.0.1.3680043.8.498.1"

    missing = ask(node, unknown_study, "orthanc-web")
    assert missing.status_code == 404
    assert unknown_study in missing.json()["detail"] and "'orthanc-web'" in missing.json()["detail"]

    unknown_peer = ask(node, unknown_study, "pacs")
    assert unknown_peer.status_code == 400
    assert (
        "unknown peer 'pacs' (known: orthanc-web, down, wrong-password, orthanc-dimse)" in unknown_peer.json()["detail"]
    )

    unreachable = ask(node, unknown_study, "down")
    assert unreachable.status_code == 502
    assert "cannot reach 'down'" in unreachable.json()["detail"]

    refused = ask(node, unknown_study, "wrong-password")
    assert refused.status_code == 502
    assert "HTTP 401" in refused.json()["detail"] and "auth" in refused.json()["detail"]

    unknown_to_peer = ask(node, unknown_study, "orthanc-dimse")
    assert unknown_to_peer.status_code == 502
    assert "our AE title 'FRACNODE'" in unknown_to_peer.json()["detail"]

    bad_uid = ask(node, "not-a-uid", "orthanc-web")
    assert bad_uid.status_code == 400
    no_auth = httpx.post(f"{api(node)}/studies/{unknown_study}/analyze", json={"peer": "orthanc-web"})
    assert no_auth.status_code == 401
    assert httpx.get(f"{api(node)}/pulls/999", headers=AUTH).status_code == 404
    assert node.db.query("SELECT COUNT(*) FROM pulls")[0][0] == 0


# -- DIMSE: C-GET and C-MOVE, results back by C-STORE ---------------------------------------------


def dimse_node(tmp_path: Path, start_node, orthanc: Orthanc, retrieve: str):  # type: ignore[no-untyped-def]
    return start_node(
        node_config(
            tmp_path / "data",
            assembly=SLOW_ASSEMBLY,
            peers=[dimse_peer(orthanc, retrieve)],
            destinations=[{"name": "pacs", "type": "dimse", "peer": "orthanc-dimse"}],
            routes=[{**CT_ROUTE, "match": {"modality": ["CT", "CR"]}, "destinations": ["pacs"]}],
        )
    )


def test_study_pulled_by_c_get_is_analysed_and_filed_back(tmp_path, start_node, orthanc, cr_sample):
    series = study_in_orthanc(orthanc, tmp_path, count=3)
    upload(orthanc, [cr_sample])
    node = dimse_node(tmp_path, start_node, orthanc, "c-get")

    for study_uid, count in ((series[0].StudyInstanceUID, 3), (dcmread(cr_sample).StudyInstanceUID, 1)):
        response = ask(node, study_uid, "orthanc-dimse")
        assert response.status_code == 202, response.text
        assert (response.json()["method"], response.json()["expected"]) == ("c-get", count)
        status = finished(node, response.headers["location"])
        assert (status["state"], status["received"], status["failed"]) == ("done", count, 0), status["error"]
        kos_in(orthanc, study_uid)
    # the JPEG 2000 radiograph came as Orthanc holds it, not transcoded
    (row,) = node.db.query("SELECT * FROM instances WHERE sop_class_uid = '1.2.840.10008.5.1.4.1.1.1'")
    assert Path(row["path"]).read_bytes()[-1000:] == cr_sample.read_bytes()[-1000:]
    assert row["transfer_syntax_uid"] == dcmread(cr_sample).file_meta.TransferSyntaxUID


@pytest.fixture
def orthanc_without_fracnode(tmp_path: Path):  # type: ignore[no-untyped-def]
    # answers C-FIND and C-MOVE from any AE title, but knows no move destination yet
    server = Orthanc(tmp_path / "orthanc-move", extra={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True})
    server.start()
    yield server
    server.stop()


def test_study_pulled_by_c_move_arrives_at_the_nodes_own_scp(tmp_path, start_node, orthanc_without_fracnode):
    orthanc = orthanc_without_fracnode
    series = study_in_orthanc(orthanc, tmp_path, count=3)
    study_uid = series[0].StudyInstanceUID
    node = dimse_node(tmp_path, start_node, orthanc, "c-move")

    # Orthanc does not know FRACNODE as a move destination: the pull fails and says what to do
    response = ask(node, study_uid, "orthanc-dimse")
    assert response.status_code == 202, response.text
    status = finished(node, response.headers["location"])
    assert status["state"] == "failed"
    assert "know our AE title as a move destination" in status["error"], status["error"]
    assert "retrieve: c-get" in status["error"]

    orthanc.rest(
        "/modalities/fracnode",
        method="PUT",
        data=(b'{"AET": "FRACNODE", "Host": "127.0.0.1", "Port": %d}' % node.ingest.port),
    )
    response = ask(node, study_uid, "orthanc-dimse")
    status = finished(node, response.headers["location"])
    assert (status["state"], status["received"], status["failed"]) == ("done", 3, 0), status["error"]
    kos_in(orthanc, study_uid)
    # they came through the node's C-STORE SCP, from Orthanc's AE title
    rows = node.db.query("SELECT DISTINCT calling_ae FROM instances WHERE study_uid = ?", (study_uid,))
    assert [r[0] for r in rows] == [orthanc.ae_title]


# -- the command line -----------------------------------------------------------------------------


def test_fracnode_analyze_from_a_dicomweb_peer_writes_results_offline(tmp_path, orthanc_web):
    series = study_in_orthanc(orthanc_web, tmp_path, count=2)
    study_uid = series[0].StudyInstanceUID
    config_path, _ = write_config(
        tmp_path, peers=[web_peer(orthanc_web)], routes=[{**CT_ROUTE, "destinations": ["results-folder"]}]
    )
    out = tmp_path / "out"
    started = time.monotonic()
    result = subprocess.run(
        [
            *fracnode_command(),
            "-c",
            str(config_path),
            "analyze",
            "--from",
            "orthanc-web",
            "--study",
            study_uid,
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=CLI_ENV,
    )
    assert result.returncode == 0, result.stderr
    assert f"study {study_uid} from orthanc-web: 2 instance(s) received" in result.stderr
    (document,) = (out / study_uid).glob("KO_*.dcm")
    assert referenced_instances(dcmread(document)) == {ds.SOPInstanceUID for ds in series}
    assert (out / "summary.csv").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # the retrieval folder is gone
    assert time.monotonic() - started < 120

    missing = subprocess.run(
        [
            *fracnode_command(),
            "-c",
            str(config_path),
            "analyze",
            "--from",
            "orthanc-web",
            "--study",
            "1.2.3.4",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=CLI_ENV,
    )
    assert missing.returncode == 1
    assert "study 1.2.3.4 is not on 'orthanc-web'" in missing.stderr
