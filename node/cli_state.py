"""`fracnode status` and `fracnode analyze-again`: the commands that read or change a node's state
in its data folder directly (SQLite), whether the node runs or not."""

from __future__ import annotations

import argparse
import fcntl
import getpass
import os
import time
from pathlib import Path

from node.config import Config
from node.dispatch.health import destination_health
from node.store import StoreError, associations, jobs, open_configured, outbox, studies


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    seconds = max(0, now - then)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago" if seconds < 7200 else f"{seconds / 3600:.1f}h ago"


def node_running(data_dir: Path) -> bool:
    """Whether a node holds the data folder's lock (node.service takes it for its lifetime)."""
    path = data_dir / "fracnode.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def status(config: Config, limit: int) -> int:
    if config.storage.database == "sqlite" and not config.database_path.exists():
        print(f"no node state in {config.storage.data_dir} yet (the node has not run with this data_dir)")
        return 0
    try:
        db = open_configured(config, readonly=True)
    except StoreError as exc:
        print(f"fracnode status: database {config.storage.database}: {exc}")
        return 1
    now = time.time()
    counts = jobs.state_counts(db)
    print("jobs:    " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    waiting = outbox.counts_by_state(db)
    print("outbox:  " + (", ".join(f"{dest} {state} {n}" for dest, state, n in waiting) or "empty"))
    troubled = [h for h in destination_health(db, [d.name for d in config.destinations]) if h.in_trouble(now)]
    for health in troubled:
        print(f"TROUBLE: destination {health.name}: {health.trouble(now)}")
    print(f"studies receiving: {studies.count_pending(db)}")
    print("\nrecent studies:")
    for study in studies.listed(db, limit):
        state = "receiving" if study.pending else (study.route_status or "complete")
        print(f"  {study.study_uid}  rev {study.revision}  last instance {_age(now, study.last_received_at)}  {state}")
    print("\nrecent jobs:")
    for row in jobs.recent(db, limit):
        job = row.job
        took = f" {row.finished_at - row.started_at:.1f}s" if row.finished_at and row.started_at else ""
        detail = row.last_error or row.summary
        print(f"  #{job.id} {job.pipeline} ({job.route}) {row.state}{took}"
              f" attempts {job.attempts}/{row.max_attempts} study {job.study_instance_uid}"
              + (f"\n      {detail}" if detail else ""))
    print("\nrecent associations:")
    for trail in associations.recent(db, limit):
        print(f"  {_age(now, trail.started_at)}  {trail.peer_ae} {trail.peer_address}  {trail.outcome}"
              f"  received {trail.instances_received} failed {trail.instances_failed}"
              + (f"  ({trail.reason})" if trail.reason else ""))
    db.close()
    return 0


def analyze_again(config: Config, study_uid: str) -> int:
    """Queue a new analysis of a held study; a running node starts it within a second."""
    from node.assembly import StudyNotHeld, request_analysis

    if config.storage.database == "sqlite" and not config.database_path.exists():
        print(f"fracnode analyze-again: no node state in {config.storage.data_dir}"
              " (the node has not run with this data_dir)")
        return 1
    try:
        db = open_configured(config)
    except StoreError as exc:
        print(f"fracnode analyze-again: database {config.storage.database}: {exc}")
        return 1
    try:
        asked = request_analysis(db, study_uid)
    except StudyNotHeld as exc:
        print(f"fracnode analyze-again: {exc}")
        return 1
    finally:
        db.close()
    print(f"study {study_uid}: {asked.message}")
    _audit_operator(config, f"fracnode analyze-again {study_uid} (command line)", study_uid)
    if not node_running(config.storage.data_dir):
        print(f"the node is not running with {config.storage.data_dir}: it analyses the study when it starts")
    return 0


def _audit_operator(config: Config, what: str, study_uid: str) -> None:
    """An operator's action from the command line goes into the audit trail, as the API's do
    (Use of Restricted Function; the local user, no address)."""
    from node.audit import Audit

    try:
        audit = Audit(config)
    except OSError as exc:  # e.g. another user's data folder: the action stands, say it is not audited
        print(f"not recorded in the audit trail {config.audit_path}: {exc.strerror}")
        return
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a name (containers)
        user = "unknown"
    try:
        audit.operator_action(f"{user} (uid {os.getuid()})", "", what, study_uid)
    finally:
        audit.trail.close()


def add_parsers(sub: argparse._SubParsersAction, config_option: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    from node.cli import _load

    status_parser = sub.add_parser("status", help="queue, destinations in trouble, recent studies, jobs and"
                                   " associations", parents=[config_option])
    status_parser.add_argument("--limit", type=int, default=10)
    status_parser.set_defaults(func=lambda args: status(_load(args), args.limit))

    again = sub.add_parser(
        "analyze-again", parents=[config_option],
        help="analyse a study the node holds again (an identical resend changes nothing)")
    again.add_argument("study_uid", metavar="STUDY_UID", help="the Study Instance UID")
    again.set_defaults(func=lambda args: analyze_again(_load(args), args.study_uid))
