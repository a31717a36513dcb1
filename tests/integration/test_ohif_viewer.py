"""fracnode's results in OHIF 3.13, the reference web viewer, driven in headless Debian chromium.

The viewer (npm `@ohif/app`, pinned in tests.support.ohif, installed once into `.cache/`) reads a
real Orthanc through its DICOMweb plugin on the same origin. The studies hold what the default
configuration sends, built by the result builders from fixed findings (no model runs, so nothing
here depends on what today's model would say about these images):

- a positive CR (the real tibia sample, "fracture likely", two regions), SR only;
- a positive FracAtlas hand (the annotators' fracture polygon as the region, "possible
  fracture"), SR only;
- a negative FracAtlas leg whose site was not determined, SR only;
- the cervical-spine phantom CT with its vertebra SEG and SR.

For each, the SR (and the CT's SEG) is opened as a user would (double-click in the study browser)
and the test asserts: no error boundary, no uncaught TypeError, an image in the viewport (not
black), the SR outlines drawn as annotations with the label a radiologist reads, the CT SR on the
deciding vertebra's slice, the CT SEG's segments loaded. Screenshots go to
`.cache/artefacts/ohif/` (or `$FRACNODE_TEST_ARTEFACTS/ohif/`).
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset

from node.pipelines.cspine import CSpineFindings, VertebraFinding
from node.pipelines.cspine.results import build_cspine_results
from node.pipelines.radiograph.results import build_results
from node.records import Algorithm
from tests.support.findings import cr_fracture_study, fracatlas_study, saved
from tests.support.ohif import REPO, ViewerServer, ohif_dist
from tests.support.orthanc import Orthanc
from training.phantom.generate import PhantomSpec, generate_study

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() or shutil.which("npm") is None,
        reason="needs /usr/bin/chromium and npm; scripts/install-system-deps installs both",
    ),
]
TIMEOUT_MS = 60_000
SCREEN = {"width": 1920, "height": 1080}  # a reading-room screen; the labels sit beside the image
CT_THRESHOLDS = (("fracture", 0.6), ("suspicious", 0.25))
TRACKING_QUESTION = "Do you want to continue tracking measurements for this study?"


@dataclass(frozen=True)
class Case:
    name: str
    study_uid: str
    files: tuple[Path, ...]
    sr: str  # series description of the SR
    labels: tuple[str, ...]  # text lines OHIF must draw next to the outlines
    outlines: int  # polylines drawn on the first image the SR shows


def artefacts() -> Path:
    root = Path(os.environ.get("FRACNODE_TEST_ARTEFACTS") or REPO / ".cache" / "artefacts")
    folder = root / "ohif"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def radiograph_case(
    name: str, folder: Path, source: Dataset, findings: Any, image_label: tuple[str, str]
) -> Case:
    """The objects the default configuration sends for a radiograph study: its SR, no SEG."""
    assert [ds.Modality for ds in build_results(findings, {source.SOPInstanceUID: source})] == ["SR"]
    (report,) = build_results(findings, {source.SOPInstanceUID: source})
    files = (saved(source, folder, f"{name}-image"), saved(report, folder, f"{name}-sr"))
    regions = tuple(
        f"Fracture region score: {r.probability:.2f} {{score}}" for r in findings.images[0].regions
    )
    return Case(name, str(source.StudyInstanceUID), files, "AI fracture report",
                (*image_label, *regions), 1 + len(regions))


def ct_case(folder: Path) -> Case:
    """The phantom's C-spine CT with fixed per-vertebra findings: C2 fractured, the rest not."""
    study = generate_study(7, PhantomSpec(size=128, slices=80, fractures=(False, True) + (False,) * 5))
    datasets = list(study.datasets)
    present = [label for label in range(1, 8) if (study.labels == label).any()]
    probabilities = {label: (0.91 if label == 2 else 0.05) for label in present}

    def centre(label: int) -> tuple[float, float, float]:
        k, j, i = (float(a.mean()) for a in np.nonzero(study.labels == label))
        first = datasets[round(k)]
        row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
        x0, y0, z = (float(v) for v in first.ImagePositionPatient)
        return x0 + i * column_spacing, y0 + j * row_spacing, z

    findings = CSpineFindings(
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=study.series_instance_uid,
        frame_of_reference_uid=str(datasets[0].FrameOfReferenceUID),
        segmentation_algorithm=Algorithm("cspine_vertebrae", "0.3.0", "a1" * 32),
        fracture_algorithm=Algorithm("cspine_fracture", "0.4.1", "b2" * 32),
        fracture_probability=0.91,
        category="fracture",
        vertebrae=tuple(
            VertebraFinding(label, p, "fracture" if p >= 0.6 else "negative", centre(label),
                            int((study.labels == label).sum()))
            for label, p in probabilities.items()
        ),
        thresholds=CT_THRESHOLDS,
    )
    seg, report = build_cspine_results(findings, datasets, study.labels)
    files = tuple(saved(ds, folder / "ct", f"{i:03d}") for i, ds in enumerate(datasets))
    files += (saved(seg, folder, "ct-seg"), saved(report, folder, "ct-sr"))
    labels = ("AI: fracture likely, cervical spine:", "AI: fracture likely, C2 vertebra:",
              "Probability: 91.00 %")
    return Case("ct", study.study_instance_uid, files, "AI cervical spine fracture report", labels, 1)


@pytest.fixture(scope="module")
def cases(tmp_path_factory, cr_sample) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("viewer-studies")
    source, findings = cr_fracture_study(cr_sample)  # "fracture", 0.87, two regions, lower limb
    cr = radiograph_case("cr", folder, source, findings,
                         ("AI: fracture likely, lower limb:", "Probability: 87.00 %"))
    source, findings = fracatlas_study("IMG0000019.jpg", "suspicious", 0.31, 0.64, "hand")
    fracatlas = radiograph_case(
        "fracatlas", folder, source, findings,
        ("AI: possible fracture, hand:", "Probability: 31.00 %"))
    source, findings = fracatlas_study("IMG0000000.jpg", "negative", 0.04, 0.0, "")
    negative = radiograph_case(
        "negative", folder, source, findings,
        ("AI: no fracture found, site not determined:",
         "Probability: 4.00 %"))
    return {"cr": cr, "fracatlas": fracatlas, "negative": negative, "ct": ct_case(folder)}


@pytest.fixture(scope="module")
def viewer(tmp_path_factory, cases) -> Iterator[ViewerServer]:
    dist = ohif_dist()
    with Orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as orthanc:
        for case in cases.values():
            for path in case.files:
                orthanc.rest("/instances", path.read_bytes(), "POST")
        with ViewerServer(dist, orthanc.http_port) as server:
            yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield launched
        launched.close()


class Session:
    """One study open in OHIF, with every page error and console error it produced."""

    def __init__(self, browser: Any, viewer: ViewerServer, case: Case) -> None:
        self.case = case
        self.page = browser.new_page(viewport=SCREEN)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("console", self._console)
        # the first-visit tour would cover the viewport
        self.page.add_init_script("localStorage.setItem('shownTours', '[\"basicViewerTour\"]')")
        self.page.goto(viewer.viewer_url(case.study_uid))
        self.viewport = self.page.locator("[data-cy=viewport-pane]").first
        self.page.locator("[data-cy=viewport-pane] canvas").first.wait_for(timeout=TIMEOUT_MS)
        # as a user would: open the results once the study's first image is on screen (OHIF
        # mis-places annotations of a display set opened while its image still loads)
        self.wait_for_image()

    def wait_for_image(self) -> Image.Image:
        for _ in range(TIMEOUT_MS // 500):
            picture = Image.open(BytesIO(self.viewport.screenshot())).convert("L")
            if shows_an_image(picture):
                return picture
            self.page.wait_for_timeout(500)
        raise AssertionError(f"{self.case.name}: the viewport stayed black")

    def _console(self, message: Any) -> None:
        if message.type == "error" or "TypeError" in message.text:
            self.errors.append(f"console {message.type}: {message.text[:500]}")

    def open_series(self, description: str) -> None:
        self.page.get_by_text(description).first.dblclick()

    def answer(self, question: str, answer: str) -> None:
        """Answer one of OHIF's viewport prompts ("track measurements?", "open segmentation?")."""
        prompt = self.page.get_by_text(question).first
        prompt.wait_for(timeout=TIMEOUT_MS)
        box = self.page.locator("div", has=prompt).filter(
            has=self.page.get_by_role("button", name=answer, exact=True)).last
        box.get_by_role("button", name=answer, exact=True).click()

    def labels(self) -> list[str]:
        """The text lines drawn over the image (SVG <tspan>s of the annotations' text boxes)."""
        lines = self.viewport.locator("svg text tspan").all_text_contents()
        return [line.strip() for line in lines if line.strip()]

    def wait_for_label(self, text: str) -> None:
        self.viewport.locator("svg tspan", has_text=text).first.wait_for(timeout=TIMEOUT_MS)

    def screenshot(self, step: str) -> None:
        self.page.screenshot(path=str(artefacts() / f"{self.case.name}-{step}.png"))

    def assert_healthy(self) -> None:
        assert not self.page.get_by_text("Something went wrong").count(), "OHIF's error boundary"
        crashes = [e for e in self.errors if "TypeError" in e or e.startswith("uncaught")]
        assert crashes == [], crashes

    def assert_report_drawn(self) -> list[str]:
        """The SR on screen: no crash, an image, every expected label line; returns the lines."""
        self.wait_for_image()
        self.page.wait_for_timeout(1000)  # let every annotation of the image render
        self.screenshot("sr")
        self.assert_healthy()
        labels = self.labels()
        for line in self.case.labels:
            assert line in labels, (line, labels)
        return labels

    def close(self) -> None:
        self.screenshot("last")  # what the page showed at the end, passed or failed
        self.page.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shows_an_image(picture: Image.Image) -> bool:
    """Not a black viewport: a good part of it lit, with contrast."""
    pixels = np.asarray(picture, dtype=np.float64)
    return bool((pixels > 40).mean() > 0.1 and pixels.std() > 20)


def inside(element: Any, container: Any) -> bool:
    box, frame = element.bounding_box(), container.bounding_box()
    return bool(box and frame and box["x"] >= frame["x"] and box["y"] >= frame["y"]
                and box["x"] + box["width"] <= frame["x"] + frame["width"]
                and box["y"] + box["height"] <= frame["y"] + frame["height"])


def open_report(browser: Any, viewer: ViewerServer, case: Case) -> Session:
    """Open the case's SR; decline OHIF's offer to track its measurements if it makes one."""
    session = Session(browser, viewer, case)
    session.open_series(case.sr)
    label = session.viewport.locator("svg tspan", has_text=case.labels[0]).first
    for tick in range(TIMEOUT_MS // 250):
        if session.page.get_by_text(TRACKING_QUESTION).count():
            session.answer(TRACKING_QUESTION, "No")
        if label.count():
            return session
        if tick % 20 == 19:
            # OHIF 3.13 at times shows the SR's image but leaves its annotations undrawn until the
            # next render (about 1 opening in 10 here, radiograph and CT alike, with the same SR
            # that draws at once otherwise); a resized window renders again, as for a reader.
            warnings.warn(f"{case.name}: OHIF had not drawn the SR after {tick // 4} s; "
                          "resizing the window to render again", stacklevel=1)
            size = dict(SCREEN)
            session.page.set_viewport_size({**size, "width": size["width"] - 1 - tick % 2})
            session.page.set_viewport_size(size)
        session.page.wait_for_timeout(250)
    session.close()
    raise AssertionError(f"{case.name}: no label {case.labels[0]!r} within {TIMEOUT_MS} ms")


@pytest.mark.parametrize("name", ["cr", "fracatlas", "negative"])
def test_radiograph_sr_draws_its_outlines_with_the_finding_in_words(browser, viewer, cases, name):
    case = cases[name]
    with open_report(browser, viewer, case) as session:
        session.assert_report_drawn()
        # the frame around the image (the image finding) and one outline per region
        assert session.viewport.locator("svg polyline").count() == case.outlines
        # the image finding's label is on screen, not cut off at the viewport's edge
        label = session.viewport.locator("svg tspan", has_text=case.labels[0]).first
        assert inside(label, session.viewport)
        # the default configuration sends no radiograph SEG (OHIF 3.13 cannot display one)
        assert session.page.get_by_text("AI fracture region map").count() == 0
        assert "SEG" not in session.page.locator("[data-cy=studyBrowser-panel]").inner_text()


def test_ct_sr_opens_on_the_fractured_vertebra_and_marks_it(browser, viewer, cases):
    case = cases["ct"]
    with open_report(browser, viewer, case) as session:
        session.wait_for_label("C2 vertebra")
        labels = session.assert_report_drawn()
        # the viewer jumped to C2's slice: the vertebra's outline is drawn there, and the other
        # vertebrae (on other slices) are not
        assert session.viewport.locator("svg polyline").count() >= 1
        assert not [line for line in labels if re.search(r"C[13-7] vertebra", line)], labels
        # the viewport's measurement arrows step to the next vertebra, drawn on its own slice
        slice_shown = session.page.locator("[data-cy=viewport-overlay-bottom-right]").first
        on_c2 = slice_shown.inner_text()
        session.page.locator("[data-cy=viewport-action-arrows-right]").first.click()
        session.wait_for_label("AI: no fracture found, C1 vertebra:")
        assert slice_shown.inner_text() != on_c2
        assert "Probability: 5.00 %" in session.labels()
        session.screenshot("sr-next")


def test_ct_seg_shows_the_vertebrae(browser, viewer, cases):
    case = cases["ct"]
    with Session(browser, viewer, case) as session:
        session.open_series("AI cervical vertebrae segmentation")
        session.answer("Do you want to open this Segmentation?", "Yes")
        session.page.locator("[data-cy=panelSegmentation-btn]").click()  # the segment list
        session.page.get_by_text("C2 vertebra").first.wait_for(timeout=TIMEOUT_MS)
        session.wait_for_image()
        session.page.wait_for_timeout(2000)
        session.screenshot("seg")
        session.assert_healthy()
        panel = session.page.locator("body").inner_text()
        assert all(f"C{i} vertebra" in panel for i in range(1, 8)), panel[-2000:]
        colour = np.asarray(Image.open(BytesIO(session.viewport.screenshot())).convert("RGB"), float)
        red, green, blue = colour[..., 0], colour[..., 1], colour[..., 2]
        tinted = (np.abs(red - green) > 40) | (np.abs(green - blue) > 40)  # segments are coloured
        assert tinted.mean() > 0.001, "no segment drawn over the CT"
