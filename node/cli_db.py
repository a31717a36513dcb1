"""`fracnode db upgrade`: create or migrate the schema of the database `storage.database` names.

A shared PostgreSQL database is upgraded by this command only, never by a starting node (which
refuses a schema older than its own): the operator decides when the schema changes. The embedded
SQLite file upgrades itself when the node opens it; the command does the same for it.
"""

from __future__ import annotations

import argparse
import sys

from node.store import StoreError, open_configured
from node.store.schema import SCHEMA_VERSION


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from node.cli import _load

    config = _load(args)
    where = (f"SQLite file {config.database_path}" if config.storage.database == "sqlite"
             else config.storage.database)
    try:
        db = open_configured(config, upgrade=True)
    except StoreError as exc:
        print(f"fracnode db upgrade: {where}: {exc}", file=sys.stderr)
        return 1
    before, now = getattr(db, "upgraded", (None, SCHEMA_VERSION))
    db.close()
    if before == now:
        print(f"{where}: schema version {now}, already current")
    elif before is None:
        print(f"{where}: schema version {now} created")
    else:
        print(f"{where}: schema upgraded from version {before} to {now}")
    return 0


def add_parsers(sub: argparse._SubParsersAction, config_option: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser(
        "upgrade", parents=[config_option],
        help="create or migrate the schema of storage.database (run before starting a newer fracnode)")
    upgrade.set_defaults(func=cmd_db_upgrade)
