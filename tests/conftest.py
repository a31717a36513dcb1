"""Shared fixtures: a configured node started in this process, a real Orthanc, DICOM files."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.config import Config
from node.service import Node
from node.store import open_database
from tests.support import postgres as postgres_support
from tests.support.dcmtk import put_dcmtk_first
from tests.support.orthanc import Orthanc

put_dcmtk_first()  # DCMTK's storescu/echoscu/findscu, not pynetdicom's console scripts

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CR_SAMPLES = SHARED_DATA / "dicom_cr_samples"
API_TOKEN = "test-token-0123456789abcdef"  # web.auth.tokens of every test node


def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {predicate}")
        time.sleep(interval_s)


def node_config(data_dir: Path, **sections: Any) -> Config:
    """A test configuration: loopback, any free port, fast completion and retries."""
    raw: dict[str, Any] = {
        "node": {"ae_title": "FRACNODE", "bind": "127.0.0.1", "port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_mb": 0},
        "assembly": {"quiet_period_s": 0.5},
        "jobs": {"retry": {"initial_s": 0.2, "factor": 2.0, "max_s": 1.0}},
        "dispatch": {"retry": {"initial_s": 0.2, "factor": 2.0, "max_s": 1.0}},
        "logging": {"level": "DEBUG", "format": "json"},
        "web": {"bind": "127.0.0.1", "port": 0, "auth": {"tokens": [API_TOKEN]}},
        "destinations": [{"name": "results-folder", "type": "folder", "path": str(data_dir / "results")}],
        "routes": [],
        "pipeline_modules": ["tests.support.pipelines"],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return Config.model_validate(raw)


@pytest.fixture
def start_node() -> Iterator[Callable[[Config], Node]]:
    started: list[Node] = []

    def start(config: Config) -> Node:
        node = Node(config)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", modalities={"fracnode": ["FRACNODE", "127.0.0.1", 11112]})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cr_sample() -> Path:
    path = CR_SAMPLES / "RG3_J2KR.dcm"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests read ../shared/data beside the repository")
    return path


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make test` installs the Debian packages it needs")
    return path


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres_support.Cluster]:
    """One PostgreSQL 15 cluster for the session (initdb in /tmp, a loopback port); PGPASSFILE
    points at its passfile, so the node finds the password the way a deployment does."""
    why = postgres_support.available()
    if why:
        pytest.fail(why)  # not a skip: `make test` installs postgresql-15
    cluster = postgres_support.Cluster().create()
    before = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(cluster.passfile)
    yield cluster
    if before is None:
        os.environ.pop("PGPASSFILE", None)
    else:
        os.environ["PGPASSFILE"] = before
    cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster: postgres_support.Cluster) -> str:
    """The cluster's database emptied for this test (its tables dropped): `storage.database`."""
    postgres_cluster.start_if_stopped()
    postgres_cluster.empty()
    return postgres_cluster.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """The `storage` settings of each backend in turn, for `node_config(..., storage=database)`:
    none (the SQLite file), then the session cluster's emptied database, upgraded as
    `fracnode db upgrade` would before a node starts on it."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("postgres_url")
    open_database(url, upgrade=True).close()
    return {"database": url}
