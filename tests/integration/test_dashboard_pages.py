"""Every page of the dashboard, as a person reads it, in a real headless Chromium at 1280 and 800
pixels wide: the visible text has the values expected and no "[object", "undefined" or "NaN", no
table is wider than the page, and what an operator does there works (search, filters, download,
re-analyse). Screenshots go to $FRACNODE_SCREENSHOTS (or the test's folder) to be looked at."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import API_TOKEN, node_config, wait_until
from tests.integration.test_api import api, route
from tests.integration.test_dashboard import browser, web  # noqa: F401 - the fixture
from tests.integration.test_flow import storescu
from tests.support import dicomgen

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium (Debian package chromium)"
)
TIMEOUT_MS = 30_000
BROKEN = "/proc/fracnode-cannot-write-here"  # not writable, even by root
NEVER_SHOWN = re.compile(r"\[object|undefined|NaN")


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FRACNODE_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read(page, name: str, folder: Path) -> str:  # type: ignore[no-untyped-def]
    """The page's visible text, checked for what must never be shown; a screenshot of it, and no
    element wider than the window at 800 px."""
    page.wait_for_timeout(300)
    text = page.inner_text("body")
    assert not NEVER_SHOWN.search(text), f"{name}: {NEVER_SHOWN.search(text)!r} in\n{text}"
    assert dicomgen.PATIENT_ID not in text and "Sentinel" not in text and dicomgen.ACCESSION_NUMBER not in text
    width = page.viewport_size["width"]
    page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= width, f"{name} at {width} px: the page is {overflow} px wide"
    tables = page.evaluate("""() => [...document.querySelectorAll('table')].map(t =>
        [t.id || t.className, t.getBoundingClientRect().right])""")
    for table, right in tables:
        assert right <= width + 1, f"{name} at {width} px: table {table} ends at {right} px"
    return text


def test_every_page_reads_right_at_1280_and_800_pixels(tmp_path, start_node, browser):  # noqa: F811
    from playwright.sync_api import expect

    node = start_node(
        node_config(
            tmp_path / "data",
            destinations=[
                {"name": "results-folder", "type": "folder", "path": str(tmp_path / "data" / "results")},
                {"name": "archive", "type": "folder", "path": BROKEN},
            ],
            routes=[route("test-regions"), route("test-vertebrae", "results-folder", "archive", modality="CT")],
        )
    )
    cr = dicomgen.cr_image(size=300)
    ct = dicomgen.ct_series(24, size=64)
    assert storescu(node.ingest.port, dicomgen.write([cr], tmp_path / "cr")).returncode == 0
    assert storescu(node.ingest.port, dicomgen.write(ct, tmp_path / "ct")).returncode == 0
    wait_until(lambda: any(d["in_trouble"] for d in api(node, "/api/v1/destinations").json()), timeout_s=60)
    wait_until(lambda: len(api(node, "/api/v1/jobs", params={"state": "done"}).json()) == 2, timeout_s=60)
    folder = shots(tmp_path)

    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(web(node) + "/")
    page.fill("#token", API_TOKEN)
    page.click("#token-form button")

    # Overview: the notice, models with their measured numbers, disk, the destination in trouble
    expect(page.locator("#models")).to_contain_text("test-vertebrae", timeout=TIMEOUT_MS)
    text = read(page, "overview", folder)
    assert "not for diagnostic use" in text
    assert re.search(r"Used\s+[\d.]+ (KB|MB|GB|TB) of [\d.]+ (GB|TB) \(\d+ %\)", text), text
    assert "2 job(s) finished" in text
    trouble = page.locator("#trouble tr[data-destination=archive]")
    expect(trouble).to_contain_text("in trouble")
    expect(trouble).to_contain_text(BROKEN)
    expect(page.locator("#trouble-banner")).to_contain_text("Destination archive")

    # Studies: results column, the accession number matched but never shown
    page.click("#nav a[data-view=studies]")
    expect(page.locator("#studies tbody tr")).to_have_count(2, timeout=TIMEOUT_MS)
    text = read(page, "studies", folder)
    cr_row = page.locator(f"#studies tr[data-study='{cr.StudyInstanceUID}']")
    expect(cr_row.locator("td.result")).to_contain_text("fracture")
    expect(cr_row.locator("td.result")).to_contain_text("1 image(s): fracture")
    page.select_option("#filter-pipeline", "test-vertebrae")
    expect(page.locator("#studies tbody tr")).to_have_count(1)
    expect(page.locator(f"#studies tr[data-study='{ct[0].StudyInstanceUID}']")).to_have_count(1)
    page.select_option("#filter-pipeline", "")
    page.fill("#search", dicomgen.ACCESSION_NUMBER)
    page.click("form.search button[type=submit]")
    expect(page.locator("#studies tbody tr")).to_have_count(2)
    page.fill("#search", "no-such-accession")
    page.click("form.search button[type=submit]")
    expect(page.locator("#studies")).to_contain_text("No study matches the search.")
    page.fill("#search", cr.StudyInstanceUID)
    page.click("form.search button[type=submit]")
    expect(page.locator("#studies tbody tr")).to_have_count(1)
    assert dicomgen.ACCESSION_NUMBER not in page.content()
    assert dicomgen.ACCESSION_NUMBER not in page.url
    page.click("form.search button[type=button]")

    # Jobs: results column and the category filter
    page.click("#nav a[data-view=jobs]")
    expect(page.locator("#jobs tbody tr[data-state=done]")).to_have_count(2, timeout=TIMEOUT_MS)
    read(page, "jobs", folder)
    page.select_option("#filter-category", "fracture")
    expect(page.locator("#jobs tbody tr")).to_have_count(2)
    page.select_option("#filter-category", "negative")
    expect(page.locator("#jobs")).to_contain_text("No jobs match.")
    page.select_option("#filter-category", "")

    # The CR study: facts (no [object ...]), findings, preview, download of the result object
    page.goto(web(node) + f"/#/study/{cr.StudyInstanceUID}")
    card = page.locator(".card.job")
    expect(card).to_contain_text("Pipelinetest-regions", timeout=TIMEOUT_MS)
    text = read(page, "study-cr", folder)
    for expected in (
        "Routetest-regions-route",
        "Statedone",
        "Attempts1/3",
        "Summary1 image(s): fracture",
        "results-folder: 1/1 delivered",
        "Failure—",
    ):
        assert expected in text.replace("\n", "").replace("\t", ""), (expected, text)
    assert re.search(r"assembly \d+ ms · queue \d+ ms · pipeline \d+ ms", text), text
    expect(page.locator("img.preview")).to_have_count(1)
    with page.expect_download() as downloaded:
        card.locator("button.download").first.click()
    assert re.fullmatch(r"KO_990_[\d.]+\.dcm", downloaded.value.suggested_filename)

    # Re-analyse: a new revision and job from the spooled copy
    page.click("#analyze-again")
    expect(page.locator("#analyze-note")).to_contain_text("queued for a new analysis")
    expect(page.locator(".card.job")).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator(".card.job").first).to_contain_text("revision 2")

    # The CT study: per-vertebra findings and the sagittal preview
    page.goto(web(node) + f"/#/study/{ct[0].StudyInstanceUID}")
    vertebrae = page.locator("table.vertebrae")
    expect(vertebrae).to_contain_text("C1", timeout=TIMEOUT_MS)
    text = read(page, "study-ct", folder)
    assert "No image findings recorded" not in text
    for expected in ("C1", "C2", "C3", "0.800", "suspicious", "archive: 0/1 delivered, 1 pending"):
        assert expected in text, (expected, text)
    preview = page.locator("img.preview")
    expect(preview).to_have_count(1)
    expect(preview).to_have_js_property("complete", True)
    assert preview.evaluate("img => img.naturalWidth") > 0

    # Peers & destinations, audit trail, configuration
    page.click("#nav a[data-view=peers]")
    expect(page.locator("#destinations tr[data-destination=archive]")).to_contain_text("in trouble", timeout=TIMEOUT_MS)
    read(page, "peers", folder)
    page.click("#nav a[data-view=audit]")
    # the node's ATNA trail: start, two associations (login, logout, instances), deliveries, the re-analysis
    expect(page.locator("#audit")).to_contain_text("Use of Restricted Function", timeout=TIMEOUT_MS)
    text = read(page, "audit", folder)
    for expected in (
        "Application Activity: Application Start",
        "User Authentication: Login",
        "User Authentication: Logout",
        f"{cr.StudyInstanceUID}: 1 instances stored",
        f"{ct[0].StudyInstanceUID}: 24 instances stored",
        "to results-folder",
        f"POST /api/v1/studies/{cr.StudyInstanceUID}/analyze again from its copy",
        "STORESCU",
    ):
        assert expected in text, (expected, text)
    page.click("#nav a[data-view=config]")
    expect(page.locator("#config")).to_contain_text('"ae_title": "FRACNODE"')
    read(page, "config", folder)

    # the same pages at 800 px: nothing wider than the window
    page.set_viewport_size({"width": 800, "height": 900})
    for view in (
        "overview",
        "studies",
        "jobs",
        f"study/{cr.StudyInstanceUID}",
        f"study/{ct[0].StudyInstanceUID}",
        "peers",
        "audit",
    ):
        page.goto(web(node) + f"/#/{view}")
        page.wait_for_timeout(1200)
        read(page, view.split("/")[0] + ("-ct" if ct[0].StudyInstanceUID in view else ""), folder)
    context.close()
