"""Radiograph fracture AI, end to end: storescu → `fracnode serve` → SR/SEG acknowledged by Orthanc.

    .venv/bin/python -m bench.radiograph [--studies 16] [--latency-studies 5] [--workers 4]

Each study is the real JPEG 2000 CR sample (1760×1760, MONOCHROME1) with new UIDs. The node runs
as its own process with `complete_on_release: true`, so a study is complete when its association
is released; results go by C-STORE to a real Orthanc started here, everything on loopback with
TCP_NODELAY. Two measurements:

- latency: studies sent one at a time; for each, seconds from starting storescu until Orthanc
  holds the study's SR (the last object the node sends per study is acknowledged by then).
- throughput: all studies sent at once in one association; studies/s from the start of the send
  until Orthanc holds every SR. With several workers, images of concurrent studies share batches.

The model alone (per-image latency and images/s by batch size and execution path) is measured
by `python -m bench.radiograph_model`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from bench.ingest import Fracnode, machine
from tests.support.orthanc import Orthanc

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "dicom_cr_samples" / "RG3_J2KR.dcm"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_studies(count: int, folder: Path, images_per_study: Sequence[int] = (1,)) -> list[tuple[str, Path]]:
    """`count` studies of copies of the CR sample; study i has images_per_study[i % len] images
    (one series, new UIDs). One (StudyInstanceUID, file) per image, a study's images together."""
    folder.mkdir(parents=True, exist_ok=True)
    template = dcmread(SAMPLE)
    studies = []
    for i in range(count):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.AccessionNumber = f"BENCH{i:04d}"
        for image in range(images_per_study[i % len(images_per_study)]):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = image + 1
            path = folder / f"cr{i:04d}-{image}.dcm"
            ds.save_as(path)
            studies.append((str(ds.StudyInstanceUID), path))
    return studies


def node(orthanc_port: int, workers: int, max_batch: int) -> Fracnode:
    """`fracnode serve` routing radiographs to the model, results to Orthanc."""
    return Fracnode(
        sections=(
            "assembly: {complete_on_release: true}\n"
            f"jobs: {{workers: {workers}}}\n"
            f"inference: {{max_batch: {max_batch}}}\n"
            f"peers: [{{name: pacs, ae_title: ORTHANC, host: 127.0.0.1, port: {orthanc_port}}}]\n"
            "destinations: [{name: pacs, type: dimse, peer: pacs}]\n"
            "routes: [{name: radiographs, match: {modality: [CR, DX]}, pipeline: radiograph-fracture,"
            " destinations: [pacs]}]\n"
        )
    )


def storescu(port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["storescu", "-xv", "-aet", "BENCH", "-aec", "FRACNODE", "127.0.0.1", str(port), *map(str, files)],
        env=NODELAY_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for_srs(orthanc: Orthanc, studies: set[str], timeout_s: float = 900) -> dict[str, float]:
    """Poll Orthanc until each study has an SR; returns study UID → monotonic arrival time."""
    arrived: dict[str, float] = {}
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while studies - set(arrived):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(studies - set(arrived))} study result(s) missing after {timeout_s} s")
        for instance in orthanc.instances():
            if instance in seen:
                continue
            seen.add(instance)
            tags = orthanc.instance_tags(instance)
            if tags.get("SOPClassUID") == SR_CLASS and tags.get("StudyInstanceUID") in studies:
                arrived.setdefault(tags["StudyInstanceUID"], time.monotonic())
        time.sleep(0.05)
    return arrived


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=16, help="studies in the throughput run")
    parser.add_argument("--latency-studies", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4, help="jobs.workers of the node")
    parser.add_argument("--max-batch", type=int, default=8, help="inference.max_batch of the node")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fracnode-bench-radiograph-") as tmp:
        workdir = Path(tmp)
        info = machine(workdir)
        with Orthanc(workdir / "orthanc") as orthanc:
            receiver = node(orthanc.dicom_port, args.workers, args.max_batch)
            port = receiver.start(workdir)
            try:
                latencies = []
                for uid, path in make_studies(args.latency_studies, workdir / "latency"):
                    started = time.monotonic()
                    storescu(port, [path]).wait()
                    latencies.append(wait_for_srs(orthanc, {uid})[uid] - started)
                    print(f"latency: {latencies[-1]:.2f} s", file=sys.stderr)
                studies = make_studies(args.studies, workdir / "throughput")
                started = time.monotonic()
                sender = storescu(port, [p for _, p in studies])
                arrived = wait_for_srs(orthanc, {uid for uid, _ in studies})
                sender.wait()
                elapsed = max(arrived.values()) - started
            finally:
                receiver.stop()
    print("\n".join(f"- {k}: {v}" for k, v in info.items()))
    print(
        f"\nend to end, CPU, workers {args.workers}, max_batch {args.max_batch}, real JPEG 2000 CR 1760×1760 per study"
    )
    print("| measurement | value |\n|---|---|")
    print(
        f"| latency per study (received → SR in Orthanc), median of {len(latencies)} |"
        f" {statistics.median(latencies):.2f} s (min {min(latencies):.2f}, max {max(latencies):.2f}) |"
    )
    print(
        f"| throughput, {args.studies} studies in one association | {args.studies / elapsed:.2f} studies/s"
        f" ({elapsed:.1f} s in all) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
