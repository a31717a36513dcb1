"""Memory a hostile peer can make `fracnode serve` spend, measured on the node's own process.

Targets (issue 20): 1,000 idle connections cost at most 150 MB; a deflate bomb is refused and
costs at most 300 MB of peak memory, at the receiver (C-STORE and STOW-RS) and at every stage
that reads the spool later (start-up recovery); a data set that used to be held whole (big
endian, its study known only after 256 MiB) is streamed to disk.
"""

from __future__ import annotations

import resource
import socket
import struct
import time
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from node.incoming import file_meta
from tests.conftest import API_TOKEN, wait_until
from tests.support import dicomgen
from tests.support.bombs import bomb_instance
from tests.support.served import Served, serve

pytestmark = pytest.mark.slow
MB = 1_000_000 // 1024  # KiB in a megabyte (the targets are in MB)
CT = "1.2.840.10008.5.1.4.1.1.2"


def threads(node: Served) -> int:
    for line in Path(f"/proc/{node.process.pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def settle(node: Served) -> int:
    """The node's resident memory once it stops moving (start-up is over)."""
    previous = node.rss_kib()
    for _ in range(20):
        time.sleep(0.5)
        current = node.rss_kib()
        if abs(current - previous) < 256:
            return current
        previous = current
    return previous


def send_file(port: int, path: Path, sop_class: str, syntax: str) -> int:
    """C-STORE of a file's bytes as they are (pynetdicom reads and sends it in pieces)."""
    ae = AE(ae_title="MEMTEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(sop_class, [syntax])
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACNODE")
    try:
        assert assoc.is_established
        return int(assoc.send_c_store(path).Status)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc.is_established:
            assoc.release()


def test_1000_idle_connections_cost_at_most_150_mb(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # the node inherits it
    node = serve(
        tmp_path, node={"max_connections": 1100, "max_connections_per_host": 1100, "negotiation_timeout_s": 300}
    )
    sockets: list[socket.socket] = []
    try:
        before, idle_threads = settle(node), threads(node)
        for _ in range(1000):
            sockets.append(socket.create_connection(("127.0.0.1", node.port), timeout=30))
        wait_until(lambda: threads(node) >= idle_threads + 1000, timeout_s=60)
        time.sleep(1)
        cost = node.rss_kib() - before
        assert cost <= 150 * MB, f"1,000 idle connections cost {cost / MB:.0f} MB"
        print(f"1,000 idle connections: +{cost / MB:.1f} MB")
    finally:
        for sock in sockets:
            sock.close()
        node.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def bomb_file(folder: Path) -> tuple[Path, str, str]:
    header, data = bomb_instance(2 << 30)  # about 2 MB that inflate to 2 GiB
    path = folder / "bomb.dcm"
    path.write_bytes(file_meta(header.SOPClassUID, header.SOPInstanceUID, DeflatedExplicitVRLittleEndian) + data)
    return path, str(header.StudyInstanceUID), str(header.SOPInstanceUID)


def test_a_deflate_bomb_is_refused_within_300_mb_at_the_receiver_and_at_recovery(tmp_path):
    bomb, study_uid, sop_uid = bomb_file(tmp_path)
    node = serve(tmp_path / "first")
    try:
        fresh_peak = node.rss_kib("VmHWM")
        before = settle(node)
        assert send_file(node.port, bomb, CT, DeflatedExplicitVRLittleEndian) == 0xC210
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + bomb.read_bytes() + b"\r\n--b--\r\n"
        stow = httpx.post(
            f"{node.url}/dicomweb/studies",
            content=body,
            timeout=120,
            headers={
                "Authorization": f"Bearer {API_TOKEN}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            },
        )
        assert stow.status_code == 409 and "C210" in stow.headers["warning"]
        peak = node.rss_kib("VmHWM") - before
        assert peak <= 300 * MB, f"the bomb cost {peak / MB:.0f} MB at the receiver"
        print(f"deflate bomb at the receiver: peak +{peak / MB:.1f} MB")
        assert not list(node.data_dir.rglob("*.dcm"))
    finally:
        node.stop()
    # a bomb in the spool (a crash between rename and index): start-up recovery reads it
    planted = node.data_dir / "spool" / study_uid / f"{sop_uid}.dcm"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(bomb.read_bytes())
    again = serve(tmp_path / "again", storage={"data_dir": str(node.data_dir), "min_free_mb": 0})
    try:
        wait_until(lambda: planted.with_suffix(".unreadable").exists(), timeout_s=60)
        recovery = again.rss_kib("VmHWM") - fresh_peak
        assert recovery <= 300 * MB, f"recovery peaked {recovery / MB:.0f} MB above a fresh node"
        print(f"deflate bomb at recovery: peak +{recovery / MB:.1f} MB over a fresh start")
        rows = httpx.get(f"{again.url}/api/v1/studies", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()
        assert rows == []  # not indexed, so no stage after it ever reads it
    finally:
        again.stop()


def big_endian_late_header(folder: Path, size: int) -> tuple[Path, str]:
    """An Explicit VR Big Endian CT slice whose private (0009,1010) OB of `size` bytes comes before
    its Study Instance UID: the study, hence the file's folder, is known only after `size` bytes."""
    (ds,) = dicomgen.ct_series(1, size=16)
    block = ds.private_block(0x0009, "FRACNODE BULK", create=True)
    block.add_new(0x10, "OB", b"PLACEHOLDER-BULK")
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    at = raw.index(b"PLACEHOLDER-BULK")
    path = folder / "big-endian.dcm"
    with path.open("wb") as out:
        out.write(raw[: at - 4] + struct.pack(">L", size))
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(chunk)
        out.write(raw[at + len(b"PLACEHOLDER-BULK") :])
    return path, str(ds.SOPInstanceUID)


def test_a_256_mib_data_set_is_streamed_to_disk_not_held(tmp_path):
    path, sop_uid = big_endian_late_header(tmp_path, 256 << 20)
    node = serve(tmp_path / "node")
    try:
        before = settle(node)
        assert send_file(node.port, path, CT, ExplicitVRBigEndian) == 0x0000
        peak = node.rss_kib("VmHWM") - before
        assert peak <= 150 * MB, f"receiving 256 MiB cost {peak / MB:.0f} MB"
        print(f"256 MiB big endian data set: peak +{peak / MB:.1f} MB")
        (stored,) = node.data_dir.rglob(f"{sop_uid}.dcm")
        assert stored.stat().st_size > 256 << 20
        assert not list((node.data_dir / "spool" / ".incoming").iterdir())  # parked, then moved
    finally:
        node.stop()
