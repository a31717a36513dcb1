"""STOW-RS ingest throughput: fracnode against Orthanc's DICOMweb plugin, fed by the same client.

    .venv/bin/python -m bench.stow [--repeat 3] [--slices 300] [--per-request 50] [--label TEXT] [--no-results]

One CT series (512×512 int16, Explicit VR Little Endian, Part 10 files) is posted as
`multipart/related; type="application/dicom"` requests of `--per-request` instances each, over
one HTTP connection, then over 4 parallel connections taking every 4th request. Each receiver
starts fresh with empty storage for every measurement; within a repetition they take turns in a
rotating order; medians are reported. Every response must be 200 and every instance be stored.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

import httpx

from bench.ingest import Fracnode, machine, run_threads, write_results
from tests.support import dicomgen
from tests.support.orthanc import PLUGIN_DIR, Orthanc

SCENARIOS = (1, 4)  # parallel connections
BOUNDARY = "fracnode-bench-stow"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


class StowReceiver(Protocol):
    name: str

    def start(self, workdir: Path) -> tuple[str, dict[str, str]]: ...  # the studies URL, headers
    def stored(self) -> int: ...
    def stop(self) -> None: ...


class FracnodeStow:
    """`fracnode serve` as its own process; its STOW-RS endpoint with a bearer token."""

    name = "fracnode"

    def __init__(self) -> None:
        self.node = Fracnode(log_level="INFO")  # the web server's port is read from its log

    def start(self, workdir: Path) -> tuple[str, dict[str, str]]:
        self.node.start(workdir)
        log = workdir / "fracnode.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"web server listening bind=\S+ port=(\d+)", log.read_text(errors="replace"))
            if found:
                url = f"http://127.0.0.1:{found.group(1)}/dicomweb/studies"
                return url, {"Authorization": f"Bearer {self.node.api_token}"}
            time.sleep(0.05)
        raise RuntimeError("fracnode's web server did not start within 30s")

    def stored(self) -> int:
        return self.node.stored()

    def stop(self) -> None:
        self.node.stop()


class OrthancStow:
    """Orthanc 1.10 (defaults, SyncStorageArea true) with its DICOMweb plugin (Debian 1.7)."""

    name = "orthanc"

    def __init__(self) -> None:
        self.server: Orthanc | None = None

    def start(self, workdir: Path) -> tuple[str, dict[str, str]]:
        self.server = Orthanc(
            workdir / "orthanc",
            plugins=[str(PLUGIN_DIR / "libOrthancDicomWeb.so")],
            extra={"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}},
        )
        self.server.start()
        return f"{self.server.url}/dicom-web/studies", {}

    def stored(self) -> int:
        assert self.server is not None
        return int(self.server.rest("/statistics")["CountInstances"])

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def bodies(files: list[bytes], per_request: int) -> list[bytes]:
    out = []
    for start in range(0, len(files), per_request):
        parts = files[start : start + per_request]
        body = b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
        )
        out.append(body + f"--{BOUNDARY}--\r\n".encode())
    return out


def post_all(url: str, headers: dict[str, str], requests: list[bytes], connections: int) -> float:
    """Post every body over `connections` parallel connections; seconds until the last answer."""
    errors: list[str] = []

    def worker(share: list[bytes]) -> None:
        with httpx.Client(headers={**headers, "Content-Type": CONTENT_TYPE}, timeout=600) as client:
            for body in share:
                response = client.post(url, content=body)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:300]}")

    seconds = run_threads(
        [threading.Thread(target=worker, args=(requests[i::connections],)) for i in range(connections)]
    )
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed: {errors[0]}")
    return seconds


def measure(receiver: StowReceiver, requests: list[bytes], instances: int, connections: int, workdir: Path) -> float:
    """Instances per second."""
    workdir.mkdir(parents=True)
    try:
        url, headers = receiver.start(workdir)
        os.sync()
        seconds = post_all(url, headers, requests, connections)
        stored = receiver.stored()
    finally:
        receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if stored != instances:
        raise RuntimeError(f"{receiver.name}: sent {instances}, stored {stored}")
    return instances / seconds


def report(
    rates: dict[tuple[str, int], list[float]], info: dict[str, str], args: argparse.Namespace, mbytes: float
) -> str:
    lines = ["| receiver | connections | instances/s (median) | runs (instances/s) |", "|---|---|---|---|"]
    for n in SCENARIOS:
        for name in ("fracnode", "orthanc"):
            runs = rates[(name, n)]
            lines.append(f"| {name} | {n} | {statistics.median(runs):.1f} | {', '.join(f'{r:.1f}' for r in runs)} |")
    ratio = [
        f"| {n} | {statistics.median(rates[('fracnode', n)]) / statistics.median(rates[('orthanc', n)]):.2f} |"
        for n in SCENARIOS
    ]
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items())
    return f"""## {args.title}

Produced by `python -m bench.stow`. Machine:
{machine_lines}

Method: one CT series of {args.slices} slices, 512×512 int16, Explicit VR Little Endian Part 10
files ({mbytes:.0f} MB in all), posted by httpx as STOW-RS requests (`multipart/related;
type="application/dicom"`) of {args.per_request} instances each, over 1 connection and over 4
parallel connections. Each receiver starts fresh with empty storage for each run, `sync` runs
before each timed run, and the receivers take turns in a rotating order within each of
{args.repeat} repetitions. The time runs from the first request until the last response; every
response must be 200 and every instance be found stored.

Receivers: fracnode (`fracnode serve`, bearer token, answers only after each file is fsynced,
renamed, its directory fsynced and indexed) and Orthanc 1.10 with its DICOMweb plugin 1.7 at
`/dicom-web/studies` (defaults: `SyncStorageArea: true` fsyncs each file; SQLite index).

{chr(10).join(lines)}

| connections | fracnode / Orthanc |
|---|---|
{chr(10).join(ratio)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--per-request", type=int, default=50)
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument(
        "--label",
        default="STOW-RS ingest",
        help="section title suffix in RESULTS.md (a section of the same date and label is replaced)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    args.title = f"{datetime.date.today().isoformat()}: {args.label}"
    tmp = Path(tempfile.mkdtemp(prefix="fracnode-bench-stow-", dir=args.tmpdir))
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        info = machine(tmp)
        print(f"generating {args.slices} slices of 512×512 …", flush=True)
        paths = dicomgen.write(dicomgen.ct_series(args.slices, size=512), tmp / "series")
        files = [p.read_bytes() for p in paths]
        mbytes = sum(map(len, files)) / 1e6
        requests = bodies(files, args.per_request)
        receivers: list[StowReceiver] = [FracnodeStow(), OrthancStow()]
        for rep in range(args.repeat):
            for n in SCENARIOS:
                shift = (rep + n) % len(receivers)
                for receiver in receivers[shift:] + receivers[:shift]:
                    rate = measure(receiver, requests, len(files), n, tmp / f"run-{rep}-{n}-{receiver.name}")
                    rates.setdefault((receiver.name, n), []).append(rate)
                    print(
                        f"rep {rep + 1}/{args.repeat}  {receiver.name:9s} {n} conn  {rate:7.1f} instances/s", flush=True
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(rates, info, args, mbytes)
    print(text)
    if not args.no_results:
        write_results(args.title, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
