"""A real Orthanc (Debian package) started on loopback ports for tests and benchmarks."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """Start with `start()`, stop with `stop()`; `rest()` talks to its REST API."""

    def __init__(
        self,
        workdir: Path,
        ae_title: str = "ORTHANC",
        modalities: dict[str, list[Any]] | None = None,
        plugins: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        dicomweb: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        """`dicomweb`: load the DICOMweb plugin (Debian orthanc-dicomweb) at `dicomweb_url`;
        `users`: HTTP Basic users, required on every request (`rest()` uses the first)."""
        self.workdir = workdir
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.plugins = (plugins or []) + ([str(PLUGIN_DIR / "libOrthancDicomWeb.so")] if dicomweb else [])
        self.extra = extra or {}
        self.users = users or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        if not Path(ORTHANC).exists():
            raise RuntimeError("Orthanc is not installed (Debian package 'orthanc'); run `make test` or .ci/run")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "fracnode-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities,
            "Plugins": self.plugins,
            "StableAge": 2,
            "HttpServerEnabled": True,
            "ConcurrentJobs": 2,
            **self.extra,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.log = (self.workdir / "orthanc.log").open("ab")  # a restart appends
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited early; see {self.workdir / 'orthanc.log'}")
            try:
                self.rest("/system")
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s}s; see {self.workdir / 'orthanc.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self.log.close()

    def _request(self, path: str, data: bytes | None = None, method: str | None = None) -> urllib.request.Request:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return request

    def rest(self, path: str, data: bytes | None = None, method: str | None = None) -> Any:
        with urllib.request.urlopen(self._request(path, data, method), timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def rest_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self._request(path), timeout=30) as response:
            return bytes(response.read())

    def instances(self) -> list[str]:
        return list(self.rest("/instances"))

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        return dict(self.rest(f"/instances/{orthanc_id}/simplified-tags"))

    def wait_for_instances(self, count: int, timeout_s: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        found: list[str] = []
        while time.monotonic() < deadline:
            found = self.instances()
            if len(found) >= count:
                return found
            time.sleep(0.2)
        raise AssertionError(f"Orthanc holds {len(found)} instance(s), expected {count} within {timeout_s}s")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
