"""`fracnode serve` as a process of its own, on ports chosen here: for tests that read its whole
log output or measure its memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import API_TOKEN, REPO
from tests.support.orthanc import free_port

FRACNODE = Path(sys.executable).with_name("fracnode")


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    http_port: int
    data_dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The node process's resident memory (VmRSS) or its peak (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for process {self.process.pid}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def serve(folder: Path, **sections: Any) -> Served:
    """Start `fracnode serve` with a test configuration (`sections` replace or extend it)."""
    port, http_port = free_port(), free_port()
    data_dir = folder / "data"
    config: dict[str, Any] = {
        "node": {"ae_title": "FRACNODE", "bind": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(data_dir), "min_free_mb": 0},
        "assembly": {"quiet_period_s": 0.5},
        "jobs": {"retry": {"initial_s": 0.2, "factor": 2.0, "max_s": 1.0}},
        "dispatch": {"retry": {"initial_s": 0.2, "factor": 2.0, "max_s": 1.0}},
        "logging": {"level": "DEBUG", "format": "json"},
        "web": {"bind": "127.0.0.1", "port": http_port, "auth": {"tokens": [API_TOKEN]}},
        "destinations": [{"name": "results-folder", "type": "folder", "path": str(folder / "results")}],
        "routes": [],
        "pipeline_modules": ["tests.support.pipelines"],
    }
    for key, value in sections.items():
        config[key] = (
            {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = folder / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACNODE_")}
    env["PYTHONPATH"] = str(REPO)
    command = [str(FRACNODE)] if FRACNODE.exists() else [sys.executable, "-m", "node.cli"]
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [*command, "-c", str(path), "serve"], stdout=stream, stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
    served = Served(process, port, http_port, data_dir, log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"fracnode serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", http_port), timeout=1):
                break  # the web server starts after the DICOM listener
        except OSError:
            if time.monotonic() > deadline:
                served.stop()
                raise AssertionError(f"fracnode serve is not listening:\n{log.read_text()}") from None
            time.sleep(0.2)
    return served
