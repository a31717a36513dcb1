"""The `fracnode` command: serve, echo, send, status, config check, analyze, train, evaluate."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

from node import __version__, pipelines
from node.config import Config, ConfigError, load

DEFAULT_CONFIG_ENV = "FRACNODE_CONFIG"


def _config_path(args: argparse.Namespace) -> Path | None:
    given = getattr(args, "config", None) or os.environ.get(DEFAULT_CONFIG_ENV)
    return Path(given) if given else None


def _load(args: argparse.Namespace) -> Config:
    try:
        return load(_config_path(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("fix these and run `fracnode config check` again", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from node import logs
    from node.service import Node, NodeAlreadyRunning
    from node.web.server import WebBindError

    config = _load(args)
    logs.setup(config.logging.level, config.logging.format)
    try:
        node = Node(config)
    except (NodeAlreadyRunning, ValueError) as exc:
        print(f"fracnode: {exc}", file=sys.stderr)
        return 2
    try:
        node.start()
    except WebBindError as exc:
        print(f"fracnode: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fracnode: cannot listen on {config.node.bind}:{config.node.port}: {exc.strerror}"
              " (is another DICOM service using the port? set node.port or FRACNODE_PORT)",
              file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: object) -> None:
        node._stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    web = f"; HTTP on {config.web.bind}:{node.web.port}" if node.web is not None else ""
    print(f"fracnode {__version__}: listening as {config.node.ae_title} on "
          f"{config.node.bind}:{node.ingest.port}{web}; data in {config.storage.data_dir.resolve()}"
          " (Ctrl-C stops)", file=sys.stderr, flush=True)
    node.wait()
    node.stop()
    return 0


_TARGET = re.compile(r"^(?:(?P<ae>[^@]{1,16})@)?(?P<host>[^:@]+):(?P<port>\d{1,5})$")


def _target(config: Config, text: str):  # type: ignore[no-untyped-def]
    from node.dispatch.dimse import Target

    try:
        peer = config.peer(text)
    except KeyError:
        pass
    else:
        if peer.type == "dicomweb":
            raise SystemExit(f"fracnode: peer {text!r} is a DICOMweb peer ({peer.url});"
                             " echo and send speak DIMSE to a peer with an AE title, host and port")
        return Target(peer.ae_title, peer.host, peer.port, peer.tls)
    match = _TARGET.match(text)
    if not match:
        known = ", ".join(p.name for p in config.peers) or "none configured"
        raise SystemExit(f"fracnode: {text!r} is neither a configured peer ({known}) nor AE@HOST:PORT / HOST:PORT")
    return Target(match["ae"] or "ANY-SCP", match["host"], int(match["port"]))


def cmd_echo(args: argparse.Namespace) -> int:
    from node.dispatch.dimse import AssociationFailed, echo

    config = _load(args)
    target = _target(config, args.peer)
    started = time.monotonic()
    try:
        status = echo(target, args.calling_ae or config.node.ae_title, args.timeout)
    except AssociationFailed as exc:
        print(f"C-ECHO {target}: failed: {exc}", file=sys.stderr)
        return 1
    ms = (time.monotonic() - started) * 1000
    ok = status == 0
    print(f"C-ECHO {target}: {'success' if ok else f'status 0x{status:04X}'} ({ms:.0f} ms)")
    return 0 if ok else 1


def _dicom_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"fracnode: {given}: no such file or folder")
    return files


def cmd_send(args: argparse.Namespace) -> int:
    from pydicom.errors import InvalidDicomError

    from node.dispatch.dimse import AssociationFailed, store

    config = _load(args)
    target = _target(config, args.peer)
    files = _dicom_files(args.files)
    if not files:
        print("fracnode: no files to send", file=sys.stderr)
        return 1
    try:
        results = store(target, args.calling_ae or config.node.ae_title, files, args.timeout)
    except AssociationFailed as exc:
        print(f"send to {target}: {exc}", file=sys.stderr)
        return 1
    except (InvalidDicomError, AttributeError) as exc:
        print(f"send: not a DICOM file: {exc}", file=sys.stderr)
        return 1
    failed = [r for r in results if not r.ok]
    for result in failed:
        print(f"  failed {result.path}: {result.message}", file=sys.stderr)
    print(f"sent {len(results) - len(failed)} of {len(results)} file(s) to {target}")
    return 1 if failed else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    config = _load(args)
    overlays = frozenset(o for o in args.overlays.split(",") if o)
    unknown = overlays - {"gsps", "secondary_capture"}
    if unknown:
        print(f"fracnode analyze: unknown overlay(s) {', '.join(sorted(unknown))}"
              " (choose from gsps, secondary_capture)", file=sys.stderr)
        return 2
    if args.source or args.study:
        if not (args.source and args.study) or args.paths:
            print("fracnode analyze: give either PATH... or --from PEER --study UID", file=sys.stderr)
            return 2
        return _analyze_from_peer(config, args.source, args.study, Path(args.out), overlays)
    if not args.paths:
        print("fracnode analyze: give DICOM files or folders, or --from PEER --study UID", file=sys.stderr)
        return 2
    files = _dicom_files(args.paths)
    if not files:
        print("fracnode analyze: no files found", file=sys.stderr)
        return 1
    return _analyze_files(config, files, Path(args.out), overlays)


def _analyze_files(config: Config, files: list[Path], out: Path, overlays: frozenset[str]) -> int:
    from node.analyze import analyze, print_table
    from node.inference.bundle import BundleError

    try:
        rows = analyze(config, files, out, overlays)
    except (BundleError, ValueError) as exc:
        print(f"fracnode analyze: {exc}", file=sys.stderr)
        return 2
    print_table(rows)
    print(f"\nresults, previews and summary.csv in {out}")
    return 0


def _analyze_from_peer(config: Config, peer: str, study_uid: str, out: Path, overlays: frozenset[str]) -> int:
    """Retrieve the study into a folder under `out` (removed afterwards), then analyse it."""
    import tempfile

    from node.pull import PullError
    from node.pull.offline import retrieve_into

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".retrieving-", dir=out) as folder:
        try:
            retrieved, files = retrieve_into(config, peer, study_uid, Path(folder))
        except PullError as exc:
            print(f"fracnode analyze: {exc}", file=sys.stderr)
            return 1
        print(f"study {study_uid} from {peer}: {retrieved.summary}", file=sys.stderr)
        if not files:
            return 1
        return _analyze_files(config, files, out, overlays)


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    seconds = max(0, now - then)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago" if seconds < 7200 else f"{seconds / 3600:.1f}h ago"


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    path = config.database_path
    if not path.exists():
        print(f"no node state in {config.storage.data_dir} yet (the node has not run with this data_dir)")
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    now = time.time()
    jobs = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    print("jobs:    " + (", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "none"))
    outbox = conn.execute(
        "SELECT destination, state, COUNT(*) AS n FROM outbox GROUP BY destination, state ORDER BY 1, 2"
    ).fetchall()
    print("outbox:  " + (", ".join(f"{r['destination']} {r['state']} {r['n']}" for r in outbox) or "empty"))
    pending = conn.execute("SELECT COUNT(*) FROM studies WHERE pending = 1").fetchone()[0]
    print(f"studies receiving: {pending}")
    print("\nrecent studies:")
    for row in conn.execute(
        "SELECT study_uid, revision, last_received_at, route_status, pending FROM studies"
        " ORDER BY last_received_at DESC LIMIT ?", (args.limit,)
    ):
        state = "receiving" if row["pending"] else (row["route_status"] or "complete")
        print(f"  {row['study_uid']}  rev {row['revision']}  last instance {_age(now, row['last_received_at'])}  {state}")
    print("\nrecent jobs:")
    for row in conn.execute(
        "SELECT id, pipeline, route, state, attempts, max_attempts, last_error, summary, created_at,"
        " started_at, finished_at, study_uid FROM jobs ORDER BY id DESC LIMIT ?", (args.limit,)
    ):
        took = f" {row['finished_at'] - row['started_at']:.1f}s" if row["finished_at"] and row["started_at"] else ""
        detail = row["last_error"] or row["summary"]
        print(f"  #{row['id']} {row['pipeline']} ({row['route']}) {row['state']}{took}"
              f" attempts {row['attempts']}/{row['max_attempts']} study {row['study_uid']}"
              + (f"\n      {detail}" if detail else ""))
    print("\nrecent associations:")
    for row in conn.execute(
        "SELECT started_at, peer_ae, peer_address, outcome, reason, instances_received, instances_failed"
        " FROM associations ORDER BY started_at DESC LIMIT ?", (args.limit,)
    ):
        print(f"  {_age(now, row['started_at'])}  {row['peer_ae']} {row['peer_address']}  {row['outcome']}"
              f"  received {row['instances_received']} failed {row['instances_failed']}"
              + (f"  ({row['reason']})" if row["reason"] else ""))
    conn.close()
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else _config_path(args)
    source = str(path) if path else "<embedded defaults>"
    try:
        config = load(path)
    except ConfigError as exc:
        print(exc)
        return 1
    try:
        pipelines.load_modules(config.pipeline_modules)
    except ValueError as exc:
        print(f"configuration {source}: 1 problem(s)\n  {exc}")
        return 1
    problems = pipelines.check_routes(config)
    if problems:
        print(f"configuration {source}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}\n    hint: pipelines available: {', '.join(pipelines.known()) or 'none'}")
        return 1
    print(f"configuration {source}: OK — AE title {config.node.ae_title} on port {config.node.port},"
          f" {len(config.peers)} peer(s), {len(config.destinations)} destination(s),"
          f" {len(config.routes)} route(s), data in {config.storage.data_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fracnode", description="DICOM node for fracture AI")
    parser.add_argument("--version", action="version", version=f"fracnode {__version__}")
    config_help = f"YAML configuration (default: ${DEFAULT_CONFIG_ENV} or the embedded defaults)"
    parser.add_argument("-c", "--config", help=config_help)
    # -c is accepted after the command too (`fracnode serve -c FILE`); SUPPRESS keeps the
    # value given before the command when it is not repeated after it
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("-c", "--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "serve", help="run the node (DICOM listener, workers, dispatch)", parents=[config_option]
    ).set_defaults(func=cmd_serve)

    echo = sub.add_parser("echo", help="C-ECHO a configured peer or AE@HOST:PORT", parents=[config_option])
    echo.add_argument("peer")
    echo.add_argument("--calling-ae", help="calling AE title (default: the node's)")
    echo.add_argument("--timeout", type=float, default=10.0)
    echo.set_defaults(func=cmd_echo)

    send = sub.add_parser("send", help="C-STORE files or folders to a configured peer or AE@HOST:PORT",
                          parents=[config_option])
    send.add_argument("peer")
    send.add_argument("files", nargs="+")
    send.add_argument("--calling-ae", help="calling AE title (default: the node's)")
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=cmd_send)

    status = sub.add_parser("status", help="queue, recent studies, jobs and associations",
                            parents=[config_option])
    status.add_argument("--limit", type=int, default=10)
    status.set_defaults(func=cmd_status)

    analyze = sub.add_parser("analyze", help="run the routes' pipelines on DICOM files offline",
                             parents=[config_option])
    analyze.add_argument("paths", nargs="*", help="DICOM files or folders")
    analyze.add_argument("--from", dest="source", metavar="PEER",
                         help="retrieve the study from this configured peer (WADO-RS, C-GET or C-MOVE)")
    analyze.add_argument("--study", metavar="UID", help="the StudyInstanceUID to retrieve with --from")
    analyze.add_argument("--out", required=True, help="folder for results, previews and summary.csv")
    analyze.add_argument("--overlays", default="", help="also write gsps and/or secondary_capture, comma-separated")
    analyze.set_defaults(func=cmd_analyze)

    from node.training.cli import add_parsers as add_training_parsers

    add_training_parsers(sub)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a configuration file and print every problem",
                                  parents=[config_option])
    check.add_argument("file", nargs="?", help="the YAML file (default: --config or the embedded defaults)")
    check.set_defaults(func=cmd_config_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `fracnode status | head` ends quietly
    args = build_parser().parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
