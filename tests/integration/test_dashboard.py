"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against a
running node: sign in, watch a job appear after a storescu send, open its result, retry a failure."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import API_TOKEN, node_config
from tests.integration.test_api import route
from tests.integration.test_flow import storescu
from tests.support import dicomgen
from tests.support.orthanc import free_port
from tests.support.pipelines import FLAKY_FAILURES

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("storescu") is None,
    reason="needs /usr/bin/chromium (Debian package chromium) and DCMTK; scripts/install-system-deps installs both",
)
USER, PASSWORD = "operator", "dashboard-password"
TIMEOUT_MS = 30_000


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        yield launched
        launched.close()


def web(node) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{node.web.port}"


def test_a_sent_study_appears_as_a_job_and_its_result_opens(tmp_path, start_node, browser):
    from playwright.sync_api import expect

    node = start_node(
        node_config(
            tmp_path / "data",
            routes=[route("test-regions")],
            web={"auth": {"users": [{"name": USER, "password": PASSWORD}]}},
        )
    )
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})  # type: ignore[attr-defined]
    page = context.new_page()
    assert page.goto(web(node) + "/#/jobs").status == 200
    expect(page.locator("#who")).to_contain_text(USER)
    expect(page.locator("#jobs")).to_contain_text("No jobs match.")

    cr = dicomgen.cr_image(size=400)
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0
    row = page.locator("#jobs tbody tr[data-state=done]")
    expect(row).to_have_count(1, timeout=TIMEOUT_MS)  # the table refreshes itself every 2 s
    expect(row).to_contain_text("test-regions-route")
    expect(row).to_contain_text("results-folder: 1/1 delivered", timeout=TIMEOUT_MS)

    row.get_by_role("link", name="Open").click()
    study = page.locator("#study")
    expect(study).to_contain_text(cr.StudyInstanceUID)
    expect(page.locator("#routes")).to_have_text("test-regions-route")
    expect(page.locator("table.findings")).to_contain_text("fracture")
    expect(page.locator("table.findings")).to_contain_text("0.900")
    preview = page.locator("img.preview")
    expect(preview).to_have_count(1)
    expect(preview).to_have_js_property("complete", True)
    assert preview.evaluate("img => img.naturalWidth") == 400  # the PNG decoded in the browser
    assert dicomgen.PATIENT_ID not in page.content() and "Sentinel" not in page.content()
    context.close()


def test_a_failed_job_is_retried_from_the_dashboard_after_a_token_sign_in(tmp_path, start_node, browser):
    from playwright.sync_api import expect

    FLAKY_FAILURES["remaining"] = 1
    node = start_node(node_config(tmp_path / "data", routes=[route("test-flaky")], jobs={"max_attempts": 1}))
    page = browser.new_page()  # type: ignore[attr-defined]
    refused = page.goto(web(node) + "/#/jobs")
    assert refused.status == 401  # without credentials the page is the sign-in form, with the 401
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#refusal")).to_contain_text("The node refused access: authentication required")

    page.fill("#token", "not-the-right-token-at-all")
    page.click("#token-form button")
    expect(page.locator("#refusal")).to_contain_text("authentication required")
    page.fill("#token", API_TOKEN)
    page.click("#token-form button")
    expect(page.locator("#sign-in")).to_be_hidden()
    expect(page.locator("#jobs")).to_be_visible()

    cr = dicomgen.cr_image()
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "in")).returncode == 0
    failed = page.locator("#jobs tbody tr[data-state=failed]")
    expect(failed).to_have_count(1, timeout=TIMEOUT_MS)
    expect(failed).to_contain_text("RuntimeError: simulated model failure")
    expect(failed.locator(".attempts")).to_have_text("1/1")
    job_id = failed.get_attribute("data-job-id")

    failed.get_by_role("button", name="Retry").click()
    done = page.locator(f"#jobs tbody tr[data-job-id='{job_id}'][data-state=done]")
    expect(done).to_have_count(1, timeout=TIMEOUT_MS)
    expect(done.get_by_role("button", name="Retry")).to_have_count(0)
    expect(done).to_contain_text("1 instance(s) selected")

    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()


def test_peers_echo_and_the_configuration_view(tmp_path, start_node, browser):
    from playwright.sync_api import expect

    closed = free_port()
    node = start_node(
        node_config(
            tmp_path / "data",
            peers=[{"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": closed}],
            web={"auth": {"users": [{"name": USER, "password": PASSWORD}]}},
        )
    )
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(web(node) + "/#/peers")
    peer = page.locator("#peers tr[data-peer=gone]")
    expect(peer).to_contain_text(f"GONE@127.0.0.1:{closed}")
    peer.get_by_role("button", name="Echo").click()
    expect(peer.locator(".echo-result")).to_contain_text("unreachable", timeout=TIMEOUT_MS)
    expect(peer.locator(".echo-result")).to_contain_text("is it running and reachable?")
    expect(page.locator("#destinations")).to_contain_text("results-folder")

    page.click("#nav a[data-view=config]")
    config = page.locator("#config")
    expect(config).to_contain_text('"ae_title": "FRACNODE"')
    expect(config).to_contain_text('"password": "***"')
    assert PASSWORD not in page.content()
    context.close()
