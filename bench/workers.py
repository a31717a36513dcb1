"""Jobs/s with 1, 2 and 4 worker processes on one PostgreSQL database: where it stops scaling.

    .venv/bin/python -m bench.workers [--studies 40] [--repeat 3] [--layouts 1,2,4,1w2] [--label TEXT] [--no-results]

Set-up, once: a PostgreSQL 15 cluster that flushes every commit (`bench.on_postgres`) and one
`fracnode serve --roles listener` (`bench.db_footprint.radiograph_node`: route CR/DX →
`radiograph-fracture` → a folder destination, `complete_on_release`) that receives `--studies`
radiograph studies of 2 or 3 images (copies of the real JPEG 2000 lossless CR sample, 1760×1760,
sent as they are by `storescu -xv`) and queues one job per study. No worker runs meanwhile. The
listener stops, the jobs are held (`not_before` set far ahead) and that state is kept: the
database as a template, the data folder as a copy.

Each run starts from that state: the database is made again from the template (`CREATE DATABASE
… TEMPLATE`) and the data folder from its copy, so every run has the same queued jobs and files
and nothing of an earlier run. Then the layout's `fracnode serve --roles worker` processes and
one `--roles dispatcher` start. Once every worker has logged "pipeline ready" (model loaded,
exported to ONNX and checked against eager), the jobs are released in one transaction
(`not_before` = 0); the run ends when every job is done and every result delivered.

- jobs/s: jobs / (the last `finished_at` − the first `started_at`), from the jobs table;
- wall: from starting the processes to the last job's end, model loading included;
- CPU per job: the worker processes' own CPU (utime + stime) from the release to the end / jobs;
- workers' share: that CPU / (the same time × cores); machine busy: every process's CPU (/proc/stat,
  a background load included) in the same time / (time × cores);
- load: the machine's 1-minute load average before and after each run.

A layout is "N" (N processes of `jobs.workers` 1), "NwT" (N processes of T worker threads each)
or either with "tK" (each process started with OMP_NUM_THREADS=K: torch's thread count, which the
ONNX Runtime session takes as its intra-op threads). The layouts take turns in a rotating order
within each of `--repeat` repetitions; medians are reported.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.db_footprint import IMAGES_PER_STUDY, query, radiograph_node, wait_until_analysed
from bench.ingest import (
    REPO,
    RESULTS,
    busy_cpu_seconds,
    load_average,
    machine,
    node_command,
    node_environment,
    process_cpu_seconds,
    require_dcmtk,
    send,
    terminate,
    write_results,
)
from bench.on_postgres import describe_cluster, server_cpu_seconds, start_cluster
from bench.radiograph import SAMPLE, make_studies
from node.store import jobs
from tests.support import postgres as postgres_support

DEFAULT_LAYOUTS = "1,2,4,1w2"
TEMPLATE = "fracnode_queued"
HELD = 1e12  # a not_before far ahead: queued, but due for no worker until released
CORES = os.cpu_count() or 1
READY = re.compile(r"pipeline ready .*seconds=([\d.]+)")


@dataclass(frozen=True)
class Layout:
    processes: int
    threads: int = 1  # jobs.workers of each process
    intra_op: int | None = None  # OMP_NUM_THREADS of each process; None: torch's default (the cores)

    @classmethod
    def parse(cls, text: str) -> Layout:
        """A layout's text: "4" (4 processes of 1 worker thread), "1w2" (1 process of 2), "4t1" (OMP_NUM_THREADS=1)."""
        found = re.fullmatch(r"(\d+)(?:w(\d+))?(?:t(\d+))?", text.strip())
        if not found or int(found[1]) < 1 or (found[2] and int(found[2]) < 1) or (found[3] and int(found[3]) < 1):
            raise ValueError(f"layout {text!r}: use N, NwT or NwTtK (processes, worker threads, intra-op threads)")
        return cls(int(found[1]), int(found[2] or 1), int(found[3]) if found[3] else None)

    def __str__(self) -> str:
        text = f"{self.processes}" + (f"w{self.threads}" if self.threads != 1 else "")
        return text + (f"t{self.intra_op}" if self.intra_op is not None else "")

    def describe(self, default_threads: int) -> str:
        threads = "thread" if self.threads == 1 else "threads"
        return (
            f"{self.processes} process{'es' if self.processes > 1 else ''} × {self.threads} worker {threads},"
            f" {self.intra_op or default_threads} intra-op"
        )

    def environment(self) -> dict[str, str]:
        settings = {"FRACNODE_WORKERS": str(self.threads), "FRACNODE_LOG_LEVEL": "INFO"}
        if self.intra_op is not None:
            settings["OMP_NUM_THREADS"] = str(self.intra_op)
        return node_environment(**settings)


@dataclass(frozen=True)
class Run:
    layout: Layout
    started: tuple[float, ...]  # each job's started_at (epoch seconds, one host's clock)
    finished: tuple[float, ...]  # each job's finished_at
    spawned_at: float  # epoch seconds when the processes were started
    startup_s: float  # started → every worker's model ready
    model_load_s: tuple[float, ...]  # each worker's "pipeline ready" seconds
    window_s: float  # release → every job done and delivered (the CPU window)
    worker_cpu_s: float  # the worker processes' CPU in the window
    dispatcher_cpu_s: float
    server_cpu_s: float  # PostgreSQL's processes
    busy_s: float  # the whole machine's CPU in the window
    jobs_per_process: tuple[int, ...]  # "job done" in each worker's log
    load_before: str
    load_after: str

    @property
    def jobs(self) -> int:
        return len(self.finished)

    @property
    def span_s(self) -> float:
        return max(self.finished) - min(self.started)

    @property
    def rate(self) -> float:
        return self.jobs / self.span_s

    @property
    def wall_s(self) -> float:
        return max(self.finished) - self.spawned_at

    @property
    def job_median_s(self) -> float:
        return statistics.median(f - s for s, f in zip(self.started, self.finished, strict=True))

    @property
    def cpu_per_job_s(self) -> float:
        return self.worker_cpu_s / self.jobs

    @property
    def workers_share(self) -> float:
        return self.worker_cpu_s / (self.window_s * CORES)

    @property
    def machine_busy(self) -> float:
        return min(1.0, self.busy_s / (self.window_s * CORES))


class RoleProcess:
    """One `fracnode serve --roles ROLE` on the configuration the listener phase wrote."""

    def __init__(self, config: Path, role: str, log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*node_command(config), "serve", "--roles", role], stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self, marker: str) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.log.stem} exited with {self.process.returncode}:\n{self.text()[-3000:]}")
        if "pipeline failed to load" in self.text():
            raise RuntimeError(f"{self.log.stem}: the pipeline did not load:\n{self.text()[-3000:]}")
        return marker in self.text()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        terminate(self.process)


@dataclass(frozen=True)
class Queued:
    """What the listener phase left: the node's configuration, its data folder and a kept copy of it."""

    config: Path
    data_dir: Path
    kept: Path
    studies: int
    instances: int


def queue_studies(cluster: postgres_support.Cluster, workdir: Path, studies: int) -> Queued:
    """A listener alone queues one job per study; then the jobs are held and the database is
    renamed to TEMPLATE, and the data folder copied."""
    files = [path for _, path in make_studies(studies, workdir / "studies", IMAGES_PER_STUDY)]
    listener = radiograph_node(cluster, workdir, roles="listener")
    port = listener.start(workdir)
    try:
        seconds, acked = send(files, listener.ae_title, port, 1, ("-xv",))
        if acked != len(files):
            raise RuntimeError(f"sent {len(files)}, acknowledged {acked}")
        deadline = time.monotonic() + 120
        while int(query(cluster, f"SELECT COUNT(*) FROM jobs WHERE state = '{jobs.QUEUED}'")[0][0]) < studies:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{studies} jobs were not queued within 120 s")
            time.sleep(0.2)
    finally:
        listener.stop()
    ((count,),) = query(cluster, "SELECT COUNT(*) FROM jobs")
    if int(count) != studies:
        raise RuntimeError(f"{count} jobs for {studies} studies")
    print(f"queued {studies} jobs ({len(files)} instances received in {seconds:.1f} s)", flush=True)
    query(cluster, f"UPDATE jobs SET not_before = {HELD}")
    cluster.psql(f"ALTER DATABASE {postgres_support.DATABASE} RENAME TO {TEMPLATE}")
    kept = workdir / "data-queued"
    shutil.copytree(listener.data_dir, kept)
    return Queued(listener.config, listener.data_dir, kept, studies, len(files))


def restore(cluster: postgres_support.Cluster, queued: Queued) -> None:
    """The database and data folder as the listener left them: the held jobs, no results."""
    cluster.psql(f"DROP DATABASE IF EXISTS {postgres_support.DATABASE} WITH (FORCE)")
    cluster.psql(f"CREATE DATABASE {postgres_support.DATABASE} TEMPLATE {TEMPLATE} OWNER {postgres_support.USER}")
    shutil.rmtree(queued.data_dir, ignore_errors=True)
    shutil.copytree(queued.kept, queued.data_dir)
    os.sync()  # the copy's dirty pages must not be written back during the run


def wait_for(processes: list[RoleProcess], marker: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(p.ready(marker) for p in processes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every process logged {marker!r} within {timeout_s:.0f} s")
        time.sleep(0.2)


def run_layout(cluster: postgres_support.Cluster, queued: Queued, layout: Layout, logs: Path) -> Run:
    restore(cluster, queued)
    config, studies = queued.config, queued.studies
    logs.mkdir(parents=True)
    load_before = load_average()
    spawned_at, spawned = time.time(), time.monotonic()
    env = layout.environment()
    dispatcher = RoleProcess(config, "dispatcher", logs / "dispatcher.log", node_environment(FRACNODE_LOG_LEVEL="INFO"))
    workers = [RoleProcess(config, "worker", logs / f"worker-{i}.log", env) for i in range(layout.processes)]
    try:
        wait_for([dispatcher], "node started")
        wait_for(workers, "pipeline ready")
        startup = time.monotonic() - spawned
        cpu = [w.cpu_seconds() for w in workers]
        dispatcher_cpu, server_cpu, busy = dispatcher.cpu_seconds(), server_cpu_seconds(cluster), busy_cpu_seconds()
        released = time.monotonic()
        query(cluster, f"UPDATE jobs SET not_before = 0 WHERE state = '{jobs.QUEUED}'")
        wait_until_analysed(cluster, studies)
        window = time.monotonic() - released
        busy = busy_cpu_seconds() - busy
        worker_cpu = sum(w.cpu_seconds() - before for w, before in zip(workers, cpu, strict=True))
        dispatcher_cpu = dispatcher.cpu_seconds() - dispatcher_cpu
        server_after = server_cpu_seconds(cluster)
        server = sum(seconds - server_cpu.get(pid, 0.0) for pid, seconds in server_after.items())
    finally:
        for process in (*workers, dispatcher):
            process.stop()
    rows = query(cluster, "SELECT state, started_at, finished_at FROM jobs ORDER BY id")
    undone = [state for state, *_ in rows if state != jobs.DONE]
    if undone or len(rows) != studies:
        raise RuntimeError(f"{len(rows)} jobs for {studies} studies; not done: {undone}")
    loads = [float(found[1]) for w in workers for found in [READY.search(w.text())] if found]
    return Run(
        layout=layout,
        started=tuple(float(row[1]) for row in rows),
        finished=tuple(float(row[2]) for row in rows),
        spawned_at=spawned_at,
        startup_s=startup,
        model_load_s=tuple(loads),
        window_s=window,
        worker_cpu_s=worker_cpu,
        dispatcher_cpu_s=dispatcher_cpu,
        server_cpu_s=server,
        busy_s=busy,
        jobs_per_process=tuple(w.text().count("job done") for w in workers),
        load_before=load_before,
        load_after=load_average(),
    )


def _decode(_: object = None) -> None:
    from pydicom import dcmread

    dcmread(SAMPLE).pixel_array  # noqa: B018 - decoding is the point


def decode_seconds(repeat: int = 3) -> tuple[float, float, float]:
    """Seconds to decode the sample's JPEG 2000 pixel data: once; twice at once in two threads of
    one process; twice at once in two processes (medians). Threads taking twice as long as
    processes: the decoder holds the GIL."""

    def timed(start: Callable[[], None]) -> float:
        started = time.perf_counter()
        start()
        return time.perf_counter() - started

    def two_threads() -> None:
        threads = [threading.Thread(target=_decode) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    _decode()  # first use loads the decoder plug-in
    one = statistics.median(timed(_decode) for _ in range(repeat))
    threads = statistics.median(timed(two_threads) for _ in range(repeat))
    with ProcessPoolExecutor(2, initializer=_decode) as pool:
        list(pool.map(_decode, range(2)))  # both processes started and warm
        processes = statistics.median(timed(lambda: list(pool.map(_decode, range(2)))) for _ in range(repeat))
    return one, threads, processes


def report(runs: list[Run], layouts: list[Layout], default_threads: int) -> str:
    def cell(layout: Layout) -> list[Run]:
        return [r for r in runs if r.layout == layout]

    def median(values: list[float]) -> float:
        return statistics.median(values)

    base = median([r.rate for r in cell(Layout(1))]) if cell(Layout(1)) else None
    lines = [
        "| layout | jobs/s (median) | runs (jobs/s) | vs 1 process | job (median s) | first start → last end (s)"
        " | wall with start-up (s) | start-up (s) | model load per process (s) | workers' CPU per job (s)"
        f" | workers' share of {CORES} cores | machine busy | jobs per process | load (1 min) before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layout in layouts:
        mine = cell(layout)
        rate = median([r.rate for r in mine])
        scaling = f"{rate / base:.2f}×" if base else ""
        loaded = [seconds for r in mine for seconds in r.model_load_s]
        load_s = f"{median(loaded):.1f}" if loaded else "not logged"
        lines.append(
            f"| {layout} ({layout.describe(default_threads)}) | **{rate:.2f}** | "
            + ", ".join(f"{r.rate:.2f}" for r in mine)
            + f" | {scaling} | {median([r.job_median_s for r in mine]):.2f} | {median([r.span_s for r in mine]):.1f}"
            f" | {median([r.wall_s for r in mine]):.1f} | {median([r.startup_s for r in mine]):.1f}"
            f" | {load_s}"
            f" | {median([r.cpu_per_job_s for r in mine]):.2f} | {median([r.workers_share for r in mine]):.0%}"
            f" | {median([r.machine_busy for r in mine]):.0%} | "
            + ", ".join("/".join(map(str, r.jobs_per_process)) for r in mine)
            + " | "
            + "; ".join(f"{r.load_before.split(',')[0]} → {r.load_after.split(',')[0]}" for r in mine)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=40, help="radiograph studies of 2-3 images, one job each")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layouts", default=DEFAULT_LAYOUTS, help="comma list of N, NwT, NtK (see the docstring)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where to generate and receive")
    parser.add_argument("--label", default="jobs/s by worker process (bench.workers)")
    parser.add_argument("--notes", default="", help="text appended to the RESULTS.md section")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    try:
        layouts = [Layout.parse(text) for text in args.layouts.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    require_dcmtk(parser)
    import torch

    default_threads = torch.get_num_threads()  # what an OnnxRunner without OMP_NUM_THREADS takes
    tmp = Path(tempfile.mkdtemp(prefix="fracnode-bench-workers-", dir=args.tmpdir))
    cluster, settings = start_cluster()
    runs: list[Run] = []
    try:
        info = machine(tmp)
        info["PostgreSQL"] = describe_cluster(settings)
        info["Load before"] = f"{load_average()} (1, 5, 15 min)"
        one, threads, processes = decode_seconds()
        info["JPEG 2000 decoding"] = (
            f"one 1760×1760 CR image {one:.2f} s; two at once in two threads of one process {threads:.2f} s"
            f" ({threads / one:.2f}×), in two processes {processes:.2f} s ({processes / one:.2f}×)"
        )
        for key, value in info.items():
            print(f"{key}: {value}", flush=True)
        queued = queue_studies(cluster, tmp / "node", args.studies)
        for rep in range(args.repeat):
            shift = rep % len(layouts)
            for layout in layouts[shift:] + layouts[:shift]:
                run = run_layout(cluster, queued, layout, tmp / "logs" / f"{rep}-{layout}")
                runs.append(run)
                print(
                    f"rep {rep + 1}/{args.repeat}  {str(layout):5s} {run.rate:5.2f} jobs/s ({run.span_s:.1f} s;"
                    f" job median {run.job_median_s:.2f} s; start-up {run.startup_s:.1f} s; workers' CPU"
                    f" {run.cpu_per_job_s:.2f} s per job, {run.workers_share:.0%} of {CORES} cores; machine busy"
                    f" {run.machine_busy:.0%}; jobs per process {'/'.join(map(str, run.jobs_per_process))};"
                    f" load {run.load_before} → {run.load_after})",
                    flush=True,
                )
        info["Load after"] = f"{load_average()} (1, 5, 15 min)"
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)

    text = report(runs, layouts, default_threads)
    print(f"\n{text}")
    if not args.no_results:
        title = f"{datetime.date.today().isoformat()}: {args.label}"
        body = [
            f"## {title}",
            "",
            "Machine:",
            *(f"- {k}: {v}" for k, v in info.items()),
            "",
            f"Method: `python -m bench.workers --studies {args.studies} --repeat {args.repeat} --layouts"
            f" {args.layouts}` (see its docstring). {queued.studies} radiograph studies ({queued.instances} JPEG 2000"
            " CR images, 2–3 per study) queued once by a listener; each run restores that state and times the"
            " layout's worker processes (plus one dispatcher) from the first job's start to the last one's end."
            f" Intra-op threads: ONNX Runtime's per process, torch's default here {default_threads}.",
            "",
            text,
        ]
        if args.notes:
            body += ["", args.notes.strip()]
        write_results(title, "\n".join(body) + "\n")
        print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
