"""No patient data outside the results: marker strings in the patient and study attributes of
studies sent through ingest, pipelines, failures and retries never appear in the log (every
logger, pydicom's warnings included), the SQLite database and its WAL, the REST API, the
dashboard or the audit trail, nor in any file name. A malformed birth date does not fail the
radiograph analysis; it fails the test pipeline (which copies it with highdicom) 3 times and
an operator's retry once more, and those failures name no value either."""

from __future__ import annotations

import secrets
import struct
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from tests.conftest import API_TOKEN, node_config, wait_until
from tests.integration.test_protocol import storescu
from tests.integration.test_stow import multipart, part10
from tests.support import dicomgen
from tests.support.served import Served, serve

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
CR = "1.2.840.10008.5.1.4.1.1.1"
TOKEN = secrets.token_hex(4).upper()
MARKERS = {
    "PatientName": f"Mrkpn{TOKEN}^Zebulon",
    "PatientID": f"MRKID{TOKEN}",
    "PatientBirthDate": f"MRKBD{TOKEN}",  # no date at all: a malformed DA
    "AccessionNumber": f"MRKAC{TOKEN}",
    "ReferringPhysicianName": f"Mrkrf{TOKEN}^Quentin",
    "InstitutionName": f"MRKIN{TOKEN} Hospital",
}


def marked(cr_sample: Path, **changes: object):  # type: ignore[no-untyped-def]
    ds = dcmread(cr_sample)
    from pydicom.uid import generate_uid

    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in {**MARKERS, **changes}.items():
        setattr(ds, keyword, value)
    return ds


def corrupted_uid_length(path: Path) -> None:
    """The SOP Instance UID's length made to swallow the patient module behind it."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\x08\x00\x18\x00UI", 132 + 200)  # the data set's, after the file meta
    struct.pack_into("<H", raw, at + 6, raw.index(b"\x10\x00\x30\x00", at) - at + 40)
    path.write_bytes(bytes(raw))


def send_raw(port: int, path: Path) -> int:
    ae = AE(ae_title="RAWSEND")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CR, [JPEG2000Lossless])
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes as they are
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACNODE")
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def everything_the_node_shows(node: Served) -> dict[str, str]:
    """Every place outside the results: log, database (+ WAL), API, dashboard, audit, names."""
    api = httpx.Client(base_url=node.url, headers=AUTH, timeout=60)
    places = {"log": node.log.read_text(encoding="utf-8", errors="replace")}
    for name in ("fracnode.sqlite", "fracnode.sqlite-wal", "audit.log"):
        path = node.data_dir / name
        places[name] = path.read_bytes().decode("latin-1") if path.exists() else ""
    jobs = api.get("/api/v1/jobs").json()
    paths = [
        "/api/v1/jobs",
        "/api/v1/studies",
        "/api/v1/destinations",
        "/api/v1/config",
        "/api/v1/pulls",
        "/metrics",
        "/",
        "/api/docs",
        "/api/openapi.json",
    ]
    paths += [f"/api/v1/jobs/{job['id']}" for job in jobs]
    paths += [f"/api/v1/studies/{study['study_uid']}" for study in api.get("/api/v1/studies").json()]
    for path in paths:
        places[f"GET {path}"] = api.get(path).text
    places["file names"] = "\n".join(str(p) for p in node.data_dir.rglob("*"))
    return places


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # pydicom, as the test writes the bad date
def test_marker_strings_never_leave_the_results(tmp_path, cr_sample):
    node = serve(
        tmp_path,
        routes=[
            {
                "name": "radiographs",
                "match": {"modality": ["CR"]},
                "pipeline": "radiograph-fracture",
                "destinations": ["results-folder"],
            },
            {"name": "kos", "match": {"modality": ["CR"]}, "pipeline": "test-kos", "destinations": ["results-folder"]},
        ],
        inference={"device": "cpu"},
        jobs={"max_attempts": 3},
    )
    try:
        # a whole CR with a malformed birth date, by storescu
        good = marked(cr_sample)
        (tmp_path / "in").mkdir()
        good.save_as(tmp_path / "in" / "good.dcm")
        assert storescu(node.port, [tmp_path / "in" / "good.dcm"], "-xv").returncode == 0
        # a corrupted UID length that swallows the patient module: refused, reason without values
        corrupt = marked(cr_sample)
        corrupt.save_as(tmp_path / "in" / "corrupt.dcm")
        corrupted_uid_length(tmp_path / "in" / "corrupt.dcm")
        assert send_raw(node.port, tmp_path / "in" / "corrupt.dcm") in (0xC210, 0xA900)
        # by STOW-RS: broken pixel data in a whole data set (stored, not decodable) and a cut part
        broken = marked(cr_sample, InstitutionName=f"MRKIN{TOKEN} Annex")
        broken.PixelData = encapsulate([b"\xff\x4f\xff\x51" + secrets.token_bytes(300)])
        cut = part10(marked(cr_sample))[:5000]
        response = httpx.post(
            f"{node.url}/dicomweb/studies",
            content=multipart(part10(broken), cut),
            headers={
                **AUTH,
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=fracnode-test-boundary-8c1e',
            },
            timeout=60,
        )
        assert response.status_code == 202, response.text

        api = httpx.Client(base_url=node.url, headers=AUTH, timeout=60)

        def settled() -> list[dict] | None:
            jobs = api.get("/api/v1/jobs").json()
            ended = [j for j in jobs if j["state"] in ("done", "failed", "not_applicable")]
            return jobs if len(jobs) == 4 and len(ended) == 4 else None

        jobs = wait_until(settled, timeout_s=300, interval_s=1)
        by_study = {(j["study_uid"], j["pipeline"]): j for j in jobs}
        radiograph = by_study[(good.StudyInstanceUID, "radiograph-fracture")]
        assert radiograph["state"] == "done", radiograph  # the malformed birth date did not fail it
        kos = by_study[(good.StudyInstanceUID, "test-kos")]
        assert kos["state"] == "failed" and kos["attempts"] == 3
        assert "message withheld" in kos["last_error"]
        retried = api.post(f"/api/v1/jobs/{kos['id']}/retry")
        assert retried.status_code == 200
        wait_until(lambda: api.get(f"/api/v1/jobs/{kos['id']}").json()["state"] == "failed", timeout_s=60)
        wait_until(lambda: not list((node.data_dir / "outbox").rglob("*.dcm")), timeout_s=60)
        places = everything_the_node_shows(node)
    finally:
        node.stop()
    places["log"] = node.log.read_text(encoding="utf-8", errors="replace")  # to the last line
    places["audit.log"] = (node.data_dir / "audit.log").read_text(encoding="utf-8")
    assert "pydicom" in places["log"] or "py.warnings" in places["log"]  # their records are there
    for where, text in places.items():
        for keyword, marker in MARKERS.items():
            for piece in {marker, *marker.replace("^", " ").split()}:
                if TOKEN in piece:
                    assert piece not in text, f"{keyword} in {where}"
        assert TOKEN not in text, where


def test_delivered_results_leave_the_outbox_and_nothing_stays_past_retention(tmp_path, start_node):
    node = start_node(
        node_config(
            tmp_path / "data",
            storage={"retention_days": 1.0},
            routes=[
                {
                    "name": "kos",
                    "match": {"modality": ["CR"]},
                    "pipeline": "test-kos",
                    "destinations": ["results-folder"],
                }
            ],
        )
    )
    cr = dicomgen.cr_image(size=64)
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0
    wait_until(lambda: node.db.query("SELECT 1 FROM outbox WHERE state = 'delivered'"), timeout_s=60)
    assert not list(node.config.outbox_dir.rglob("*.dcm"))  # delivered: the destination holds it
    assert list(node.config.spool_dir.rglob("*.dcm"))
    assert node.clean_once(time.time() + 2 * 86400) == 1
    results = node.config.destination("results-folder").path  # the destination's copy is the result
    left = [p for p in node.config.storage.data_dir.rglob("*.dcm") if results not in p.parents]
    assert left == []
    assert 'csd-code="110105"' in (node.config.storage.data_dir / "audit.log").read_text()  # Study Deleted
