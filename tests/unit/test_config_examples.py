"""Every example configuration in config/examples/ parses and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import load

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} >= {"orthanc.yaml", "restricted.yaml"}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_parses(path: Path) -> None:
    config = load(path, environ={})  # pipelines named by routes need not be installed
    assert config.routes, f"{path.name} shows no route"


def test_orthanc_example_sends_results_back_to_orthanc() -> None:
    config = load(EXAMPLES / "orthanc.yaml", environ={})
    assert config.peer_by_ae_title("ORTHANC") is not None
    assert {d.type for d in config.destinations} == {"dimse", "sender", "folder"}
    assert {r.pipeline for r in config.routes} == {"radiograph-fracture", "cspine-fracture"}


def test_restricted_example_limits_callers_and_completes_on_release() -> None:
    config = load(EXAMPLES / "restricted.yaml", environ={})
    assert config.node.calling_ae_titles
    assert config.assembly.complete_on_release
    assert 0 < config.storage.retention_days < 7


def test_dicomweb_example_sends_by_stow_rs_and_names_pull_sources() -> None:
    from node.config import DicomwebPeer, DimsePeer

    config = load(EXAMPLES / "dicomweb.yaml", environ={})
    web = config.peer("orthanc-web")
    assert isinstance(web, DicomwebPeer) and web.url.endswith("/dicom-web")
    assert config.destination("pacs-web").type == "dicomweb"
    legacy = config.peer("legacy-pacs")
    assert isinstance(legacy, DimsePeer) and legacy.retrieve == "c-move"
