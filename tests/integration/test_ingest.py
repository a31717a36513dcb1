"""The node's own C-STORE receive path under conditions DCMTK's tools do not produce.

PDUs far smaller and far larger than the read chunk, encodings the byte scan leaves to pydicom,
the association limit, and peers that abort, vanish or break PS3.8 in the middle of a data set.
A raw client built from pynetdicom's PDU and DIMSE encoders sends exactly the bytes a test needs.
"""

from __future__ import annotations

import socket
import struct
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import node_config, wait_until
from tests.support import dicomgen
from tests.support.rawdimse import associate_rq
from tests.unit.test_header import encoded, with_sequences

ABORT = 0x07


def rows(node: Any, sql: str) -> list[dict[str, Any]]:
    return [dict(r) for r in node.db.query(sql)]


def spool_files(node: Any) -> list[Path]:
    return sorted(p for p in node.config.spool_dir.rglob("*") if p.is_file())


def dataset_bytes(path: Path) -> bytes:
    (group_length,) = struct.unpack_from("<L", path.read_bytes(), 132 + 8)
    return path.read_bytes()[132 + 12 + group_length :]


def send_files(port: int, files: list[Path], syntaxes: list[str]) -> list[int]:
    """pynetdicom sends each file's bytes as they are on disk over one association."""
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CTImageStorage, syntaxes)
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACNODE")
    try:
        assert assoc.is_established
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc.is_established:
            assoc.release()


class RawScu:
    """An association requestor that sends whatever PDUs a test gives it."""

    def __init__(self, port: int, contexts: list[tuple[str, list[str]]]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(associate_rq("RAWSCU", contexts).encode())
        pdu_type, body = self.receive()
        assert pdu_type == 0x02, f"association not accepted (PDU type {pdu_type})"
        accept = A_ASSOCIATE_AC()
        accept.decode(bytes((pdu_type, 0)) + len(body).to_bytes(4, "big") + body)
        self.max_pdu = accept.to_primitive().maximum_length_received or 0

    def receive(self) -> tuple[int, bytes]:
        header = self._exactly(6)
        pdu_type, length = header[0], int.from_bytes(header[2:], "big")
        return pdu_type, self._exactly(length)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def store_pdus(self, context_id: int, sop_instance: str, data: bytes) -> list[bytes]:
        """The P-DATA-TF PDUs pynetdicom makes of a C-STORE-RQ with this data set."""
        primitive = C_STORE()
        primitive.MessageID = 1
        primitive.AffectedSOPClassUID = CTImageStorage
        primitive.AffectedSOPInstanceUID = sop_instance
        primitive.Priority = 2
        primitive.DataSet = BytesIO(data)
        message = C_STORE_RQ()
        message.primitive_to_message(primitive)
        pdus = []
        for p_data in message.encode_msg(context_id, 4096):
            pdu = P_DATA_TF()
            pdu.from_primitive(p_data)
            pdus.append(pdu.encode())
        return pdus

    def response(self) -> Dataset:
        pdu_type, body = self.receive()
        assert pdu_type == 0x04, f"PDU type {pdu_type}"
        return decode_dataset(BytesIO(body[6:]), True, True)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("max_pdu", [4096, 0])
def test_big_instances_arrive_whole_in_small_and_in_huge_pdus(tmp_path, start_node, max_pdu):
    """max_pdu 4096: hundreds of PDUs per instance; 0: pynetdicom sends one 2 MiB PDV."""
    node = start_node(node_config(tmp_path / "data", node={"max_pdu": max_pdu}))
    series = dicomgen.ct_series(2, size=1024)
    files = dicomgen.write(series, tmp_path / "ct")
    assert send_files(node.ingest.port, files, [ExplicitVRLittleEndian]) == [0, 0]
    for ds, original in zip(series, files, strict=True):
        stored = node.config.spool_dir / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(original)
    assert len(rows(node, "SELECT * FROM instances")) == 2


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_sequences_of_undefined_length_and_big_endian_are_stored_and_indexed(tmp_path, start_node, syntax):
    node = start_node(node_config(tmp_path / "data"))
    ds = with_sequences(dicomgen.ct_series(1, size=32, description="CT Neck Bone")[0], undefined=True)
    raw, _ = encoded(ds, syntax)
    path = tmp_path / "in.dcm"
    path.write_bytes(raw)
    assert send_files(node.ingest.port, [path], [syntax]) == [0]
    (row,) = rows(node, "SELECT * FROM instances")
    assert (row["sop_instance_uid"], row["series_uid"], row["transfer_syntax_uid"]) == (
        ds.SOPInstanceUID,
        ds.SeriesInstanceUID,
        syntax,
    )
    assert (row["series_description"], row["image_type"]) == ("CT Neck Bone", "ORIGINAL\\PRIMARY\\AXIAL")
    stored = Path(row["path"])
    assert dataset_bytes(stored) == dataset_bytes(path)
    assert dcmread(stored).ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"


def test_associations_beyond_the_limit_are_rejected_for_now(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", node={"max_associations": 1}))
    first = RawScu(node.ingest.port, [(Verification, [ImplicitVRLittleEndian])])
    try:
        ae = AE(ae_title="SECOND")
        ae.add_requested_context(Verification)
        second = ae.associate("127.0.0.1", node.ingest.port, ae_title="FRACNODE")
        assert second.is_rejected
        reply = second.acceptor.primitive  # transient, service provider, local limit exceeded
        assert (reply.result, reply.result_source, reply.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        first.close()
    (rejected,) = wait_until(lambda: rows(node, "SELECT * FROM associations WHERE outcome = 'rejected'"))
    assert rejected["reason"] == "too many associations (node.max_associations)"
    wait_until(lambda: rows(node, "SELECT * FROM associations WHERE outcome = 'aborted'"))
    ae = AE(ae_title="THIRD")
    ae.add_requested_context(Verification)
    third = ae.associate("127.0.0.1", node.ingest.port, ae_title="FRACNODE")
    assert third.is_established  # the slot is free again
    third.release()


@pytest.mark.parametrize("ending", ["a-abort", "connection-closed", "unknown-pdu", "release"])
def test_a_data_set_cut_short_leaves_nothing_and_the_node_keeps_serving(tmp_path, start_node, ending):
    node = start_node(node_config(tmp_path / "data"))
    ds = dicomgen.ct_series(1, size=256)[0]
    raw, offset = encoded(ds)
    scu = RawScu(node.ingest.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
    pdus = scu.store_pdus(1, ds.SOPInstanceUID, raw[offset:])
    for pdu in pdus[: len(pdus) // 2]:  # the command and half the data set
        scu.sock.sendall(pdu)
    wait_until(lambda: spool_files(node))  # the temporary file was started
    if ending == "a-abort":
        scu.sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    elif ending == "unknown-pdu":
        scu.sock.sendall(b"\x0b\x00\x00\x00\x00\x02\x00\x00")
        pdu_type, body = scu.receive()
        assert (pdu_type, body[3]) == (ABORT, 0x01)  # A-ABORT: unrecognized PDU (PS3.8 9.3.8)
    elif ending == "release":
        scu.sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        assert scu.receive()[0] == 0x06  # A-RELEASE-RP
    if ending != "connection-closed":
        assert scu.closed_by_peer() or ending == "release"
    scu.close()
    outcome = "released" if ending == "release" else "aborted"
    (audit,) = wait_until(lambda: rows(node, f"SELECT * FROM associations WHERE outcome = '{outcome}'"))
    assert (audit["instances_received"], audit["instances_failed"]) == (0, 0)
    assert spool_files(node) == []
    assert rows(node, "SELECT * FROM instances") == []
    assert send_files(node.ingest.port, [dicomgen.write([ds], tmp_path / "again")[0]], [ExplicitVRLittleEndian]) == [0]


def test_a_pdv_on_a_context_that_was_not_accepted_aborts(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    ds = dicomgen.ct_series(1, size=16)[0]
    raw, offset = encoded(ds)
    scu = RawScu(node.ingest.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
    for pdu in scu.store_pdus(9, ds.SOPInstanceUID, raw[offset:]):
        scu.sock.sendall(pdu)
    pdu_type, body = scu.receive()
    assert (pdu_type, body[2], body[3]) == (ABORT, 0x02, 0x06)  # provider, invalid parameter value
    scu.close()
    wait_until(lambda: rows(node, "SELECT * FROM associations WHERE outcome = 'aborted'"))
    assert spool_files(node) == []


def test_a_c_store_on_the_verification_context_is_refused(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    ds = dicomgen.ct_series(1, size=16)[0]
    raw, offset = encoded(ds)
    scu = RawScu(node.ingest.port, [(Verification, [ImplicitVRLittleEndian])])
    for pdu in scu.store_pdus(1, ds.SOPInstanceUID, raw[offset:]):
        scu.sock.sendall(pdu)
    response = scu.response()
    assert (response.CommandField, response.Status) == (0x8001, 0x0122)
    scu.sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    assert scu.receive()[0] == 0x06
    scu.close()
    (audit,) = wait_until(lambda: rows(node, "SELECT * FROM associations WHERE outcome = 'released'"))
    assert (audit["instances_received"], audit["instances_failed"]) == (0, 1)
    assert spool_files(node) == []


def test_a_peer_that_falls_silent_mid_data_set_is_aborted_after_the_network_timeout(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", node={"network_timeout_s": 0.5}))
    ds = dicomgen.ct_series(1, size=256)[0]
    raw, offset = encoded(ds)
    scu = RawScu(node.ingest.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
    pdus = scu.store_pdus(1, ds.SOPInstanceUID, raw[offset:])
    for pdu in pdus[:3]:
        scu.sock.sendall(pdu)
    pdu_type, _ = scu.receive()  # nothing more is sent: the node gives up
    assert pdu_type == ABORT
    assert scu.closed_by_peer()
    scu.close()
    wait_until(lambda: rows(node, "SELECT * FROM associations WHERE outcome = 'aborted'"))
    assert spool_files(node) == []


def test_a_series_in_one_association_leaves_only_its_instances(tmp_path, start_node):
    """From the third instance on, each one is written into a file made while the sender
    readied it (a spare); when the association is released no spare is left behind, and a
    later series of another study in the same association gets files of its own."""
    node = start_node(node_config(tmp_path / "data"))
    first = dicomgen.ct_series(6, size=64)
    second = dicomgen.ct_series(3, size=64)
    files = dicomgen.write(first, tmp_path / "a") + dicomgen.write(second, tmp_path / "b")
    assert send_files(node.ingest.port, files, [ExplicitVRLittleEndian]) == [0] * 9
    expected = [node.config.spool_dir / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm" for ds in first + second]
    assert spool_files(node) == sorted(expected)
    for ds, original in zip(first + second, files, strict=True):
        stored = node.config.spool_dir / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(original)
    assert len(rows(node, "SELECT * FROM instances")) == 9
