"""The `fracnode` command: serve, echo, send, status, config check, analyze, train, evaluate."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from node import __version__, pipelines
from node.config import Config, ConfigError, load
from node.config.peers import OPTIONAL_OBJECTS

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
    from node.banner import banner
    from node.roles import Roles
    from node.service import Node, NodeAlreadyRunning
    from node.store import StoreError
    from node.web.server import WebBindError

    try:
        process_roles = Roles.parse(args.roles)
    except ValueError as exc:
        print(f"fracnode: {exc}", file=sys.stderr)
        return 2
    config = _load(args)
    logs.setup(config.logging.level, config.logging.format, libraries=config.logging.libraries)
    for note in config.deprecations:
        logs.event(logging.getLogger("fracnode.config"), logging.WARNING, "deprecated setting", advice=note)
    try:
        node = Node(config, process_roles)
    except (NodeAlreadyRunning, ValueError) as exc:
        print(f"fracnode: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:  # an older schema (run `fracnode db upgrade`), a database unreachable
        print(f"fracnode: database {_database_name(config)}: {exc}", file=sys.stderr)
        return 2
    try:
        node.start()
    except WebBindError as exc:
        print(f"fracnode: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"fracnode: cannot listen on {config.node.bind}:{config.node.port}: {exc.strerror}"
            " (is another DICOM service using the port? set node.port or FRACNODE_PORT)",
            file=sys.stderr,
        )
        return 2

    def on_signal(signum: int, frame: object) -> None:
        node._stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(banner(config, node), file=sys.stderr, flush=True)

    def when_warm() -> None:
        node.warmed.wait()
        ready = ", ".join(f"{name} {state}" for name, state in node.warm_results.items())
        print(f"fracnode: models {ready or 'none routed'}", file=sys.stderr, flush=True)

    threading.Thread(target=when_warm, name="banner", daemon=True).start()
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
            raise SystemExit(
                f"fracnode: peer {text!r} is a DICOMweb peer ({peer.url});"
                " echo and send speak DIMSE to a peer with an AE title, host and port"
            )
        return Target(peer.ae_title, peer.host, peer.port, peer.tls)
    match = _TARGET.match(text)
    if not match:
        known = ", ".join(p.name for p in config.peers) or "none configured"
        raise SystemExit(f"fracnode: {text!r} is neither a configured peer ({known}) nor AE@HOST:PORT / HOST:PORT")
    # HOST:PORT alone calls the node's own AE title: the likeliest peer is another fracnode (or
    # this one); a PACS needs its own, given as AE@HOST:PORT
    return Target(match["ae"] or config.node.ae_title, match["host"], int(match["port"]))


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
    unknown = overlays - set(OPTIONAL_OBJECTS)
    if unknown:
        print(
            f"fracnode analyze: unknown overlay(s) {', '.join(sorted(unknown))}"
            f" (choose from {', '.join(OPTIONAL_OBJECTS)})",
            file=sys.stderr,
        )
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


FOLDER_HINT = "create the folder and give it to the node's user, or choose a folder under storage.data_dir"


def folder_problems(config: Config) -> list[tuple[str, str]]:
    """Folder destinations the node could not write into: their results would wait forever."""
    from node.config import FolderDestination
    from node.dispatch.folder import writable_problem

    found = []
    for i, dest in enumerate(config.destinations):
        if isinstance(dest, FolderDestination):
            problem = writable_problem(dest.path)
            if problem:
                found.append((f"destinations[{i}] ({dest.name!r}).path: {problem}", FOLDER_HINT))
    return found


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
    for note in config.deprecations:
        print(f"configuration {source}: deprecated: {note}")
    hint = f"pipelines available: {', '.join(pipelines.known()) or 'none'}"
    problems = [(p, hint) for p in pipelines.check_routes(config)]
    problems += [(p, "") for p in pipelines.check_settings(config)] + folder_problems(config)
    if problems:
        print(f"configuration {source}: {len(problems)} problem(s)")
        for problem, why in problems:
            print(f"  {problem}\n    hint: {why}" if why else f"  {problem}")
        return 1
    print(
        f"configuration {source}: OK — AE title {config.node.ae_title} on port {config.node.port},"
        f" {len(config.peers)} peer(s), {len(config.destinations)} destination(s),"
        f" {len(config.routes)} route(s), data in {config.storage.data_dir},"
        f" index in {_database_name(config)}"
    )
    return 0


def _database_name(config: Config) -> str:
    """Where the index is, for messages: the URL holds no password (config validation refuses one)."""
    return "the embedded SQLite file" if config.storage.database == "sqlite" else config.storage.database


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

    serve = sub.add_parser("serve", help="run the node (DICOM listener, workers, dispatch)", parents=[config_option])
    serve.add_argument(
        "--roles",
        default="all",
        help="what this process does: a comma list of listener, worker, dispatcher, web (default: all);"
        " processes with separate roles share a PostgreSQL storage.database and the data folder"
        " (docs/scaling.md)",
    )
    serve.set_defaults(func=cmd_serve)

    echo = sub.add_parser("echo", help="C-ECHO a configured peer or AE@HOST:PORT", parents=[config_option])
    echo.add_argument("peer")
    echo.add_argument("--calling-ae", help="calling AE title (default: the node's)")
    echo.add_argument("--timeout", type=float, default=10.0)
    echo.set_defaults(func=cmd_echo)

    send = sub.add_parser(
        "send", help="C-STORE files or folders to a configured peer or AE@HOST:PORT", parents=[config_option]
    )
    send.add_argument("peer")
    send.add_argument("files", nargs="+")
    send.add_argument("--calling-ae", help="calling AE title (default: the node's)")
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=cmd_send)

    from node.cli_state import add_parsers as add_state_parsers

    add_state_parsers(sub, config_option)

    from node.cli_db import add_parsers as add_db_parsers

    add_db_parsers(sub, config_option)

    analyze = sub.add_parser(
        "analyze", help="run the routes' pipelines on DICOM files offline", parents=[config_option]
    )
    analyze.add_argument("paths", nargs="*", help="DICOM files or folders")
    analyze.add_argument(
        "--from",
        dest="source",
        metavar="PEER",
        help="retrieve the study from this configured peer (WADO-RS, C-GET or C-MOVE)",
    )
    analyze.add_argument("--study", metavar="UID", help="the StudyInstanceUID to retrieve with --from")
    analyze.add_argument("--out", required=True, help="folder for results, previews and summary.csv")
    analyze.add_argument(
        "--overlays",
        default="",
        help="also write gsps, secondary_capture and/or radiograph_seg (see docs/viewing-results.md), comma-separated",
    )
    analyze.set_defaults(func=cmd_analyze)

    _add_training_parsers(sub)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", help="validate a configuration file and print every problem", parents=[config_option]
    )
    check.add_argument("file", nargs="?", help="the YAML file (default: --config or the embedded defaults)")
    check.set_defaults(func=cmd_config_check)
    return parser


TRAINING_COMMANDS = ("train", "evaluate", "phantom")


def _add_training_parsers(sub: argparse._SubParsersAction) -> None:
    """`train`, `evaluate` and `phantom` come from the top-level `training` package of a source checkout
    (outside the runtime package; its libraries are the `[train]` extra). Without it the commands
    still exist and say how to get it."""
    try:
        training_cli = _training_cli()
    except ImportError as exc:
        reason = str(exc)
        for name in TRAINING_COMMANDS:
            stub = sub.add_parser(name, help=f"{name} a model (needs a source checkout, see --help)", add_help=False)
            stub.add_argument("rest", nargs=argparse.REMAINDER)
            stub.set_defaults(func=lambda args, reason=reason: _no_training(reason))
        return
    training_cli.add_parsers(sub)


def _training_cli():  # type: ignore[no-untyped-def]
    """`training.cli`, from the environment or from the checkout this `node` package lives in."""
    import importlib

    try:
        return importlib.import_module("training.cli")
    except ImportError:
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / "training" / "cli.py").is_file():
            raise
        sys.path.insert(0, str(checkout))
        return importlib.import_module("training.cli")


def _no_training(reason: str) -> int:
    print(
        "fracnode: training and evaluation run from a source checkout with the training extra:"
        " git clone the repository, then pip install -e '.[train]' (or make install) there"
        f" ({reason})",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `fracnode status | head` ends quietly
    args = build_parser().parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
