"""The `fracnode` command as operators run it: a separate process, real sockets, real files."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import REPO, wait_until
from tests.support import dicomgen
from tests.support.orthanc import free_port

FRACNODE = Path(sys.executable).with_name("fracnode")
LISTENING = re.compile(r"listening as FRACNODE on 127\.0\.0\.1:(\d+)")


def cli_env() -> dict[str, str]:
    # the developer's FRACNODE_* settings must not leak in; tests.support must be importable
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACNODE_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def fracnode(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [str(FRACNODE)] if FRACNODE.exists() else [sys.executable, "-m", "node.cli"]
    return subprocess.run(
        [*command, *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=cli_env(),
    )


def write_config(path: Path, data_dir: Path, port: int, **sections: object) -> Path:
    config = {
        "node": {"ae_title": "FRACNODE", "bind": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(data_dir), "min_free_mb": 0},
        "assembly": {"quiet_period_s": 0.5},
        "destinations": [{"name": "results-folder", "type": "folder", "path": str(data_dir / "results")}],
        "routes": [
            {
                "name": "all-ct",
                "match": {"modality": ["CT"]},
                "pipeline": "test-kos",
                "destinations": ["results-folder"],
            }
        ],
        "pipeline_modules": ["tests.support.pipelines"],
        **sections,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class ServedNode:
    process: subprocess.Popen[str]
    port: int
    data_dir: Path
    client_config: Path  # the same data_dir, plus the node itself as peer "fracnode"
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedNode]:
    """`fracnode serve` as a subprocess on a free port (port 0 in the configuration)."""
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "node.yaml", data_dir, 0)
    log = tmp_path / "serve.log"
    command = [str(FRACNODE)] if FRACNODE.exists() else [sys.executable, "-m", "node.cli"]
    with log.open("w") as stream:
        process = subprocess.Popen(
            [*command, "-c", str(config), "serve"],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=cli_env(),
        )

    def port() -> int | None:
        if process.poll() is not None:
            raise AssertionError(f"fracnode serve exited with {process.returncode}:\n{log.read_text()}")
        found = LISTENING.search(log.read_text())
        return int(found[1]) if found else None

    try:
        listening = wait_until(port, timeout_s=30)
        client = write_config(
            tmp_path / "client.yaml",
            data_dir,
            0,
            peers=[{"name": "fracnode", "ae_title": "FRACNODE", "host": "127.0.0.1", "port": listening}],
        )
        node = ServedNode(process, listening, data_dir, client, log)
        yield node
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- config check ---------------------------------------------------------------------------------


def test_config_check_accepts_a_good_file(tmp_path):
    config = write_config(tmp_path / "good.yaml", tmp_path / "data", 11112)
    result = fracnode("config", "check", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"configuration {re.escape(str(config))}: OK\b", result.stdout)
    assert "1 route(s)" in result.stdout


def test_config_check_reports_every_error_with_its_yaml_path_and_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "node:\n"
        "  port: 99999\n"
        "  ae_title: THIS-AE-TITLE-IS-TOO-LONG\n"
        "storage:\n"
        "  dat_dir: /tmp/typo\n"
        "destinations:\n"
        "  - name: pacs\n"
        "    type: ftp\n"
    )
    result = fracnode("config", "check", config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "4 problem(s)" in result.stdout
    for where in (
        "node.port (line 2)",
        "node.ae_title (line 3)",
        "storage.dat_dir (line 5)",
        "destinations[0] (line 7)",
    ):
        assert where in result.stdout, f"{where!r} missing from:\n{result.stdout}"
    assert "unknown setting 'dat_dir'" in result.stdout


def test_config_check_reports_unknown_pipelines(tmp_path):
    config = write_config(
        tmp_path / "bad.yaml",
        tmp_path / "data",
        11112,
        routes=[{"name": "spine", "pipeline": "no-such-pipeline", "destinations": ["results-folder"]}],
    )
    result = fracnode("config", "check", config)
    assert result.returncode == 1
    assert "no-such-pipeline" in result.stdout and "test-kos" in result.stdout  # the hint lists known ones


# -- serve, echo, send, status against a node in its own process ------------------------------


def test_echo_by_address_and_by_peer_name(served):
    by_address = fracnode("echo", f"FRACNODE@127.0.0.1:{served.port}", "--timeout", "10")
    assert by_address.returncode == 0, by_address.stdout + by_address.stderr
    assert "success" in by_address.stdout

    by_name = fracnode("-c", served.client_config, "echo", "fracnode", "--timeout", "10")
    assert by_name.returncode == 0, by_name.stdout + by_name.stderr
    assert re.search(rf"C-ECHO FRACNODE@127\.0\.0\.1:{served.port}: success", by_name.stdout)

    # HOST:PORT alone calls the node's own AE title, so it reaches a fracnode as it is
    by_port = fracnode("echo", f"127.0.0.1:{served.port}", "--timeout", "10")
    assert by_port.returncode == 0, by_port.stdout + by_port.stderr
    assert f"C-ECHO FRACNODE@127.0.0.1:{served.port}: success" in by_port.stdout

    # another called AE title is refused: the message names the AE title that was refused, exit 1
    wrong_ae = fracnode("echo", f"ANY-SCP@127.0.0.1:{served.port}", "--timeout", "10")
    assert wrong_ae.returncode == 1
    assert "does not answer to the called AE title 'ANY-SCP'" in wrong_ae.stderr, wrong_ae.stderr


def test_echo_to_a_closed_port_fails_clearly(tmp_path):
    port = free_port()  # bound and closed again: nothing listens there
    started = time.monotonic()
    result = fracnode("echo", f"FRACNODE@127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 1
    assert f"cannot connect to FRACNODE@127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def test_echo_to_an_unknown_peer_name_lists_the_known_ones(tmp_path):
    config = write_config(
        tmp_path / "client.yaml",
        tmp_path / "data",
        11112,
        peers=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}],
    )
    result = fracnode("-c", config, "echo", "pacs2")
    assert result.returncode != 0
    assert "'pacs2' is neither a configured peer (pacs)" in result.stderr


def test_send_folders_recursively_then_status_shows_the_flow(served, tmp_path):
    study = dicomgen.ct_series(4, size=16)
    folder = tmp_path / "to-send"
    dicomgen.write(study[:2], folder)
    dicomgen.write(study[2:], folder / "nested" / "deeper")

    sent = fracnode("-c", served.client_config, "send", "fracnode", folder, "--calling-ae", "CLI-SCU")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "sent 4 of 4 file(s) to FRACNODE@127.0.0.1" in sent.stdout
    study_dir = served.data_dir / "spool" / study[0].StudyInstanceUID
    assert sorted(p.name for p in study_dir.iterdir()) == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in study)

    # one rejected association, so status has a reason to show
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification)
    assert ae.associate("127.0.0.1", served.port, ae_title="NOT-FRACNODE").is_rejected

    def status_after_the_job() -> str | None:
        out = fracnode("-c", served.client_config, "status")
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout if "jobs:    done 1" in out.stdout else None

    status = wait_until(status_after_the_job, timeout_s=30, interval_s=0.5)
    assert re.search(
        r"#1 test-kos \(all-ct\) done .*attempts 1/3 study " + re.escape(study[0].StudyInstanceUID),
        status,
    ), status
    assert "4 instance(s) selected" in status
    assert re.search(rf"{re.escape(study[0].StudyInstanceUID)}\s+rev 1 .*routed: all-ct", status), status
    assert re.search(r"CLI-SCU 127\.0\.0\.1\s+released\s+received 4 failed 0", status), status
    assert re.search(r"STRANGER 127\.0\.0\.1\s+rejected .*\(called AE title 'NOT-FRACNODE'", status), status

    assert served.stop() == 0  # SIGTERM stops the node cleanly


def test_send_of_a_jpeg_2000_file_reaches_the_node_in_its_own_syntax(served, cr_sample):
    """The README's `fracnode send` of the JPEG 2000 sample: the node prefers uncompressed syntaxes
    when a context offers several, so the compressed syntax is proposed in a context of its own."""
    sent = fracnode("-c", served.client_config, "send", "fracnode", cr_sample)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "sent 1 of 1 file(s)" in sent.stdout
    source = dcmread(cr_sample)
    spooled = dcmread(served.data_dir / "spool" / source.StudyInstanceUID / f"{source.SOPInstanceUID}.dcm")
    assert spooled.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert spooled.PixelData == source.PixelData


def test_send_of_a_missing_path_fails_before_connecting(served, tmp_path):
    result = fracnode("-c", served.client_config, "send", "fracnode", tmp_path / "nothing-here")
    assert result.returncode != 0
    assert "nothing-here: no such file or folder" in result.stderr


def test_serve_on_a_port_in_use_exits_2_with_a_clear_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "node.yaml", tmp_path / "data", port)
        try:
            result = fracnode("-c", config, "serve", timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("fracnode serve kept running on a port that is in use")
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Address already in use" in result.stderr
    assert "node.port" in result.stderr
    assert "Traceback" not in result.stderr
