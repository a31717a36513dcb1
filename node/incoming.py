"""One instance arriving in fragments (a C-STORE data set, a STOW-RS part), written to the spool
as it arrives and acknowledged only when whole.

Every fragment goes through a `node.scan.DataSetScan`, which walks the data set to its end and
finds the indexed attributes on the way (usually in the first fragment). Until they are found
the fragments wait in memory, at most `PENDING_LIMIT` bytes; then they go to a temporary file
beside the instance's final name, or, when the attributes come later than that, to one in the
spool's `.incoming` folder that `commit()` renames into place. Fragments are hashed on the way
only when the SOP Instance UID is already indexed (a resend, which is a duplicate when its bytes
are identical; see `node.spool`). `commit()` finishes the scan, so a data set cut short, with a
sequence left open or an element longer than what arrived, is refused (PS3.4 B.2.3: 0xC210), and
checks the UIDs against what the sender announced (0xA900); then it makes the file durable in
the order the spool promises (fsync, rename, directory fsync) and commits its index row.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.files import (
    OutOfSpace,
    check_free_space,
    create_temporary,
    file_digest,
    fsync_dir,
    make_directory,
    remove_temporary,
    write_failure,
)
from node.header import Header, header_from_elements
from node.scan import DataSetScan, ScanLimits, is_image_storage
from node.spool import Spool, Stored

_PREAMBLE = b"\0" * 128 + b"DICM"  # PS3.10 7.1
PENDING_LIMIT = 1 << 18  # bytes held in memory while the indexed attributes have not arrived
INCOMING_FOLDER = ".incoming"  # in the spool: files of instances whose study is not known yet


def _meta_element(group_element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" " if vr == b"SH" else b"\0"  # PS3.5 6.2: even length; UI pads with NUL
    if vr == b"OB":
        return struct.pack("<HH2s2xL", 0x0002, group_element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, group_element, vr, len(value)) + value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1) for a received data set."""
    group = b"".join((
        _meta_element(0x0001, b"OB", b"\0\1"),
        _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii", "replace")),
        _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii", "replace")),
        _meta_element(0x0010, b"UI", transfer_syntax.encode("ascii")),
        _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
        _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
    ))
    length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(group))
    return _PREAMBLE + length + group


def _write_all(fd: int, buffers: Sequence[bytes | memoryview]) -> None:
    written = os.writev(fd, buffers)
    total = sum(len(b) for b in buffers)
    if written == total:
        return
    rest = memoryview(b"".join(buffers))[written:]  # a short write: rare, finish it plainly
    while rest:
        rest = rest[os.write(fd, rest) :]


class SpareFile:
    """An empty temporary file made in the folder of an association's last instance while the
    sender prepares its next one, so that creating a file (0.2-0.6 ms of kernel time here) is
    off the path between an instance's last byte and its response. Not thread-safe: one per
    association. A spare left over is removed by `close()`, or by `Spool.reconcile` after a crash.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._temp: Path | None = None

    def prepare(self, folder: Path) -> None:
        """Have a spare in `folder` (made only if there is none there)."""
        if self._temp is not None and self._temp.parent == folder:
            return
        self.close()
        try:
            self._fd, self._temp = create_temporary(folder / "spare")
        except OutOfSpace:
            pass  # the next instance finds out and gets its own status

    def take(self, path: Path) -> tuple[int, Path] | None:
        """The spare as the temporary file for `path`, when it is in `path`'s folder."""
        if self._temp is None or self._temp.parent != path.parent:
            return None
        taken = (self._fd, self._temp)
        self._fd, self._temp = -1, None
        return taken

    def close(self) -> None:
        remove_temporary(self._fd, self._temp)
        self._fd, self._temp = -1, None


class Incoming:
    """An instance being received: `add()` each fragment, then `commit()` or `discard()`.

    `add()` and `commit()` raise UnreadableInstance (MismatchedInstance when the UIDs are not the
    announced ones) or OutOfSpace; after either, call `discard()` (it leaves no temporary file)
    and drop the remaining fragments.
    """

    def __init__(
        self,
        spool: Spool,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        calling_ae: str,
        association_id: str,
        received_meta: bytes | None = None,
        check: Callable[[Header], None] | None = None,
        spare: SpareFile | None = None,
        limits: ScanLimits | None = None,
        announced_by: str = "request",
    ) -> None:
        """`sop_class_uid`, `sop_instance_uid`: what the sender announced ('' when it did not),
        which the data set must match (`announced_by` names the announcement in messages);
        `received_meta`: the preamble and meta group as received (STOW-RS Part 10 files), else
        one is made; `check` sees the header before the file is created and may raise to refuse;
        `spare`: a file made ahead, used when it is in the instance's folder."""
        self.spare = spare
        self.spool = spool
        self.transfer_syntax = transfer_syntax
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.calling_ae = calling_ae
        self.association_id = association_id
        self.check = check
        self.announced_by = announced_by
        self._meta = received_meta if received_meta is not None else file_meta(
            sop_class_uid, sop_instance_uid, transfer_syntax
        )
        # a UID not yet indexed needs no digest (see node.spool); an unknown UID (STOW-RS) might
        self._hash = (
            hashlib.sha256(self._meta)
            if not sop_instance_uid or spool.is_indexed(sop_instance_uid)
            else None
        )
        self._scan = DataSetScan(transfer_syntax, limits or spool.limits)
        self._size = len(self._meta)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._header: Header | None = None
        self._path = Path()
        self._temp: Path | None = None
        self._fd = -1

    def add(self, fragment: bytes | memoryview) -> None:
        self._scan.feed(fragment)
        if self._hash is not None:
            self._hash.update(fragment)  # hashlib releases the GIL for fragments this large
        self._size += len(fragment)
        if self._fd >= 0:
            self._write((fragment,))
            if self._header is None and self._scan.header_ready:
                self._header = self._checked_header()
            return
        self._pending.append(bytes(fragment))
        self._pending_size += len(fragment)
        if self._scan.header_ready:
            self._header = self._checked_header()
            self._start_file(self.spool.path_for(self._header))
        elif self._pending_size > PENDING_LIMIT:
            self._start_file(self.spool.root / INCOMING_FOLDER / "unknown")

    def _checked_header(self) -> Header:
        header = header_from_elements(
            self._scan.elements, self.transfer_syntax, self.sop_class_uid or None,
            self.sop_instance_uid or None, self.announced_by,
        )
        if self.check is not None:
            self.check(header)
        return header

    def _start_file(self, path: Path) -> None:
        taken = self.spare.take(path) if self.spare is not None else None
        self._fd, self._temp = taken if taken is not None else create_temporary(path)
        self._path = path
        pending, self._pending, self._pending_size = self._pending, [], 0
        self._write((self._meta, *pending))

    def _write(self, buffers: Sequence[bytes | memoryview]) -> None:
        try:
            _write_all(self._fd, buffers)
        except OSError as exc:
            self.discard()
            raise write_failure(self._path, exc) from exc

    def commit(self) -> Stored:
        """Make the instance durable and indexed once it is whole; a resend of identical bytes
        changes nothing."""
        self._scan.finish()
        if self._header is None:
            self._header = self._checked_header()
        header = self._header
        self._scan.check_pixel_data(is_image_storage(header.sop_class_uid))
        path = self.spool.path_for(header)
        if self._fd < 0:
            self._start_file(path)
        temp = self._temp
        assert temp is not None
        held = self.spool.held_digest(header.sop_instance_uid, path)
        digest = ""
        if held is not None:
            try:
                # not hashed on the way when the UID arrived while this instance was under way
                digest = self._hash.hexdigest() if self._hash is not None else file_digest(temp)
            except OSError as exc:
                self.discard()
                raise write_failure(path, exc) from exc
            if digest == held:
                self.discard()
                return Stored(header, path, duplicate=True)
        try:
            check_free_space(path.parent if temp.parent == path.parent else temp.parent, 0,
                             self.spool.min_free_bytes)  # the bytes are written
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if temp.parent != path.parent:  # parked in .incoming: its study folder may be new
                make_directory(path.parent)
            os.replace(temp, path)
            self._temp = None
            fsync_dir(path.parent)
            if temp.parent != path.parent:
                fsync_dir(temp.parent)
        except OSError as exc:
            self.discard()
            raise write_failure(path, exc) from exc
        except BaseException:
            self.discard()
            raise
        self.spool.index(header, path, digest, self._size, self.calling_ae, self.association_id)
        return Stored(header, path, duplicate=False)

    def discard(self) -> None:
        """Forget the instance: close and remove the temporary file, drop buffered fragments."""
        self._pending = []
        self._pending_size = 0
        remove_temporary(self._fd, self._temp)
        self._fd, self._temp = -1, None

