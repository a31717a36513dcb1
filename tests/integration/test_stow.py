"""DICOMweb STOW-RS (PS3.18 10.5) into the node: real clients, real Orthanc, the real spool."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread, dcmwrite

from node.ingest.stow import PART10_PREFIX
from tests.conftest import API_TOKEN, node_config, wait_until
from tests.integration.test_durability import small_disk  # noqa: F401 - a fixture
from tests.support import dicomgen
from tests.support.orthanc import PLUGIN_DIR, Orthanc

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
BOUNDARY = "fracnode-test-boundary-8c1e"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081199", "00081197"
REFERENCED_SOP_INSTANCE_UID = "00081155"


def url(node: Any, study: str | None = None) -> str:
    base = f"http://127.0.0.1:{node.web.port}/dicomweb/studies"
    return f"{base}/{study}" if study else base


def part10(ds: Dataset) -> bytes:
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def multipart(*parts: bytes, content_type: str = "application/dicom") -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n" for part in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow(
    node: Any, body: bytes, study: str | None = None, content_type: str = MULTIPART, **headers: str
) -> httpx.Response:
    return httpx.post(
        url(node, study), content=body, headers={**AUTH, "Content-Type": content_type, **headers}, timeout=60
    )


def values(item: dict[str, Any], tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value", []))


def failures(response: httpx.Response) -> dict[str, int]:
    """SOP Instance UID ('' when the part had none) → Failure Reason."""
    return {
        (values(i, REFERENCED_SOP_INSTANCE_UID) or [""])[0]: values(i, FAILURE_REASON)[0]
        for i in values(response.json(), FAILED_SOP_SEQUENCE)
    }


def stored(response: httpx.Response) -> set[str]:
    return {values(i, REFERENCED_SOP_INSTANCE_UID)[0] for i in values(response.json(), REFERENCED_SOP_SEQUENCE)}


def spool_files(node: Any) -> list[Path]:
    return sorted(node.config.spool_dir.rglob("*.dcm"))


def temporary_files(node: Any) -> list[Path]:
    return [p for p in node.config.storage.data_dir.rglob("*") if p.name.endswith(".tmp")]


def indexed(node: Any) -> set[str]:
    return {r["sop_instance_uid"] for r in node.db.query("SELECT sop_instance_uid FROM instances")}


# -- real clients -------------------------------------------------------------------------------


def test_dicomweb_client_stores_a_study_that_completes_on_release_and_is_routed(tmp_path, start_node):
    config = node_config(
        tmp_path / "data",
        assembly={"quiet_period_s": 3600, "complete_on_release": True},  # only the release completes it
        routes=[
            {
                "name": "ct",
                "match": {"modality": ["CT"], "calling_ae": ["STOW:token-1"]},
                "pipeline": "test-kos",
                "destinations": ["results-folder"],
            }
        ],
    )
    node = start_node(config)
    series = dicomgen.ct_series(10, size=256)  # 10 × 128 KiB: dicomweb-client sends it chunked
    client = DICOMwebClient(url=f"http://127.0.0.1:{node.web.port}/dicomweb", headers=AUTH)

    response = client.store_instances(series)

    assert {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in series
    }
    assert "FailedSOPSequence" not in response
    # each file is kept as sent; pydicom wrote these without a preamble, which the node adds
    study_dir = config.spool_dir / series[0].StudyInstanceUID
    for ds in series:
        sent = BytesIO()
        dcmwrite(sent, ds)
        assert (study_dir / f"{ds.SOPInstanceUID}.dcm").read_bytes() == PART10_PREFIX + sent.getvalue()
    assert dcmread(study_dir / f"{series[3].SOPInstanceUID}.dcm").PixelData == series[3].PixelData

    job = wait_until(lambda: node.db.query("SELECT * FROM jobs WHERE study_uid = ?", (series[0].StudyInstanceUID,)))
    assert job[0]["route"] == "ct" and job[0]["calling_ae"] == "STOW:token-1"
    documents = wait_until(lambda: list((tmp_path / "data" / "results").rglob("*.dcm")), timeout_s=60)
    assert dcmread(documents[0]).StudyInstanceUID == series[0].StudyInstanceUID
    [transfer] = node.db.query("SELECT * FROM associations")
    assert (transfer["peer_ae"], transfer["called_ae"], transfer["outcome"]) == ("STOW:token-1", "STOW-RS", "released")
    assert (transfer["instances_received"], transfer["instances_failed"]) == (10, 0)


def test_orthanc_pushes_a_study_with_its_dicomweb_plugin(tmp_path, start_node, cr_sample):
    node = start_node(node_config(tmp_path / "data"))
    server = {"Url": f"http://127.0.0.1:{node.web.port}/dicomweb/", "HttpHeaders": AUTH}
    orthanc = Orthanc(
        tmp_path / "orthanc",
        plugins=[str(PLUGIN_DIR / "libOrthancDicomWeb.so")],
        extra={"DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"fracnode": server}}},
    )
    orthanc.start()
    try:
        series = dicomgen.ct_series(6)
        uploads = [orthanc.rest("/instances", part10(ds), "POST") for ds in series]
        study_id = uploads[0]["ParentStudy"]

        orthanc.rest("/dicom-web/servers/fracnode/stow", json.dumps({"Resources": [study_id]}).encode(), "POST")

        study_dir = node.config.spool_dir / series[0].StudyInstanceUID
        wait_until(lambda: len(list(study_dir.glob("*.dcm"))) == len(series), timeout_s=30)
        for upload, ds in zip(uploads, series, strict=True):
            held = orthanc.rest_bytes(f"/instances/{upload['ID']}/file")
            assert (study_dir / f"{ds.SOPInstanceUID}.dcm").read_bytes() == held
        transfers = node.db.query("SELECT outcome, instances_received FROM associations")
        assert sum(t["instances_received"] for t in transfers) == len(series)
        assert {t["outcome"] for t in transfers} == {"released"}
    finally:
        orthanc.stop()


# -- answers per PS3.18 Table 10.5.3-1 ----------------------------------------------------------


def test_one_good_and_one_non_dicom_part_is_202_with_the_failure_and_its_reason(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    good = dicomgen.ct_series(1)[0]

    response = stow(node, multipart(part10(good), b"this is not a DICOM file at all" * 10))

    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+json"
    assert stored(response) == {good.SOPInstanceUID}
    assert failures(response) == {"": 0xC210}
    assert "part 2" in response.headers["warning"] and "DICM" in response.headers["warning"]
    assert indexed(node) == {good.SOPInstanceUID}


def test_no_storable_part_is_409(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    no_uids = dicomgen.ct_series(1)[0]
    del no_uids.SeriesInstanceUID
    response = stow(node, multipart(b"\0" * 200, part10(no_uids)))
    assert response.status_code == 409
    assert list(failures(response).values()) == [0xC210, 0xC210]
    assert "no Series Instance UID (0020,000E)" in response.headers["warning"]
    assert spool_files(node) == [] and temporary_files(node) == []


def test_an_instance_of_another_study_than_the_urls_is_refused(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    mine = dicomgen.ct_series(2)
    other = dicomgen.ct_series(1, seed=3)[0]

    response = stow(node, multipart(*map(part10, [*mine, other])), study=mine[0].StudyInstanceUID)

    assert response.status_code == 202
    assert stored(response) == {ds.SOPInstanceUID for ds in mine}
    assert failures(response) == {other.SOPInstanceUID: 0xA901}
    assert mine[0].StudyInstanceUID in response.headers["warning"]
    only_other = stow(node, multipart(part10(other)), study=mine[0].StudyInstanceUID)
    assert only_other.status_code == 409
    assert other.SOPInstanceUID not in indexed(node)


@pytest.mark.parametrize(
    ("content_type", "status", "says"),
    [
        (None, 415, "no Content-Type"),
        ("application/dicom", 415, "bare application/dicom"),
        ("text/plain", 415, "multipart/related"),
        (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', 415, "not supported"),
        (f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}', 415, "not supported"),
        ('multipart/related; type="application/dicom"', 400, "no boundary"),
        ('multipart/related; type="application/dicom"; boundary=another-one', 400, "no delimiter"),
    ],
)
def test_wrong_content_types_are_refused_with_what_to_send(tmp_path, start_node, content_type, status, says):
    node = start_node(node_config(tmp_path / "data"))
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    response = httpx.post(url(node), content=multipart(part10(dicomgen.ct_series(1)[0])), headers=headers)
    assert response.status_code == status
    assert says in response.json()["detail"]
    assert spool_files(node) == []


def test_malformed_bodies_are_400_and_store_nothing_half(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    body = multipart(part10(dicomgen.ct_series(1)[0]))
    cut = stow(node, body[: len(body) // 2])
    assert cut.status_code == 400 and "closing delimiter" in cut.json()["detail"]
    assert stow(node, f"--{BOUNDARY}--\r\n".encode()).status_code == 400
    assert spool_files(node) == [] and temporary_files(node) == []
    assert node.db.query("SELECT outcome FROM associations")[0]["outcome"] == "malformed"


def test_requests_without_credentials_are_401(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    ds = dicomgen.ct_series(1)[0]
    response = httpx.post(
        url(node, ds.StudyInstanceUID), content=multipart(part10(ds)), headers={"Content-Type": MULTIPART}
    )
    assert response.status_code == 401
    assert spool_files(node) == []


def test_xml_is_answered_when_asked_for_and_406_when_nothing_acceptable(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    ds = dicomgen.ct_series(1)[0]
    response = stow(node, multipart(part10(ds)), Accept="application/dicom+xml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+xml"
    ns = {"n": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    root = ET.fromstring(response.content)
    value = root.find("n:DicomAttribute[@tag='00081199']/n:Item/n:DicomAttribute[@tag='00081155']/n:Value", ns)
    assert value is not None and value.text == ds.SOPInstanceUID
    assert stow(node, multipart(part10(ds)), Accept="text/html").status_code == 406


def test_a_body_over_the_size_limit_is_413(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", web={"max_request_mb": 1}))
    # declared too large: answered before a byte of the body is read
    with socket.create_connection(("127.0.0.1", node.web.port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
                f"Content-Type: {MULTIPART}\r\nContent-Length: {10 * 2**30}\r\n\r\n"
            ).encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
    # sent chunked, without a length: counted as it arrives
    series = dicomgen.ct_series(12, size=256)  # 1.5 MiB
    response = httpx.post(
        url(node),
        content=iter([multipart(*map(part10, series))]),
        headers={**AUTH, "Content-Type": MULTIPART},
        timeout=60,
    )
    assert response.status_code == 413
    assert "web.max_request_mb" in response.json()["detail"]
    assert temporary_files(node) == []
    # what was complete before the limit is whole and indexed
    assert {p.stem for p in spool_files(node)} == indexed(node)


def test_resending_the_same_instances_is_idempotent(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    series = dicomgen.ct_series(3)
    body = multipart(*map(part10, series))
    first, again = stow(node, body), stow(node, body)
    assert first.status_code == again.status_code == 200
    assert stored(again) == {ds.SOPInstanceUID for ds in series}
    assert len(spool_files(node)) == 3
    assert node.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 3


def test_out_of_disk_fails_each_instance_with_a700_and_leaves_nothing_half_written(tmp_path, start_node):
    node = start_node(
        node_config(tmp_path / "data", storage={"data_dir": str(tmp_path / "data"), "min_free_mb": 2**30})
    )
    series = dicomgen.ct_series(3, size=256)
    response = stow(node, multipart(*map(part10, series)))
    assert response.status_code == 409
    assert failures(response) == {ds.SOPInstanceUID: 0xA700 for ds in series}
    assert "storage.min_free_mb" in response.headers["warning"]
    assert spool_files(node) == [] and temporary_files(node) == [] and indexed(node) == set()


def test_a_jpeg_2000_radiograph_is_stored_byte_for_byte(tmp_path, start_node, cr_sample):
    node = start_node(node_config(tmp_path / "data"))
    raw = cr_sample.read_bytes()
    ds = dcmread(cr_sample, stop_before_pixels=True)
    response = stow(node, multipart(raw), study=ds.StudyInstanceUID)
    assert response.status_code == 200
    [path] = spool_files(node)
    assert path.read_bytes() == raw
    row = node.db.query("SELECT transfer_syntax_uid, calling_ae FROM instances")[0]
    assert row["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.90"


def test_a_client_that_goes_away_mid_body_leaves_whole_instances_only(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    first, second = dicomgen.ct_series(2, size=256)
    body = multipart(part10(first), part10(second))
    with socket.create_connection(("127.0.0.1", node.web.port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
                f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        sock.sendall(body[: len(body) * 3 // 4])  # the first part and half the second
        time.sleep(0.5)
    outcome = wait_until(
        lambda: [r["outcome"] for r in node.db.query("SELECT outcome FROM associations") if r["outcome"] != "open"]
    )
    assert outcome == ["aborted"]
    assert indexed(node) == {first.SOPInstanceUID}
    assert temporary_files(node) == []
    assert not node.db.query("SELECT 1 FROM studies WHERE release_ready = 1")


def test_a_study_url_that_is_no_uid_is_400(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    response = stow(node, multipart(part10(dicomgen.ct_series(1)[0])), study=f"not-a-uid-{uuid.uuid4().hex}")
    assert response.status_code == 400 and "Study Instance UID" in response.json()["detail"]


def test_a_disk_that_fills_up_mid_request_fails_the_rest_with_a700(tmp_path, small_disk, start_node):  # noqa: F811
    node = start_node(
        node_config(small_disk / "data", storage={"data_dir": str(small_disk / "data"), "min_free_mb": 0})
    )
    ballast = small_disk / "ballast"
    free = os.statvfs(small_disk)
    ballast.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 1536 * 1024))  # ~1.5 MiB left
    series = dicomgen.ct_series(30, size=256)  # 30 × 128 KiB
    sent = {ds.SOPInstanceUID: ds for ds in series}

    response = stow(node, multipart(*map(part10, series)))

    assert response.status_code == 202
    refused = failures(response)
    assert refused and set(refused.values()) == {0xA700}
    assert stored(response) == indexed(node) == set(sent) - set(refused)
    for path in spool_files(node):  # also a file renamed into place whose index row did not fit
        assert dcmread(path).PixelData == sent[path.stem].PixelData
    assert temporary_files(node) == []
    ballast.unlink()
    again = stow(node, multipart(*(part10(sent[uid]) for uid in refused)))
    assert again.status_code == 200 and indexed(node) == set(sent)


def test_a_truncated_or_too_deeply_nested_part_is_refused_per_part(tmp_path, start_node):
    """PS3.18 10.5: each part is scanned to its end like a C-STORE data set; the broken ones get
    Failure Reason 0xC210 with the reason in a Warning, the whole one is stored."""
    from tests.support.bombs import nested

    node = start_node(node_config(tmp_path / "data"))
    whole, cut = dicomgen.ct_series(2, size=64)
    deep = nested(40)
    response = stow(node, multipart(part10(whole), part10(cut)[:-100], part10(deep)))
    assert response.status_code == 202
    assert failures(response) == {cut.SOPInstanceUID: 0xC210, deep.SOPInstanceUID: 0xC210}
    assert stored(response) == {whole.SOPInstanceUID}
    warning = response.headers["warning"]
    assert "ends inside (7FE0,0010)" in warning and "nested more than 32 deep" in warning
    assert indexed(node) == {whole.SOPInstanceUID} and temporary_files(node) == []
