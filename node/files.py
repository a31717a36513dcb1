"""Durable files: written to a temporary name, fsynced, renamed, the folder fsynced.

A crash leaves the old file, the new file, or neither, never a part. The spool keeps received
instances this way and the outbox and folder destinations their results (node.spool,
node.dispatch).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import uuid
from pathlib import Path

from node import owners
from node.logs import event

log = logging.getLogger("fracnode.spool")
TEMP_SUFFIX = ".tmp"
HASH_CHUNK = 1 << 20


class OutOfSpace(Exception):
    """A file cannot be written (disk full, below the free-space floor, unwritable); the ingest
    edge answers it with a DICOM status (0xA700), dispatch retries."""


def private(path: Path) -> None:
    """Make an existing folder (0700) or file (0600) the node's user's alone: state is patient data."""
    try:
        path.chmod(0o700 if path.is_dir() else 0o600)
    except OSError as exc:
        event(log, logging.WARNING, "cannot make private", path=str(path), reason=exc.strerror)


def private_dirs(directory: Path) -> None:
    """`directory` and its missing parents, each 0700 (mkdir(parents=True) gives parents the
    umask's mode): what they will hold is patient data."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: Path) -> None:
    """Create `directory` (and parents) if missing, durably: a new entry is fsynced in its parent."""
    try:
        if directory.is_dir():
            return
        private_dirs(directory)
        fsync_dir(directory.parent)
    except OSError as exc:
        raise OutOfSpace(f"cannot use {directory}: {exc.strerror}") from exc


def check_free_space(directory: Path, size: int, min_free_bytes: int) -> None:
    """Raise OutOfSpace when `size` more bytes would leave less than `min_free_bytes` free."""
    if not min_free_bytes:
        return
    try:
        stat = os.statvfs(directory)
    except OSError as exc:
        raise OutOfSpace(f"cannot use {directory}: {exc.strerror}") from exc
    free = stat.f_bavail * stat.f_frsize
    if free - size < min_free_bytes:
        raise OutOfSpace(
            f"only {free // 2**20} MiB free in {directory}; the node keeps"
            f" {min_free_bytes // 2**20} MiB free (storage.min_free_mb)"
        )


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def modified_before(path: Path, cutoff: float) -> bool:
    """Whether the file or folder was last modified before `cutoff` (Unix seconds); False when
    it is gone."""
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside `path`, naming this process (node.owners); `Spool.reconcile`
    removes leftovers after a crash."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex}.{owners.this_process()}{TEMP_SUFFIX}"


def write_failure(path: Path, exc: OSError) -> OutOfSpace:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EFBIG):
        return OutOfSpace(f"cannot write {path.name}: {exc.strerror}")
    return OutOfSpace(f"cannot write {path.name}: {exc}")


def create_temporary(path: Path) -> tuple[int, Path]:
    """An empty temporary file beside `path`, open for writing: (descriptor, its path)."""
    make_directory(path.parent)
    temp = temporary_path(path)
    try:
        return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), temp
    except OSError as exc:
        raise write_failure(path, exc) from exc


def remove_temporary(fd: int, temp: Path | None) -> None:
    """Close a temporary file's descriptor (-1: none) and remove the file, ignoring failures."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    if temp is not None:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes, min_free_bytes: int = 0) -> None:
    """Write `data` to `path` so that a crash leaves either the old file, the new file, or neither.

    Raises OutOfSpace when the disk is full, below `min_free_bytes`, or not writable; no
    temporary file is left behind in that case.
    """
    directory = path.parent
    make_directory(directory)
    check_free_space(directory, len(data), min_free_bytes)
    fd, temp = create_temporary(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temp, path)
        fsync_dir(directory)
    except OSError as exc:
        remove_temporary(fd, temp)
        raise write_failure(path, exc) from exc
