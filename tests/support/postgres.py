"""A real PostgreSQL 15 cluster for the tests: made with initdb in a temporary folder, on a loopback port.

No system service and no root-owned state: the cluster's files belong to the user that runs it.
PostgreSQL refuses to run as root, so under root (CI) the cluster runs as Debian's `postgres`
user through `runuser`. The node connects over TCP with a password read from a passfile
(`PGPASSFILE`), as a deployment would; `stop()` / `start()` let a test take the database away.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
USER, PASSWORD, DATABASE = "fracnode", "fracnode-test-password", "fracnode"


def available() -> str:
    """Why a cluster cannot be made here ("" when it can)."""
    if not (BIN / "initdb").is_file():
        return f"{BIN / 'initdb'} not found: apt-get install postgresql-15 (scripts/install-system-deps does)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """One initdb'd cluster in a fresh folder of /tmp, listening on 127.0.0.1:`port` (and a socket there).

    The folder is not under pytest's tmp_path: that is private to root, and the `postgres` user
    that runs the cluster under root must reach it."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="fracnode-pg-"))
        self.data = self.folder / "data"
        self.sockets = self.folder / "sockets"
        self.port = _free_port()
        self.passfile = self.folder / "pgpass"
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        """What `storage.database` is set to: no password inside (it comes from PGPASSFILE)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def environment(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*(("runuser", "-u", "postgres", "--") if self._as_root else ()), *command]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)

    def create(self) -> Cluster:
        self.sockets.mkdir(exist_ok=True)
        if self._as_root:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.sockets}'\nfsync = on\nmax_connections = 200\n")
        self.start()
        self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        self.passfile.write_text(f"127.0.0.1:{self.port}:{DATABASE}:{USER}:{PASSWORD}\n")
        self.passfile.chmod(0o600)
        return self

    def start(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def start_if_stopped(self) -> None:
        """A test that stopped the cluster and failed before starting it leaves it stopped."""
        if not self.running():
            self.start()

    def empty(self) -> None:
        """Drop every table of the test database: the next test creates its schema afresh."""
        self.psql(f"DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION {USER}", DATABASE)

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self._run(str(BIN / "psql"),
                         "-h", str(self.sockets), "-p", str(self.port), "-U", "postgres", "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-At", "-c", sql)
        return done.stdout

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
