"""The cost of "acknowledge only once the instance is durable", apart from any DICOM code.

    .venv/bin/python -m bench.durability [--repeat 5] [--slices 300] [--no-results]

`bench.ingest` compares fracnode, which fsyncs every instance before its C-STORE response, with
DCMTK storescp, which never fsyncs (its files reach the disk after the run, when the kernel writes
its dirty pages back). This benchmark measures what that promise costs on the machine itself, with
no receiver in the way. For 1 and for 4 associations, in each repetition: storescp receives the
CT series from that many storescu processes, then the same slices are written as files from that
many threads, once as storescp writes them (write, close) and once as fracnode's spool does
(temporary name, fsync, rename, fsync of the folder). File writes release the GIL, so the Python
around them is a few microseconds per file. Whole-machine CPU time (/proc/stat, kernel threads
included) and wall time are measured for each.

A DICOM association carries one C-STORE at a time and a durable receiver answers only after the
write, so N associations can go no faster than N threads doing nothing but durable writes: that
rate over storescp's is the ceiling on `bench.ingest`'s fracnode/storescp ratio for any receiver,
in any language, that makes each instance durable as its own file the way DESIGN.md asks (temporary
name, fsync, rename, folder fsync). A second ceiling comes from CPU: storescp's machine CPU per instance plus what
durability adds, on the machine's cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from bench.ingest import (
    REPO,
    RESULTS,
    Measurement,
    Storescp,
    busy_cpu_seconds,
    machine,
    measure,
    require_dcmtk,
    run_threads,
    write_results,
)
from tests.support import dicomgen

WAYS = ("write + close", "durable")
SCENARIOS = (1, 4)  # associations, and writer threads
# A run is a Measurement: its receiver is "storescp" or one of WAYS, its associations the writer threads.


def _write_plain(data: bytes, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_durable(data: bytes, path: Path) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_all(way: str, blobs: Sequence[bytes], out: Path, threads: int) -> Measurement:
    """Write every blob as a file in `out`, spread over `threads` threads, the given way."""
    out.mkdir(parents=True)
    write = _write_durable if way == "durable" else _write_plain
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for i in range(index, len(blobs), threads):
                write(blobs[i], out / f"{i:05d}.dcm")
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    os.sync()  # the previous run's dirty pages must not be flushed during this one
    busy_before = busy_cpu_seconds()
    seconds = run_threads([threading.Thread(target=worker, args=(i,)) for i in range(threads)])
    busy = busy_cpu_seconds() - busy_before
    if errors:
        raise errors[0]
    shutil.rmtree(out, ignore_errors=True)
    return Measurement(way, threads, len(blobs), seconds, busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--tmpdir", type=Path, default=None, help="where to generate and write")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    require_dcmtk(parser)

    tmp = Path(tempfile.mkdtemp(prefix="fracnode-bench-", dir=args.tmpdir))
    runs: list[Measurement] = []
    try:
        info = machine(tmp)
        print(f"generating {args.slices} slices of 512×512 in {tmp} …", flush=True)
        files = dicomgen.write(dicomgen.ct_series(args.slices, size=512), tmp / "series")
        blobs = [f.read_bytes() for f in files]
        for rep in range(args.repeat):
            for n in SCENARIOS:
                runs.append(measure(Storescp(), files, n, tmp / f"storescp-{rep}-{n}"))
                for way in WAYS if rep % 2 == 0 else reversed(WAYS):
                    runs.append(write_all(way, blobs, tmp / f"{way}-{rep}-{n}", n))
                for run in runs[-3:]:
                    print(
                        f"rep {rep + 1}/{args.repeat}  {n} assoc/threads  {run.receiver:13s} "
                        f"{run.rate:7.1f} per s, machine CPU {run.busy_ms_per_instance:.2f} ms each",
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    text = report(runs, args.slices)
    print()
    print(text)
    if not args.no_results:
        title = f"{datetime.date.today().isoformat()}: the cost of durability (bench.durability)"
        lines = [
            f"## {title}",
            "",
            "Machine:",
            *(f"- {k}: {v}" for k, v in info.items()),
            "",
            (
                f"Method: `python -m bench.durability --repeat {args.repeat} --slices {args.slices}`"
                f" (see its docstring): {args.slices} CT slices of 512×512 as `bench.ingest` sends them;"
                " each repetition measures storescp, then the two ways of writing (alternating which"
                " goes first), for 1 and for 4 associations/threads."
            ),
            "",
            text,
            "",
        ]
        write_results(title, "\n".join(lines))
        print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


def report(runs: Sequence[Measurement], slices: int) -> str:
    """Medians per way, and the two ceilings they put on a durable receiver against storescp."""
    cores = os.cpu_count() or 1

    def median(way: str, n: int, value: str) -> float:
        return statistics.median(getattr(r, value) for r in runs if (r.receiver, r.associations) == (way, n))

    rows = [
        (
            "| associations / threads | storescp | write + close | temporary file, fsync, rename,"
            " folder fsync | durability's extra CPU | CPU ceiling | fsync ceiling |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for n in SCENARIOS:
        scp_rate, scp_ms = median("storescp", n, "rate"), median("storescp", n, "busy_ms_per_instance")
        plain_ms, durable_ms = median(WAYS[0], n, "busy_ms_per_instance"), median(WAYS[1], n, "busy_ms_per_instance")
        durable_rate = median(WAYS[1], n, "rate")
        extra_ms = durable_ms - plain_ms
        cpu_ceiling = min(1.0, scp_ms / (scp_ms + extra_ms))  # storescp's work plus durability's
        fsync_ceiling = durable_rate / scp_rate  # one instance in flight per association
        rows.append(
            f"| {n} | {scp_rate:.0f}/s, {scp_ms:.2f} ms | {median(WAYS[0], n, 'rate'):.0f}/s, "
            f"{plain_ms:.2f} ms | {durable_rate:.0f}/s, {durable_ms:.2f} ms | {extra_ms:.2f} ms "
            f"| {cpu_ceiling:.2f}× | **{fsync_ceiling:.2f}×** |"
        )
        notes.append(
            f"- {n} association{'s' if n > 1 else ''}: a receiver that keeps the promise and is otherwise"
            f" free can go no faster than {n} thread{'s' if n > 1 else ''} doing nothing but durable"
            f" writes, {durable_rate:.0f} files/s against storescp's {scp_rate:.0f} instances/s"
            f" ({fsync_ceiling:.2f}×); on CPU alone, storescp's {scp_ms:.2f} ms per instance plus"
            f" durability's {extra_ms:.2f} ms leaves at most {cpu_ceiling:.2f}× on {cores} cores."
        )
    return "\n".join(
        [
            f"Rates per second and machine CPU per instance or file (medians; {slices} slices).",
            "",
            *rows,
            "",
            (
                "A DICOM association carries one C-STORE at a time (storescu negotiates no asynchronous"
                " operations window), and its response may only go once the instance is durable, so each"
                " association waits for one durable write per instance; a receiver cannot beat the"
                " durable-write rate with as many writers as associations, in any language, while it stores"
                " each instance as its own file this way:"
            ),
            "",
            *notes,
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
