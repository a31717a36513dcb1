"""Cervical spine CT fracture AI, end to end: storescu → `fracnode serve` → SEG + SR acknowledged by Orthanc.

    nice .venv/bin/python -m bench.cspine [--slices 300 600] [--device cpu] [--models-dir DIR] [--no-results]

For each size, one synthetic cervical spine CT (`training.phantom.generate`, 512×512, the
given number of slices, int16, Explicit VR Little Endian) is written to disk and sent with DCMTK
`storescu` (one association) to a fresh `fracnode serve` process (`complete_on_release: true`,
route CT → `cspine-fracture` → a real Orthanc on loopback). The node is started fresh for each
size and its pipeline is warm (models loaded) before the send, so its peak RSS (VmHWM) belongs
to that size alone.

Measured, from the node's own SQLite index (one clock):
- end to end: study complete (`studies.completed_at`, the association's release) → the last
  result object acknowledged by Orthanc (`outbox.delivered_at`, C-STORE Success received);
- pipeline: the job's run (`jobs.started_at` → `jobs.finished_at`), and the pipeline's per-stage
  seconds as the job recorded them (`job_outcomes.findings`, the models' own stages included);
- peak RSS of the node process (VmHWM from /proc; its RSS once the models are loaded for
  comparison) and the receive time (storescu's run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.ingest import Fracnode, machine, send, write_results
from tests.support.orthanc import Orthanc

STAGES = (
    "select",
    "volume",
    "model_preprocess",
    "model_sliding_window",
    "model_postprocess",
    "model_fracture",
    "results",
)


@dataclass(frozen=True)
class Run:
    slices: int
    device: str
    megabytes: float
    receive_s: float
    end_to_end_s: float
    pipeline_s: float
    ready_rss_mb: float
    peak_rss_mb: float
    stages: dict[str, float]
    summary: str


def write_study(slices: int, folder: Path, seed: int) -> tuple[str, list[Path]]:
    """A 512×512 phantom neck CT of `slices` slices on disk; (StudyInstanceUID, files)."""
    from training.phantom.generate import PhantomSpec, generate_study

    study = generate_study(seed, PhantomSpec(size=512, slices=slices, region="neck"))
    folder.mkdir(parents=True)
    files = []
    for ds in study.datasets:
        path = folder / f"{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study.study_instance_uid, files


def node(orthanc_port: int, device: str, models_dir: Path | None) -> Fracnode:
    models = f", models_dir: {models_dir}" if models_dir else ""
    return Fracnode(
        log_level="INFO",
        sections=(
            "assembly: {complete_on_release: true}\n"
            f"inference: {{device: {device}{models}}}\n"
            f"peers: [{{name: pacs, ae_title: ORTHANC, host: 127.0.0.1, port: {orthanc_port}}}]\n"
            "destinations: [{name: pacs, type: dimse, peer: pacs}]\n"
            "routes: [{name: cspine, match: {modality: [CT]}, pipeline: cspine-fracture,"
            " destinations: [pacs]}]\n"
        ),
    )


def wait_for_log(log: Path, pattern: str, process: subprocess.Popen[bytes], timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if process.poll() is not None:
            raise RuntimeError(f"fracnode exited: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"no {pattern!r} in {log} within {timeout_s} s")


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """VmHWM (peak resident set) or VmRSS (now) of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def timings(database: Path, study_uid: str, timeout_s: float) -> tuple[float, float, str, dict[str, float]]:
    """(end to end s, pipeline s, job summary, stage seconds) once every result of the study is
    acknowledged."""
    deadline = time.monotonic() + timeout_s
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        while time.monotonic() < deadline:
            job = db.execute(
                "SELECT state, summary, last_error, started_at, finished_at, id FROM jobs WHERE study_uid = ?",
                (study_uid,),
            ).fetchone()
            if job and job[0] not in ("queued", "running", "done"):
                raise RuntimeError(f"job ended {job[0]}: {job[1] or job[2]}")
            rows = db.execute("SELECT state, delivered_at FROM outbox WHERE study_uid = ?", (study_uid,)).fetchall()
            if job and job[0] == "done" and rows and all(r[1] is not None for r in rows):
                (completed,) = db.execute(
                    "SELECT completed_at FROM studies WHERE study_uid = ?", (study_uid,)
                ).fetchone()
                (findings,) = db.execute("SELECT findings FROM job_outcomes WHERE job_id = ?", (job[5],)).fetchone()
                stages = dict(json.loads(findings)["seconds"])
                return max(r[1] for r in rows) - completed, job[4] - job[3], job[1], stages
            time.sleep(0.1)
    raise RuntimeError(f"results of {study_uid} not acknowledged within {timeout_s} s")


def measure(slices: int, device: str, workdir: Path, orthanc: Orthanc, seed: int, models_dir: Path | None) -> Run:
    study_uid, files = write_study(slices, workdir / f"study-{slices}-{device}", seed)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    receiver = node(orthanc.dicom_port, device, models_dir)
    run_dir = workdir / f"node-{slices}-{device}"
    run_dir.mkdir()
    port = receiver.start(run_dir)
    assert receiver.process is not None
    try:
        log = run_dir / "fracnode.log"
        wait_for_log(log, r"pipeline ready.*pipeline=cspine-fracture", receiver.process, 600)
        ready = memory_mb(receiver.process.pid, "VmRSS")
        receive_s, acked = send(files, receiver.ae_title, port, 1)
        if acked != len(files):
            raise RuntimeError(f"{acked} of {len(files)} instances acknowledged")
        end_to_end, pipeline, summary, stages = timings(receiver.data_dir / "fracnode.sqlite", study_uid, 1800)
        peak = memory_mb(receiver.process.pid)
    finally:
        receiver.stop()
    return Run(slices, device, megabytes, receive_s, end_to_end, pipeline, ready, peak, stages, summary)


def table(runs: list[Run]) -> str:
    lines = [
        (
            "| CT | device | received in | complete → SEG + SR acknowledged | pipeline job |"
            " stages (s) | node RSS, models loaded | peak RSS of the node |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        stages = ", ".join(f"{k} {r.stages[k]:.1f}" for k in STAGES if k in r.stages)
        lines.append(
            f"| 512×512×{r.slices} ({r.megabytes:.0f} MB) | {r.device} | {r.receive_s:.1f} s |"
            f" **{r.end_to_end_s:.1f} s** | {r.pipeline_s:.1f} s | {stages} | {r.ready_rss_mb:.0f} MB |"
            f" **{r.peak_rss_mb:.0f} MB** |"
        )
    return "\n".join(lines)


def section(title: str, info: dict[str, str], runs: list[Run], notes: str) -> str:
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items())
    summaries = "\n".join(f"- {r.slices} slices ({r.device}): {r.summary}" for r in runs)
    text = f"""## {title}

Machine:
{machine_lines}

Method (`python -m bench.cspine`): per size, one synthetic cervical spine CT (phantom, 512×512,
int16, Explicit VR Little Endian) sent by DCMTK `storescu -xe` in one association to a fresh
`fracnode serve` process (`complete_on_release: true`, one worker, route CT → cspine-fracture →
a real Orthanc 1.10 on loopback). The node's models are loaded before the send. End to end is
study complete (association released) → last result acknowledged by Orthanc, both from the
node's SQLite index; peak RSS is the node process's VmHWM (everything: ingest, models, pipeline,
dispatch).

{table(runs)}

Job summaries:
{summaries}
"""
    if notes:
        text += f"\n{notes.strip()}\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[300, 600])
    parser.add_argument(
        "--device",
        action="append",
        choices=["cpu", "cuda"],
        help="inference.device (repeatable); default cpu, and cuda when present",
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--models-dir", type=Path, help="inference.models_dir (default: the shipped models/)")
    parser.add_argument("--label", default="cervical spine CT end to end")
    parser.add_argument("--notes", default="", help="text appended to the RESULTS.md section")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    devices = args.device
    if not devices:
        import torch

        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    with tempfile.TemporaryDirectory(prefix="fracnode-bench-cspine-") as tmp:
        workdir = Path(tmp)
        info = machine(workdir)
        import torch

        info["GPU"] = (
            torch.cuda.get_device_name(0)
            if torch.cuda.is_available()
            else "none: CUDA runs were not measured on this machine"
        )
        runs = []
        with Orthanc(workdir / "orthanc") as orthanc:
            for device in devices:
                for slices in args.slices:
                    run = measure(slices, device, workdir, orthanc, args.seed, args.models_dir)
                    print(
                        f"{slices} slices, {device}: end to end {run.end_to_end_s:.1f} s, "
                        f"peak RSS {run.peak_rss_mb:.0f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.append(run)
    print("\n".join(f"- {k}: {v}" for k, v in info.items()))
    print(table(runs))
    if not args.no_results:
        title = f"{datetime.date.today().isoformat()}: {args.label}"
        write_results(title, section(title, info, runs, args.notes))
        print(f"\nwritten to bench/RESULTS.md ({title})")
    os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
