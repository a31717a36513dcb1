"""A second renderer of the SRs: DCMTK's dsr2html, the text view many PACS and tools derive theirs
from. What it prints must read as the finding: finding, category, probability, site, in words."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from node.pipelines.cspine.results import build_cspine_results
from node.pipelines.radiograph.results import build_results
from tests.support.findings import cr_fracture_study, dx_image, image_finding, saved, study_findings
from tests.unit.test_results_cspine import cspine_case

pytestmark = pytest.mark.skipif(
    shutil.which("dsr2html") is None, reason="needs DCMTK's dsr2html (Debian package dcmtk)"
)


def rendered(path: Path) -> str:
    """dsr2html's page as one line of text (tags dropped, whitespace collapsed)."""
    page = subprocess.run(["dsr2html", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert page.returncode == 0 and page.stderr == "", page.stderr
    text = html.unescape(re.sub(r"<[^>]+>", " ", page.stdout))
    return re.sub(r"\s+", " ", text)


def test_radiograph_sr_reads_as_finding_category_probability_and_site(tmp_path, cr_sample):
    source, findings = cr_fracture_study(cr_sample)
    (report,) = build_results(findings, {source.SOPInstanceUID: source})
    text = rendered(saved(report, tmp_path, "sr"))
    image = text[text.index("fracture finding, image 1"):text.index("fracture region 1, image 1")]
    for line in ("Finding: Fracture", "Finding Site = Lower limb", "Probability: 87.0 %",
                 "Fracture: Present", "Comment: AI: fracture likely, lower limb"):
        assert line in image, (line, image)
    region = text[text.index("fracture region 1, image 1"):]
    assert "Fracture region score: 0.93 {score}" in region
    assert "Probability" not in region.split("fracture region 2")[0]  # a score, not a probability


def test_negative_radiograph_without_a_site_says_so(tmp_path):
    source = dx_image()
    image = image_finding(source, "negative", 0.04, body_region="")
    (report,) = build_results(
        study_findings(image, study_uid=source.StudyInstanceUID), {source.SOPInstanceUID: source})
    text = rendered(saved(report, tmp_path, "sr"))
    for line in ("Finding: Fracture", "Probability: 4.0 %", "Fracture: Absent",
                 "Comment: AI: no fracture found, site not determined"):
        assert line in text, (line, text)
    assert "Finding Site" not in text


def test_cspine_sr_reads_per_vertebra(tmp_path):
    ct, labels, findings = cspine_case()
    _, report = build_cspine_results(findings, ct, labels)
    text = rendered(saved(report, tmp_path, "sr"))
    for line in ("Finding Site = Cervical spine", "Probability: 83.0 %", "Fracture: Present",
                 "Comment: AI: fracture likely, cervical spine",
                 "Finding Site = C3 vertebra", "Comment: AI: fracture likely, C3 vertebra",
                 "Comment: AI: no fracture found, C2 vertebra",
                 "Comment: AI: possible fracture, C5 vertebra", "Fracture: Suspected"):
        assert line in text, (line, text[:3000])
