"""End to end through real DICOM peers: DCMTK clients → fracnode → a real Orthanc."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom import dcmread

from tests.conftest import node_config, require_tool, wait_until
from tests.support import dicomgen
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.pipelines import referenced_instances


def storescu(
    port: int, files: list[Path], *options: str, calling_ae: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    command = [require_tool("storescu"), "-aet", calling_ae, "-aec", "FRACNODE", *options, "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )


def test_echoscu_gets_success(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    result = subprocess.run(
        [require_tool("echoscu"), "-aec", "FRACNODE", "127.0.0.1", str(node.ingest.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_cr_and_ct_studies_reach_orthanc_as_derived_objects(tmp_path, start_node, orthanc, cr_sample):
    config = node_config(
        tmp_path / "data",
        peers=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}],
        destinations=[
            {"name": "pacs", "type": "dimse", "peer": "pacs"},
            {"name": "results-folder", "type": "folder", "path": str(tmp_path / "results")},
        ],
        routes=[
            {
                "name": "radiographs",
                "match": {"modality": ["CR", "DX"]},
                "pipeline": "test-kos",
                "destinations": ["pacs", "results-folder"],
            },
            {
                "name": "neck-ct",
                "match": {"modality": ["CT"], "series_description": "bone"},
                "pipeline": "test-kos",
                "destinations": ["pacs"],
            },
        ],
    )
    node = start_node(config)
    ct_study = dicomgen.ct_series(12, description="CT Neck 1.0 Bone")
    soft = dicomgen.ct_series(
        8, study_uid=ct_study[0].StudyInstanceUID, series_number=2, description="CT Neck 3.0 Soft tissue"
    )
    ct_files = dicomgen.write(ct_study + soft, tmp_path / "ct")

    assert storescu(node.ingest.port, [cr_sample], "-xv").returncode == 0
    assert storescu(node.ingest.port, ct_files, "-xs").returncode == 0

    # 2 derived objects (one per study) reach Orthanc next to the 21 source-free instances
    found = orthanc.wait_for_instances(2, timeout_s=60)
    documents = [orthanc.instance_tags(i) for i in found]
    by_study = {d["StudyInstanceUID"]: d for d in documents}
    cr = dcmread(cr_sample, stop_before_pixels=True)
    assert set(by_study) == {cr.StudyInstanceUID, ct_study[0].StudyInstanceUID}
    assert all(d["Modality"] == "KO" for d in documents)

    # the CT document references exactly the 12 bone-kernel slices, not the soft-tissue series;
    # delivered results have left the outbox: they are read back from Orthanc
    delivered = tmp_path / "delivered"
    delivered.mkdir()
    outbox = []
    for orthanc_id in found:
        outbox.append(delivered / f"{orthanc_id}.dcm")
        outbox[-1].write_bytes(orthanc.rest_bytes(f"/instances/{orthanc_id}/file"))
    wait_until(lambda: not list((tmp_path / "data" / "outbox").rglob("*.dcm")))
    kos = [dcmread(p) for p in outbox]
    ct_kos = next(k for k in kos if k.StudyInstanceUID == ct_study[0].StudyInstanceUID)
    assert referenced_instances(ct_kos) == {ds.SOPInstanceUID for ds in ct_study}
    assert ct_kos.PatientID == ct_study[0].PatientID

    # every derived object the node delivered is valid DICOM by dicom3tools' validator
    for path in outbox:
        errors = dciodvfy_errors(path)
        assert not errors, f"{path.name}: {errors}"

    # the folder destination got the CR result too
    wait_until(lambda: list((tmp_path / "results").rglob("*.dcm")))
