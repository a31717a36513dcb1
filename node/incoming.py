"""One instance arriving in fragments (a C-STORE data set), written to the spool as it arrives.

The fragments are kept in memory until the indexed attributes are found in them (usually in the
first fragment), then go straight to a temporary file beside the instance's final name. They are
hashed on the way only when the SOP Instance UID is already indexed (a resend, which is a
duplicate when its bytes are identical; see `node.spool`). `commit()` makes the file durable in
the order the spool promises (fsync, rename, directory fsync) and commits its index row; only
then may the sender be told "success".
Data sets the byte scan does not walk (deflated, big endian, odd encodings) are kept whole in
memory and stored by `Spool.store`, as every instance was before.
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
    remove_temporary,
    write_failure,
)
from node.header import Header, NotScannable, header_from_elements, is_scannable, scan_elements
from node.spool import Spool, Stored

_PREAMBLE = b"\0" * 128 + b"DICM"  # PS3.10 7.1


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

    `add()` and `commit()` raise UnreadableInstance or OutOfSpace; after either, call
    `discard()` (it leaves no temporary file) and drop the remaining fragments.
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
    ) -> None:
        """`received_meta`: the preamble and meta group as received (STOW-RS Part 10 files), else
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
        self._meta = received_meta if received_meta is not None else file_meta(
            sop_class_uid, sop_instance_uid, transfer_syntax
        )
        # a UID not yet indexed needs no digest (see node.spool); an unknown UID (STOW-RS) might
        self._hash = (
            hashlib.sha256(self._meta)
            if not sop_instance_uid or spool.is_indexed(sop_instance_uid)
            else None
        )
        self._size = len(self._meta)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._scan = is_scannable(transfer_syntax)
        self._next_scan = 0
        self._header: Header | None = None
        self._path = Path()
        self._temp: Path | None = None
        self._fd = -1

    def add(self, fragment: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(fragment)  # hashlib releases the GIL for fragments this large
        self._size += len(fragment)
        if self._fd >= 0:
            self._write((fragment,))
            return
        self._pending.append(bytes(fragment))
        self._pending_size += len(fragment)
        if self._scan and self._pending_size >= self._next_scan:
            self._start_file()

    def _start_file(self) -> None:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        try:
            elements = scan_elements(data, self.transfer_syntax)
        except NotScannable:
            self._scan = False  # pydicom reads the whole data set at commit
            return
        if elements is None:
            self._next_scan = 2 * self._pending_size  # rescan after doubling: linear in all
            return
        header = header_from_elements(
            elements, self.transfer_syntax, self.sop_class_uid, self.sop_instance_uid or None
        )
        if self.check is not None:
            self.check(header)
        path = self.spool.path_for(header)
        taken = self.spare.take(path) if self.spare is not None else None
        self._fd, temp = taken if taken is not None else create_temporary(path)
        self._header, self._path, self._temp = header, path, temp
        self._pending = []
        self._write((self._meta, data))

    def _write(self, buffers: Sequence[bytes | memoryview]) -> None:
        try:
            _write_all(self._fd, buffers)
        except OSError as exc:
            self.discard()
            raise write_failure(self._path, exc) from exc

    def commit(self) -> Stored:
        """Make the instance durable and indexed; a resend of identical bytes changes nothing."""
        if self._header is None:
            raw = b"".join((self._meta, *self._pending))
            self._pending = []
            return self.spool.store(raw, self.calling_ae, self.association_id,
                                    self.sop_instance_uid or None, self.check)
        header, path, temp = self._header, self._path, self._temp
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
            check_free_space(path.parent, 0, self.spool.min_free_bytes)  # the bytes are written
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(temp, path)
            self._temp = None
            fsync_dir(path.parent)
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
        remove_temporary(self._fd, self._temp)
        self._fd, self._temp = -1, None
