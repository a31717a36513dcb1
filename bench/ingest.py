"""Ingest throughput: fracnode against DCMTK storescp and Orthanc, all fed by DCMTK storescu.

    .venv/bin/python -m bench.ingest [--repeat 3] [--slices 300] [--label TEXT] [--no-results]

One CT series (512×512 int16, Explicit VR Little Endian) is sent to each receiver with one
association carrying every file, then with 4 parallel associations (4 storescu processes) each
carrying a quarter. Every receiver starts fresh with empty storage for every measurement, so each
run really writes every instance. Within a repetition the receivers take turns in a rotating
order, so load from other users of the machine spreads over all of them; medians are reported.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.support import dicomgen
from tests.support.dcmtk import put_dcmtk_first
from tests.support.orthanc import ORTHANC, Orthanc, free_port

put_dcmtk_first()  # DCMTK's storescu/storescp, not pynetdicom's console scripts

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
SCENARIOS = (1, 4)  # parallel associations
# DCMTK and Orthanc accept at most 131072 bytes (their documented maximum); "tuned" peers use it
PEER_MAX_PDU = 131072
NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}
# targets set for the node (see bench/RESULTS.md)
TARGET_VS_STORESCP = {1: 0.5, 4: 0.8}
TARGET_VS_ORTHANC = 1.0


class Receiver(Protocol):
    name: str
    ae_title: str

    def start(self, workdir: Path) -> int: ...  # returns the DICOM port

    def stored(self) -> int: ...

    def stop(self) -> None: ...


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited early with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s}s")


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def node_command(config: Path) -> list[str]:
    """`fracnode -c CONFIG`, from this interpreter's environment; the subcommand follows."""
    return [str(Path(sys.executable).parent / "fracnode"), "-c", str(config)]


def node_environment(**settings: str) -> dict[str, str]:
    """This process's environment for a node: its FRACNODE_ overrides dropped (the file decides),
    then `settings` (e.g. FRACNODE_WORKERS) added."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FRACNODE_")}, **settings}


class Fracnode:
    """`fracnode serve` as its own process, as in production."""

    name = "fracnode"
    ae_title = "FRACNODE"

    def __init__(
        self,
        max_pdu: int | None = None,
        sections: str | None = None,
        log_level: str = "WARNING",
        database: str | None = None,
        name: str = "fracnode",
        roles: str | None = None,
    ) -> None:
        self.max_pdu = max_pdu  # None: the node's default
        self.sections = sections  # YAML for the rest of the config; None: a folder and no routes
        self.log_level = log_level  # INFO for benchmarks that read the node's events from its log
        # storage.database: None is the embedded SQLite file; a postgresql:// URL (password from
        # PGPASSFILE) is given its schema by `fracnode db upgrade` before the node starts, as in production
        self.database = database
        self.name = name
        self.roles = roles  # `serve --roles`; None: every role (the default)
        # the node process's own CPU seconds when it was up and listening, and when stored() was asked
        self.cpu_at_start = self.cpu_at_stored = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self.data_dir = self.config = Path()
        self.api_token = secrets.token_hex(16)

    def start(self, workdir: Path) -> int:
        self.data_dir = workdir / "data"
        node = f"{{ae_title: {self.ae_title}, bind: 127.0.0.1, port: 0"
        node += f", max_pdu: {self.max_pdu}}}" if self.max_pdu is not None else "}"
        config = self.config = workdir / "fracnode.yaml"
        database = f", database: '{self.database}'" if self.database else ""
        config.write_text(
            f"node: {node}\n"
            f"storage: {{data_dir: {self.data_dir}, min_free_mb: 0, retention_days: 0{database}}}\n"
            f"logging: {{level: {self.log_level}, format: text}}\n"
            f"web: {{bind: 127.0.0.1, port: 0, auth: {{tokens: [{self.api_token}]}}}}\n"
            + (
                self.sections
                if self.sections is not None
                else f"destinations: [{{name: results-folder, type: folder, path: {self.data_dir / 'results'}}}]\n"
                "routes: []\n"
            )
        )
        env = node_environment()
        log = workdir / "fracnode.log"
        fracnode = node_command(config)
        if self.database:
            upgrade = subprocess.run([*fracnode, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
            if upgrade.returncode != 0:
                raise RuntimeError(f"fracnode db upgrade failed: {upgrade.stdout}{upgrade.stderr}")
        command = [*fracnode, "serve", *(("--roles", self.roles) if self.roles else ())]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"listening as \S+ on [\d.]+:(\d+)", log.read_text(errors="replace"))
            if found:
                self.cpu_at_start = process_cpu_seconds(self.process.pid)
                return int(found.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"fracnode exited early: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        raise RuntimeError("fracnode did not start within 60s")

    def stored(self) -> int:
        if self.process is not None:
            self.cpu_at_stored = process_cpu_seconds(self.process.pid)
        if self.database:
            import psycopg

            with psycopg.connect(self.database) as pg:
                rows = int(pg.execute("SELECT COUNT(*) FROM instances").fetchone()[0])  # type: ignore[index]
        else:
            with sqlite3.connect(f"file:{self.data_dir / 'fracnode.sqlite'}?mode=ro", uri=True) as db:
                rows = int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        files = sum(1 for _ in (self.data_dir / "spool").glob("*/*.dcm"))
        return min(rows, files)

    def stop(self) -> None:
        terminate(self.process)
        self.process = None


class Storescp:
    """DCMTK storescp; `--fork` serves each association in its own process (without it,
    storescp serves associations one after another)."""

    name = "storescp"
    ae_title = "STORESCP"

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.out = Path()

    def start(self, workdir: Path) -> int:
        self.out = workdir / "out"
        self.out.mkdir(parents=True)
        port = free_port()
        command = [
            "storescp",
            "--fork",
            "-aet",
            self.ae_title,
            "-pdu",
            str(PEER_MAX_PDU),
            "-od",
            str(self.out),
            str(port),
        ]
        self.process = subprocess.Popen(command, env=NODELAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(port, self.process)
        return port

    def stored(self) -> int:
        return sum(1 for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        terminate(self.process)
        self.process = None


class OrthancReceiver:
    """Orthanc 1.10 with its defaults (SyncStorageArea true) and the largest PDU it accepts."""

    name = "orthanc"
    ae_title = "ORTHANC"

    def __init__(self) -> None:
        self.server: Orthanc | None = None

    def start(self, workdir: Path) -> int:
        self.server = Orthanc(workdir / "orthanc", ae_title=self.ae_title, extra={"MaximumPduLength": PEER_MAX_PDU})
        self.server.start()
        return self.server.dicom_port

    def stored(self) -> int:
        assert self.server is not None
        return int(self.server.rest("/statistics")["CountInstances"])

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@dataclass(frozen=True)
class Measurement:
    receiver: str
    associations: int
    instances: int
    seconds: float
    busy_seconds: float = 0.0  # CPU time of the whole machine while the senders ran (/proc/stat)

    @property
    def rate(self) -> float:
        return self.instances / self.seconds

    @property
    def busy_ms_per_instance(self) -> float:
        return 1000 * self.busy_seconds / self.instances

    @property
    def idle(self) -> float:
        """The share of the machine's cores left idle (or waiting on I/O) during the send."""
        return max(0.0, 1 - self.busy_seconds / (self.seconds * (os.cpu_count() or 1)))


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent neither idle nor waiting on I/O since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a running process has used; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (proc(5))


def run_threads(threads: Sequence[threading.Thread]) -> float:
    """Start every thread, wait for all; the seconds from the first start to the last end."""
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def send(
    files: Sequence[Path], ae_title: str, port: int, associations: int, proposal: Sequence[str] = ("-xe",)
) -> tuple[float, int]:
    """Send `files` over `associations` parallel storescu processes; return (seconds, acked).
    `proposal`: storescu's transfer syntax options (`-xv` for JPEG 2000 lossless files)."""
    parts = [list(files[i::associations]) for i in range(associations)]
    command = ["storescu", "-v", "-aet", "BENCH", "-aec", ae_title, *proposal, "127.0.0.1", str(port)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen([*command, *map(str, part)], env=NODELAY_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for part in parts
    ]
    outputs = [s.communicate()[0].decode(errors="replace") for s in senders]
    seconds = time.perf_counter() - started
    acked = 0
    for sender, output in zip(senders, outputs, strict=True):
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed ({sender.returncode}):\n{output[-2000:]}")
        acked += output.count("Received Store Response (Success)")
    return seconds, acked


def measure(
    receiver: Receiver, files: Sequence[Path], associations: int, workdir: Path, proposal: Sequence[str] = ("-xe",)
) -> Measurement:
    workdir.mkdir(parents=True)
    try:
        port = receiver.start(workdir)
        os.sync()  # the previous run's dirty pages must not be flushed during this one
        busy_before = busy_cpu_seconds()
        seconds, acked = send(files, receiver.ae_title, port, associations, proposal)
        busy = busy_cpu_seconds() - busy_before
        stored = receiver.stored()
    finally:
        receiver.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    if acked != len(files) or stored != len(files):
        raise RuntimeError(f"{receiver.name}: sent {len(files)}, acknowledged {acked}, stored {stored}")
    return Measurement(receiver.name, associations, len(files), seconds, busy)


# -- machine description -----------------------------------------------------------------------


def load_average() -> str:
    """The machine's load average (1, 5 and 15 minutes), as `uptime` prints it."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return f"{one}, {five}, {fifteen}"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def filesystem_type(path: Path) -> str:
    best, kind = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount, fstype = fields[1], fields[2]
        inside = str(path.resolve()).startswith(mount.rstrip("/") + "/") or mount == "/"
        if inside and len(mount) > len(best):
            best, kind = mount, f"{fstype} ({fields[0]} on {mount})"
    return kind


def tool_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


def git_revision() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "node"], check=False, capture_output=True, text=True
    ).stdout.strip()
    return out + (" + uncommitted changes in node/" if dirty else "")


def machine(tmp: Path) -> dict[str, str]:
    import pydicom
    import pynetdicom

    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores (shared with other users; timings are noisy)",
        "Kernel": platform.release(),
        "Temp dir filesystem": f"{tmp}: {filesystem_type(tmp)}",
        "DCMTK": tool_version(["storescp", "--version"]).strip("$ "),
        "Orthanc": tool_version([ORTHANC, "--version"]),
        "Python": f"{platform.python_version()}, pynetdicom {pynetdicom.__version__}, pydicom {pydicom.__version__}",
        "fracnode": git_revision(),
    }


# -- report ------------------------------------------------------------------------------------


def summarize(results: list[Measurement]) -> dict[tuple[str, int], float]:
    medians: dict[tuple[str, int], float] = {}
    for m in results:
        key = (m.receiver, m.associations)
        if key not in medians:
            medians[key] = statistics.median(r.rate for r in results if (r.receiver, r.associations) == key)
    return medians


def table(results: list[Measurement], names: list[str]) -> str:
    medians = summarize(results)
    lines = [
        (
            "| receiver | associations | instances/s (median) | runs (instances/s) |"
            " machine CPU per instance (median) | cores idle (median) |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for n in SCENARIOS:
        for name in names:
            mine = [r for r in results if (r.receiver, r.associations) == (name, n)]
            runs = ", ".join(f"{r.rate:.1f}" for r in mine)
            busy = statistics.median(r.busy_ms_per_instance for r in mine)
            idle = statistics.median(r.idle for r in mine)
            lines.append(f"| {name} | {n} | {medians[(name, n)]:.1f} | {runs} | {busy:.2f} ms | {idle:.0%} |")
    return "\n".join(lines)


def ratios(results: list[Measurement]) -> tuple[str, bool]:
    medians = summarize(results)
    lines = [
        "| associations | fracnode / storescp | target | fracnode / Orthanc | target | met |",
        "|---|---|---|---|---|---|",
    ]
    all_met = True
    for n in SCENARIOS:
        vs_scp = medians[("fracnode", n)] / medians[("storescp", n)]
        vs_orthanc = medians[("fracnode", n)] / medians[("orthanc", n)]
        met = vs_scp >= TARGET_VS_STORESCP[n] and vs_orthanc > TARGET_VS_ORTHANC
        all_met &= met
        lines.append(
            f"| {n} | {vs_scp:.2f} | ≥ {TARGET_VS_STORESCP[n]} | {vs_orthanc:.2f} |"
            f" > {TARGET_VS_ORTHANC} | {'yes' if met else 'no'} |"
        )
    return "\n".join(lines), all_met


def section(
    title: str, info: dict[str, str], args: argparse.Namespace, results: list[Measurement], mbytes: float, notes: str
) -> str:
    ratio_table, met = ratios(results)
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items())
    text = f"""## {title}

Machine:
{machine_lines}

Method: one CT series of {args.slices} slices, 512×512 int16, Explicit VR Little Endian
({mbytes:.0f} MB in all), sent by DCMTK `storescu -xe` (TCP_NODELAY=1) with 1 association, and
with 4 parallel storescu processes carrying a quarter each. Every receiver is started fresh with
empty storage for each run (so every instance is really written), `sync` runs before each timed
send, and the receivers take turns in a rotating order within each of {args.repeat} repetitions.
The time runs from starting the storescu processes until the last exits; every instance must be
acknowledged with Success (counted in storescu's output, exit status 0) and be found stored.
Machine CPU per instance is the CPU time of the whole machine (receiver, senders, kernel threads;
/proc/stat) during that time, divided by the instances; cores idle is the share of
{os.cpu_count()} cores left idle or waiting on I/O meanwhile.

Receivers:
- fracnode: `fracnode serve` as its own process, bind 127.0.0.1, log level WARNING, no routes,
  node.max_pdu {args.fracnode_pdu if args.fracnode_pdu is not None else "default (0 = unlimited)"}.
  It acknowledges an instance only after the file is fsynced, renamed into place, its directory
  fsynced and the SQLite index row committed.
- storescp: `storescp --fork -pdu {PEER_MAX_PDU} -od DIR`, TCP_NODELAY=1 (without `--fork` it
  serves associations one at a time). It does not fsync.
- Orthanc: 1.10 defaults plus MaximumPduLength {PEER_MAX_PDU}, TCP_NODELAY=1. Its default
  `SyncStorageArea: true` (Orthanc ≥ 1.7.4, as `Orthanc --config=FILE` prints) fsyncs each
  stored file; it also indexes into SQLite.

{table(results, [r for r in ("fracnode", "storescp", "orthanc")])}

Targets: fracnode faster than tuned Orthanc; ≥ 0.5× tuned storescp with 1 association and
≥ 0.8× with 4 associations.

{ratio_table}

Targets met: {"yes" if met else "no"}.
"""
    if notes:
        text += f"\n{notes.strip()}\n"
    return text


def write_results(title: str, text: str) -> None:
    header = (
        "# Benchmark results\n\nIngest sections are produced by `python -m bench.ingest`,"
        " radiograph sections by\n`python -m bench.radiograph_model` and `python -m bench.radiograph`"
        " (see their docstrings).\nNewest sections last.\n"
    )
    current = RESULTS.read_text() if RESULTS.exists() else header
    sections = re.split(r"(?m)^(?=## )", current)
    kept = [s for s in sections if not s.startswith(f"## {title}\n")]
    if kept == sections:
        kept.append(text)
    else:  # replace in place, keeping the order
        index = next(i for i, s in enumerate(sections) if s.startswith(f"## {title}\n"))
        kept.insert(index, text)
    RESULTS.write_text("".join(s if s.endswith("\n\n") or s is kept[-1] else s + "\n" for s in kept))


def require_dcmtk(parser: argparse.ArgumentParser) -> None:
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (Debian package dcmtk)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--tmpdir", type=Path, default=None, help="where to generate and receive")
    parser.add_argument("--fracnode-pdu", type=int, default=None, help="node.max_pdu for fracnode")
    parser.add_argument("--only", choices=["fracnode", "storescp", "orthanc"], action="append")
    parser.add_argument("--label", default="ingest", help="section title suffix in RESULTS.md")
    parser.add_argument("--notes", default="", help="text appended to the RESULTS.md section")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    require_dcmtk(parser)

    tmp = Path(tempfile.mkdtemp(prefix="fracnode-bench-", dir=args.tmpdir))
    try:
        info = machine(tmp)
        for key, value in info.items():
            print(f"{key}: {value}")
        print(f"generating {args.slices} slices of 512×512 in {tmp} …", flush=True)
        files = dicomgen.write(dicomgen.ct_series(args.slices, size=512), tmp / "series")
        mbytes = sum(f.stat().st_size for f in files) / 1e6
        receivers: list[Receiver] = [Fracnode(args.fracnode_pdu), Storescp(), OrthancReceiver()]
        if args.only:
            receivers = [r for r in receivers if r.name in args.only]
        results: list[Measurement] = []
        for rep in range(args.repeat):
            for n in SCENARIOS:
                shift = (rep + n) % len(receivers)
                for receiver in receivers[shift:] + receivers[:shift]:
                    m = measure(receiver, files, n, tmp / f"run-{rep}-{n}-{receiver.name}")
                    results.append(m)
                    print(
                        f"rep {rep + 1}/{args.repeat}  {m.receiver:9s} {n} assoc  "
                        f"{m.rate:7.1f} instances/s  ({m.seconds:.2f} s, machine CPU"
                        f" {m.busy_ms_per_instance:.2f} ms per instance, {m.idle:.0%} idle)",
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    names = [r.name for r in receivers]
    print()
    print(table(results, names))
    if len(names) == 3:
        ratio_table, met = ratios(results)
        print()
        print(ratio_table)
        print(f"\ntargets met: {'yes' if met else 'no'}")
        if not args.no_results:
            title = f"{datetime.date.today().isoformat()}: {args.label}"
            write_results(title, section(title, info, args, results, mbytes, args.notes))
            print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
