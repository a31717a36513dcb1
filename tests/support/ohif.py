"""The OHIF viewer (npm `@ohif/app`, whose tarball ships the built viewer) for the viewer tests.

`ohif_dist()` installs the pinned release once into a cache folder the tests own
(`.cache/ohif/<version>/` under the repository, or `$FRACNODE_TEST_CACHE/ohif/<version>/`) with
`npm pack`, which checks the tarball against the registry's integrity hash. `ViewerServer` serves
that folder on a loopback port with a generated `app-config.js`, and passes `/dicom-web/…` through
to an Orthanc's DICOMweb plugin, so the viewer and the images share one origin (no CORS).
"""

from __future__ import annotations

import fcntl
import http.client
import json
import mimetypes
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"  # pinned: the release the viewer test is written against
REPO = Path(__file__).resolve().parents[2]
CHUNK = 1 << 16
PROXIED = ("/dicom-web/", "/wado")
# OHIF's documented Orthanc data source, pointed at this origin (window.location.origin).
APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'fracnode test Orthanc',
      name: 'orthanc',
      wadoUriRoot: window.location.origin + '/wado',
      qidoRoot: window.location.origin + '/dicom-web',
      wadoRoot: window.location.origin + '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      bulkDataURI: { enabled: true },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


def cache_root() -> Path:
    return Path(os.environ.get("FRACNODE_TEST_CACHE") or REPO / ".cache")


def ohif_dist(version: str = OHIF_VERSION) -> Path:
    """The built viewer (`dist/` of the npm package), installed into the test cache on first use.

    Raises RuntimeError when npm is missing or the registry cannot be reached; the message says so.
    """
    folder = cache_root() / "ohif" / version
    dist = folder / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{version}.lock"):
        if (dist / "index.html").is_file():  # another process installed it meanwhile
            return dist
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed (Debian package npm); the OHIF viewer test needs it")
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            packed = subprocess.run(
                [npm, "pack", f"{OHIF_PACKAGE}@{version}", "--json", "--pack-destination", scratch],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
                env={**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"},
            )
            if packed.returncode != 0:
                raise RuntimeError(f"npm pack {OHIF_PACKAGE}@{version} failed: {packed.stderr[-2000:]}")
            tarball = Path(scratch) / json.loads(packed.stdout)[0]["filename"]
            unpacked = Path(scratch) / "unpacked"
            with tarfile.open(tarball) as archive:
                archive.extractall(unpacked, filter="data")
            if not (unpacked / "package" / "dist" / "index.html").is_file():
                raise RuntimeError(f"{OHIF_PACKAGE}@{version} ships no dist/index.html")
            shutil.rmtree(folder, ignore_errors=True)
            unpacked.rename(folder)
    return dist


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests carry study UIDs; the tests have no use for an access log

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(PROXIED):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, APP_CONFIG.encode(), "application/javascript")
        else:
            self._static(path)

    def _static(self, path: str) -> None:
        root = self.server.dist
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"  # the viewer's own routes (/viewer, /…): single-page app
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            kind = "application/wasm"
        self._send(200, target.read_bytes(), kind)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        # cross-origin isolation, which OHIF uses for shared-memory volume loading
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
            upstream.request("GET", self.path, headers=headers)
            response = upstream.getresponse()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() in ("content-type", "content-length", "content-range"):
                    self.send_header(key, value)
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            length = response.getheader("Content-Length")
            chunked = length is None
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while block := response.read(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            upstream.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = dist.resolve()
        self.upstream_port = upstream_port


class ViewerServer:
    """OHIF at `url`, reading studies from the Orthanc at `upstream_port` through the same origin."""

    def __init__(self, dist: Path, upstream_port: int) -> None:
        self._server = _Server(dist, upstream_port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def viewer_url(self, study_uid: str, series_uid: str | None = None) -> str:
        url = f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"
        return url + (f"&SeriesInstanceUIDs={series_uid}" if series_uid else "")

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # `make viewer`: install the pinned viewer into the test cache
    print(f"OHIF {OHIF_VERSION}: {ohif_dist()}")
