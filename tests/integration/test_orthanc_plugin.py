"""The Orthanc plugin in a real Orthanc (Debian orthanc-python) handing studies to a real node.

storescu sends into Orthanc only; everything after that is the plugin's doing: the stable study
goes to fracnode by an Orthanc C-STORE job, fracnode's results come back into the same study,
and neither their arrival nor an Orthanc restart hands the study over a second time.
"""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright
from pydicom import dcmread

from node.service import Node
from tests.conftest import API_TOKEN, REPO, node_config, require_tool, wait_until
from tests.integration.test_radiograph_flow import (
    GSPS_CLASS,
    SC_CLASS,
    SEG_CLASS,
    SR_CLASS,
    eager_models,
)
from tests.support import dicomgen
from tests.support.orthanc import PLUGIN_DIR, Orthanc, free_port

pytestmark = pytest.mark.slow
__all__ = ["eager_models"]  # a fixture used below

PLUGIN = REPO / "plugins" / "orthanc" / "fracnode_orthanc.py"
STABLE_AGE_S = 1


def plugin_orthanc(workdir: Path, stable_age_s: int = STABLE_AGE_S, **fracnode: Any) -> Orthanc:
    """An Orthanc that loads the plugin (the README's configuration snippet); started by the caller."""
    return Orthanc(
        workdir,
        plugins=[str(PLUGIN_DIR / "libOrthancPython.so")],
        extra={
            "PythonScript": str(PLUGIN),
            "StableAge": stable_age_s,
            "Fracnode": {"Modality": "fracnode", "RetryDelay": 1, **fracnode},
        },
    )


def connect(orthanc: Orthanc, node: Node) -> None:
    orthanc.modalities = {"fracnode": ["FRACNODE", "127.0.0.1", node.ingest.port]}


def store_into_orthanc(orthanc: Orthanc, *files: Path) -> None:
    command = [
        require_tool("storescu"),
        "-xv",
        "-aet",
        "MODALITY",
        "-aec",
        orthanc.ae_title,
        "127.0.0.1",
        str(orthanc.dicom_port),
        *map(str, files),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def status(orthanc: Orthanc) -> dict[str, Any]:
    return dict(orthanc.rest("/fracnode/status"))


def associations_from_orthanc(node: Node) -> list[dict[str, Any]]:
    rows = node.db.query("SELECT outcome, instances_received FROM associations WHERE peer_ae = 'ORTHANC'")
    return [dict(row) for row in rows]


def study_classes(orthanc: Orthanc, study: str) -> set[str]:
    return {orthanc.instance_tags(i["ID"])["SOPClassUID"] for i in orthanc.rest(f"/studies/{study}/instances")}


def click_analyze_in_explorer(orthanc: Orthanc, study: str) -> list[str]:
    """Open the study in Orthanc Explorer (headless Chromium), click the button; the alerts shown."""
    alerts: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_tool("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.accept()))
            page.goto(f"{orthanc.url}/app/explorer.html#study?uuid={study}")
            # The sync API delivers events only while one of its calls runs (a time.sleep poll never
            # sees an alert that comes after click() returned), so wait for the dialog through it.
            with page.expect_event("dialog", timeout=10_000):
                page.get_by_text("Analyze with fracnode").click()
        finally:
            browser.close()
    return alerts


def quiet(orthanc: Orthanc) -> None:
    """Wait until Orthanc's last change is older than StableAge and the plugin has done its work."""

    def settled() -> bool:
        state = status(orthanc)
        return state["CaughtUp"] and state["Queued"] == 0

    wait_until(settled, timeout_s=30)
    time.sleep(STABLE_AGE_S + 2)  # the last instance's STABLE_STUDY fires, and is handled
    wait_until(lambda: status(orthanc)["Queued"] == 0, timeout_s=30)


def test_a_cr_study_in_orthanc_gets_sr_and_seg_without_any_other_action(tmp_path, start_node, cr_sample, eager_models):
    orthanc = plugin_orthanc(tmp_path / "orthanc")
    node = start_node(
        node_config(
            tmp_path / "data",
            peers=[{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}],
            destinations=[
                {"name": "back", "type": "sender", "overlays": ["gsps", "secondary_capture", "radiograph_seg"]}
            ],
            routes=[
                {
                    "name": "radiographs",
                    "match": {"modality": ["CR", "DX"]},
                    "pipeline": "radiograph-fracture",
                    "destinations": ["back"],
                }
            ],
            inference={"models_dir": str(eager_models), "device": "cpu"},
        )
    )
    # the README's one snippet: the plugin defines fracnode's modality itself
    orthanc.extra["Fracnode"].update(Host="127.0.0.1", Port=node.ingest.port, AeTitle="FRACNODE")
    orthanc.start()
    try:
        wait_until(lambda: status(orthanc)["CaughtUp"])  # the plugin's first start sets its change cursor
        assert orthanc.rest("/modalities?expand")["fracnode"]["Port"] == node.ingest.port
        store_into_orthanc(orthanc, cr_sample)
        source = dcmread(cr_sample, stop_before_pixels=True)
        study = orthanc.rest("/tools/lookup", data=source.StudyInstanceUID.encode(), method="POST")[0]["ID"]

        # the study comes back with fracnode's results (and the overlays this destination adds)
        wait_until(lambda: {SR_CLASS, SEG_CLASS, GSPS_CLASS, SC_CLASS} <= study_classes(orthanc, study), timeout_s=180)
        for instance in orthanc.rest(f"/studies/{study}/instances"):
            tags = orthanc.instance_tags(instance["ID"])
            assert tags["StudyInstanceUID"] == source.StudyInstanceUID

        # the results made the study stable again: nothing more is handed over
        quiet(orthanc)
        assert associations_from_orthanc(node) == [{"outcome": "released", "instances_received": 1}]
        handovers = status(orthanc)["HandOvers"]
        assert [(h["study"], h["reason"], h["state"], h["count"]) for h in handovers] == [(study, "stable", "sent", 1)]
        assert "already handed over" in [d["Decision"] for d in status(orthanc)["Decisions"] if d["Study"] == study]

        # an Orthanc restart hands nothing over again (its change log is checked at start)
        orthanc.stop()
        orthanc.start()
        quiet(orthanc)
        after_restart = status(orthanc)
        assert [d["Trigger"] for d in after_restart["Decisions"]] == ["catch-up"]
        assert after_restart["Decisions"][0]["Decision"] == "already handed over"
        assert len(after_restart["HandOvers"]) == 1
        assert len(associations_from_orthanc(node)) == 1
        assert len(node.db.query("SELECT 1 FROM jobs")) == 1

        # the change callback only queues: it never waits on the network or the database
        assert after_restart["Callbacks"] > 0 and after_restart["CallbackMaxMs"] < 20

        # the Explorer's action: its script is served, and its route forces a hand-over
        script = orthanc.rest_bytes("/plugins/explorer.js").decode()
        assert "Analyze with fracnode" in script and "/fracnode/studies/" in script
        answer = orthanc.rest(f"/fracnode/studies/{study}/analyze", data=b"", method="POST")
        assert answer == {"Study": study, "Queued": True, "AnalyzeAgain": False}  # no Url/Token to ask with
        wait_until(lambda: len(associations_from_orthanc(node)) == 2, timeout_s=60)
        wait_until(lambda: status(orthanc)["HandOvers"][0]["state"] == "sent", timeout_s=30)
        assert status(orthanc)["HandOvers"][0]["reason"] == "forced"
        # fracnode holds these bytes already: the resend is acknowledged, and the log says how to ask
        assert "set Fracnode.Url and Token so the button asks" in (tmp_path / "orthanc" / "orthanc.log").read_text()
        with pytest.raises(urllib.error.HTTPError) as missing:
            orthanc.rest("/fracnode/studies/not-a-study/analyze", data=b"", method="POST")
        assert missing.value.code == 404
    finally:
        orthanc.stop()


def test_the_button_in_store_mode_has_fracnode_analyse_its_copy_again(tmp_path, start_node, caplog):
    """Store mode with `Url`/`Token`: the Explorer button asks fracnode's API for a new analysis of
    the study it holds (an identical C-STORE alone changes nothing), then hands the study over."""
    node = start_node(
        node_config(
            tmp_path / "data",
            routes=[
                {
                    "name": "cr",
                    "match": {"modality": ["CR"]},
                    "pipeline": "test-kos",
                    "destinations": ["results-folder"],
                }
            ],
        )
    )
    orthanc = plugin_orthanc(tmp_path / "orthanc", Url=f"http://127.0.0.1:{node.web.port}", Token=API_TOKEN)
    connect(orthanc, node)
    with orthanc:
        wait_until(lambda: status(orthanc)["CaughtUp"])
        cr = dicomgen.write([dicomgen.cr_image()], tmp_path / "cr")
        store_into_orthanc(orthanc, *cr)
        uid = str(dcmread(cr[0]).StudyInstanceUID)
        study = orthanc.rest("/tools/lookup", data=uid.encode(), method="POST")[0]["ID"]

        def jobs_done() -> list[tuple[int, str]]:
            rows = node.db.query("SELECT revision, state FROM jobs WHERE study_uid = ? ORDER BY id", (uid,))
            return [(row["revision"], row["state"]) for row in rows]

        wait_until(lambda: jobs_done() == [(1, "done")], timeout_s=60)
        quiet(orthanc)  # handed over once, on stable

        with caplog.at_level(logging.INFO, logger="fracnode.node"):
            alerts = click_analyze_in_explorer(orthanc, study)
            assert alerts == ["fracnode: the study is queued for analysis (fracnode is asked to analyse it again)"]
            wait_until(lambda: jobs_done() == [(1, "done"), (2, "done")], timeout_s=60)
            wait_until(lambda: len(associations_from_orthanc(node)) == 2, timeout_s=60)  # the hand-over itself
            wait_until(lambda: status(orthanc)["HandOvers"][0]["state"] == "sent", timeout_s=30)
        asked = [r for r in caplog.records if r.getMessage() == "analysis requested"]
        assert len(asked) == 1 and asked[0].fields["study_uid"] == uid  # type: ignore[attr-defined]
        assert asked[0].fields["queued"] is True  # type: ignore[attr-defined]
        log = (tmp_path / "orthanc" / "orthanc.log").read_text()
        assert f"fracnode: study {study}: study queued for a new analysis of its 1 spooled instance(s)" in log

        time.sleep(1.5)  # past the quiet period: the identical C-STORE that followed queued nothing more
        assert jobs_done() == [(1, "done"), (2, "done")]
        assert [h["reason"] for h in status(orthanc)["HandOvers"]] == ["forced", "stable"]

        # a study fracnode does not hold yet (a CT, outside `Modalities`): its API says 404, the
        # plugin says so and hands the study over all the same
        ct = dicomgen.write(dicomgen.ct_series(2), tmp_path / "ct")
        store_into_orthanc(orthanc, *ct)
        ct_uid = str(dcmread(ct[0]).StudyInstanceUID)
        ct_study = orthanc.rest("/tools/lookup", data=ct_uid.encode(), method="POST")[0]["ID"]
        answer = orthanc.rest(f"/fracnode/studies/{ct_study}/analyze", data=b"", method="POST")
        assert answer == {"Study": ct_study, "Queued": True, "AnalyzeAgain": True}
        wait_until(
            lambda: len(node.db.query("SELECT 1 FROM instances WHERE study_uid = ?", (ct_uid,))) == 2, timeout_s=60
        )
        log = (tmp_path / "orthanc" / "orthanc.log").read_text()
        assert f"fracnode: study {ct_study}: fracnode answered HTTP 404" in log
        assert "the study is sent as it is" in log


def test_filtered_studies_wait_for_the_button_and_interrupted_ones_are_caught_up(tmp_path, start_node):
    """A CR study Orthanc never saw stable is handed over after a restart; a CT study is outside
    `Modalities` until its Explorer button is clicked. fracnode's routes are empty: it only receives."""
    orthanc = plugin_orthanc(tmp_path / "orthanc", stable_age_s=3600)  # nothing becomes stable
    node = start_node(node_config(tmp_path / "data"))
    connect(orthanc, node)
    orthanc.start()
    try:
        wait_until(lambda: status(orthanc)["CaughtUp"])  # the plugin's first start sets its change cursor
        cr = dicomgen.write([dicomgen.cr_image()], tmp_path / "cr")
        store_into_orthanc(orthanc, *cr)
        orthanc.stop()  # before the study was stable: Orthanc will never call it stable
        orthanc.extra["StableAge"] = STABLE_AGE_S
        orthanc.start()
        cr_uid = str(dcmread(cr[0]).SOPInstanceUID)
        wait_until(lambda: node.db.query("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (cr_uid,)), timeout_s=60)
        assert status(orthanc)["HandOvers"][0]["reason"] == "catch-up"

        ct = dicomgen.write(dicomgen.ct_series(3), tmp_path / "ct")
        store_into_orthanc(orthanc, *ct)
        ct_study = orthanc.rest("/tools/lookup", data=str(dcmread(ct[0]).StudyInstanceUID).encode(), method="POST")[0][
            "ID"
        ]
        quiet(orthanc)
        decisions = [d for d in status(orthanc)["Decisions"] if d["Study"] == ct_study]
        assert decisions and decisions[0]["Instances"] == 0 and "Modalities" in decisions[0]["Decision"]
        assert not node.db.query("SELECT 1 FROM instances WHERE modality = 'CT'")

        assert click_analyze_in_explorer(orthanc, ct_study) == ["fracnode: the study is queued for analysis"]
        wait_until(lambda: len(node.db.query("SELECT 1 FROM instances WHERE modality = 'CT'")) == 3, timeout_s=60)
    finally:
        orthanc.stop()


def test_a_refused_hand_over_is_retried_then_reported(tmp_path):
    """No fracnode listens: the job fails, is retried MaxAttempts times, then marked failed."""
    orthanc = plugin_orthanc(tmp_path / "orthanc", MaxAttempts=2)
    orthanc.modalities = {"fracnode": ["FRACNODE", "127.0.0.1", free_port()]}  # nothing listens there
    with orthanc:
        store_into_orthanc(orthanc, *dicomgen.write([dicomgen.cr_image()], tmp_path / "cr"))
        wait_until(lambda: (status(orthanc)["HandOvers"] or [{}])[0].get("state") == "failed", timeout_s=90)
        handover = status(orthanc)["HandOvers"][0]
        assert handover["attempts"] == 2 and handover["error"]
        log = (tmp_path / "orthanc" / "orthanc.log").read_text()
        assert "failed after 2 attempt(s)" in log


def test_pull_mode_asks_fracnode_to_fetch_the_study_over_dicomweb(tmp_path, start_node):
    """Mode "pull": the plugin calls fracnode's API; fracnode retrieves the study by WADO-RS."""
    pytest.importorskip("node.web.pull", reason="fracnode's pull API (issue 4) is not in this tree")
    orthanc = plugin_orthanc(tmp_path / "orthanc", Mode="pull", Peer="orthanc-web", Token=API_TOKEN)
    orthanc.plugins.append(str(PLUGIN_DIR / "libOrthancDicomWeb.so"))
    node = start_node(
        node_config(
            tmp_path / "data",
            peers=[{"name": "orthanc-web", "type": "dicomweb", "url": f"{orthanc.url}/dicom-web"}],
        )
    )
    orthanc.extra["Fracnode"]["Url"] = f"http://127.0.0.1:{node.web.port}"
    with orthanc:
        wait_until(lambda: status(orthanc)["CaughtUp"])
        cr = dicomgen.write([dicomgen.cr_image()], tmp_path / "cr")
        store_into_orthanc(orthanc, *cr)
        uid = str(dcmread(cr[0]).SOPInstanceUID)
        wait_until(lambda: node.db.query("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (uid,)), timeout_s=60)
        handover = status(orthanc)["HandOvers"][0]
        assert (handover["mode"], handover["state"], handover["reason"]) == ("pull", "sent", "stable")
        quiet(orthanc)
        assert len(status(orthanc)["HandOvers"]) == 1
        assert not associations_from_orthanc(node)  # nothing came by C-STORE
