"""Association set-up: many short associations, one instance each, as many modalities send.

    .venv/bin/python -m bench.associations [--repeat 3] [--count 60] [--label TEXT] [--no-results]

`count` DCMTK storescu processes run one after another against fracnode, DCMTK storescp and
Orthanc; each opens an association, sends one small CT instance (64×64) and releases. Two
proposals: storescu's default (128 presentation contexts, `-xe`), and `-R` (only the context the
file needs). The figure is wall time per association, storescu's own start-up included (printed
alone as the floor). Every store must succeed and every instance be found stored.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.ingest import (
    NODELAY_ENV,
    REPO,
    RESULTS,
    Fracnode,
    OrthancReceiver,
    Receiver,
    Storescp,
    machine,
    require_dcmtk,
    write_results,
)
from tests.support import dicomgen
from tests.support.dcmtk import put_dcmtk_first

put_dcmtk_first()

PROPOSALS = {"default": ["-xe"], "-R": ["-R", "-xe"]}


@dataclass(frozen=True)
class Run:
    receiver: str
    proposal: str
    ms_per_association: float


def one_by_one(files: list[Path], ae_title: str, port: int, options: list[str]) -> float:
    """Seconds for one storescu process per file, run one after another."""
    started = time.perf_counter()
    for path in files:
        result = subprocess.run(
            ["storescu", *options, "-aet", "BENCH", "-aec", ae_title, "127.0.0.1", str(port), str(path)],
            env=NODELAY_ENV,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - started


def measure(receiver: Receiver, files: list[Path], workdir: Path) -> list[Run]:
    workdir.mkdir(parents=True)
    runs = []
    try:
        port = receiver.start(workdir)
        for name, options in PROPOSALS.items():
            seconds = one_by_one(files, receiver.ae_title, port, options)
            runs.append(Run(receiver.name, name, 1000 * seconds / len(files)))
        stored = receiver.stored()
    finally:
        receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if stored != len(files):  # the second proposal resends the same instances: duplicates
        raise RuntimeError(f"{receiver.name}: sent {len(files)} instances, {stored} stored")
    return runs


def floor_ms(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        subprocess.run(["storescu", "--version"], capture_output=True, check=False)
    return 1000 * (time.perf_counter() - started) / count


def report(runs: list[Run], floor: float) -> str:
    by_key: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        by_key.setdefault((r.receiver, r.proposal), []).append(r.ms_per_association)
    medians = {key: statistics.median(values) for key, values in by_key.items()}
    lines = ["| receiver | proposal | ms per association (median) | runs (ms) |", "|---|---|---|---|"]
    for name in ("fracnode", "storescp", "orthanc"):
        for proposal in PROPOSALS:
            values = ", ".join(f"{v:.1f}" for v in by_key[(name, proposal)])
            lines.append(f"| {name} | {proposal} | {medians[(name, proposal)]:.1f} | {values} |")
    lines += [
        "",
        f"storescu start-up alone (`storescu --version`): {floor:.1f} ms",
        "",
        "| proposal | associations/s fracnode ÷ storescp | fracnode ÷ Orthanc |",
        "|---|---|---|",
    ]
    for proposal in PROPOSALS:
        ours = medians[("fracnode", proposal)]
        lines.append(
            f"| {proposal} | {medians[('storescp', proposal)] / ours:.2f}"
            f" | {medians[('orthanc', proposal)] / ours:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--count", type=int, default=60, help="associations per measurement")
    parser.add_argument("--label", default="association set-up", help="section title suffix in RESULTS.md")
    parser.add_argument("--notes", default="", help="text appended to the RESULTS.md section")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    require_dcmtk(parser)
    tmp = Path(tempfile.mkdtemp(prefix="fracnode-bench-"))
    runs: list[Run] = []
    try:
        info = machine(tmp)
        files = dicomgen.write(dicomgen.ct_series(args.count, size=64), tmp / "series")
        receivers: list[Receiver] = [Fracnode(), Storescp(), OrthancReceiver()]
        for rep in range(args.repeat):
            shift = rep % len(receivers)
            for receiver in receivers[shift:] + receivers[:shift]:
                for run in measure(receiver, files, tmp / f"run-{rep}-{receiver.name}"):
                    runs.append(run)
                    print(
                        f"rep {rep + 1}/{args.repeat}  {run.receiver:9s} {run.proposal:8s}"
                        f" {run.ms_per_association:6.1f} ms per association",
                        flush=True,
                    )
        floor = floor_ms(args.count)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(runs, floor)
    print()
    print(text)
    if not args.no_results:
        title = f"{datetime.date.today().isoformat()}: {args.label}"
        machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items())
        section = (
            f"## {title}\n\nMachine:\n{machine_lines}\n\n"
            f"Method (`python -m bench.associations`): {args.count} storescu processes one after another,"
            f" each one association carrying one 64×64 CT instance, against each receiver (started"
            f" fresh, as in the ingest section; TCP_NODELAY=1 for DCMTK and Orthanc), {args.repeat}"
            f" repetitions in rotating order; `default` is storescu's own proposal of 128 presentation"
            f" contexts, `-R` proposes only the one the file needs.\n\n{text}\n"
        )
        if args.notes:
            section += f"\n{args.notes.strip()}\n"
        write_results(title, section)
        print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
