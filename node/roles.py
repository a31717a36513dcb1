"""What one `fracnode serve` process does (`--roles`), and the locks that keep two processes from
doing the same thing on one host.

- listener: the DIMSE listener, study completion, the spool's janitor and retention;
- worker: claims and runs jobs, stages their results;
- dispatcher: claims and sends staged results;
- web: dashboard, REST API, /metrics, STOW-RS and pulls.

With the embedded SQLite index one process runs every role and owns the data folder
(`<data_dir>/fracnode.lock`). With PostgreSQL any number of processes, on any hosts, share the
database and the data folder, and claim their work there (jobs and outbox rows under leases,
study completion under row locks); a lock is needed only where two processes on one host would
collide: a listener per host and DICOM port, the web per host and HTTP port.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from node.config import Config

ROLES = ("listener", "worker", "dispatcher", "web")


class NodeAlreadyRunning(RuntimeError):
    pass


@dataclass(frozen=True)
class Roles:
    names: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Roles:
        """A comma list of roles, e.g. "listener,web"; "all" (or nothing) is every role."""
        names = [name.strip().lower() for name in text.split(",") if name.strip()]
        if not names or names == ["all"]:
            return cls(frozenset(ROLES))
        unknown = [name for name in names if name not in ROLES]
        if unknown:
            raise ValueError(
                f"--roles: unknown role {', '.join(map(repr, unknown))}; use a comma list of {', '.join(ROLES)}"
            )
        return cls(frozenset(names))

    @classmethod
    def every(cls) -> Roles:
        return cls(frozenset(ROLES))

    def __contains__(self, role: object) -> bool:
        return role in self.names

    @property
    def all(self) -> bool:
        return self.names == frozenset(ROLES)

    def __str__(self) -> str:
        return ",".join(role for role in ROLES if role in self.names)


def shared(config: Config) -> bool:
    """Whether processes may share this node's state: its index is a PostgreSQL database."""
    return config.storage.database != "sqlite"


def check(config: Config, roles: Roles) -> None:
    """Refuse a split of roles the configuration cannot share (ValueError says what to change)."""
    if not roles.all and not shared(config):
        raise ValueError(
            f"--roles {roles}: processes with separate roles share their state through PostgreSQL;"
            " with the embedded SQLite index one process runs every role. Set storage.database to"
            " postgresql://user@host:port/database (docs/scaling.md), or leave out --roles"
        )


def take_locks(config: Config, roles: Roles) -> list[int]:
    """The locks this process needs; raises NodeAlreadyRunning naming what holds them."""
    data_dir = config.storage.data_dir
    if not shared(config):
        message = f"another fracnode process uses {data_dir}; stop it or set storage.data_dir"
        return [_lock(data_dir / "fracnode.lock", message)]
    folder = data_dir / "locks"
    folder.mkdir(mode=0o700, exist_ok=True)
    host = socket.gethostname()
    wanted: list[tuple[Path, str]] = []
    # port 0 asks the system for a free port: no other process can get the same one
    if "listener" in roles and config.node.port:
        wanted.append(
            (
                folder / f"listener-{host}-{config.node.port}.lock",
                f"another fracnode listener on {host} uses DICOM port {config.node.port}; stop it, or set"
                " node.port (FRACNODE_PORT) for this one",
            )
        )
    if "web" in roles and config.web.enabled and config.web.port:
        wanted.append(
            (
                folder / f"web-{host}-{config.web.port}.lock",
                f"another fracnode web role on {host} uses HTTP port {config.web.port}; stop it, or set"
                " web.port (FRACNODE_HTTP_PORT) for this one",
            )
        )
    held: list[int] = []
    try:
        for path, message in wanted:
            held.append(_lock(path, message))
    except NodeAlreadyRunning:
        release(held)
        raise
    return held


def release(locks: list[int]) -> None:
    for fd in locks:
        os.close(fd)


def _lock(path: Path, message: str) -> int:
    # flock is released by the kernel when the process dies: no stale lock files
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise NodeAlreadyRunning(message) from None
    return fd
