"""The findings of the hostile-input review, each as it was reproduced: the node's answer now.

Upper layer (PS3.8): node.max_pdu enforced, the protocol version and presentation context IDs
checked, an A-ASSOCIATE-RQ trickled byte by byte cut off at the negotiation deadline, 32
trickling peers (negotiating, or inside a data set in big or tiny PDUs) no obstacle to another
host's C-ECHO within 30 s. C-STORE (PS3.4 B.2.3): a success only for whole data sets.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import node_config, wait_until
from tests.integration.test_ingest import RawScu, rows, spool_files
from tests.support import dicomgen
from tests.support.bombs import nested
from tests.support.rawdimse import associate_rq
from tests.unit.test_header import encoded

ABORT, ASSOCIATE_AC, ASSOCIATE_RJ = 0x07, 0x02, 0x03


def pdv(context_id: int, control: int, payload: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV (PS3.8 9.3.5)."""
    item = struct.pack(">LBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BxL", 0x04, len(item)) + item


def command_set(**elements: bytes) -> bytes:
    """A command set (PS3.7 6.3, Implicit VR LE) of the given (0000,eeee) values, hex-named."""
    body = b"".join(struct.pack("<HHL", 0, int(tag, 16), len(v)) + v for tag, v in sorted(elements.items()))
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" if len(raw) % 2 else raw


def c_store_rq(sop_instance: str | None, sop_class: str = CTImageStorage) -> bytes:
    elements = {
        "0002": uid(sop_class),
        "0100": struct.pack("<H", 1),
        "0110": struct.pack("<H", 7),
        "0700": struct.pack("<H", 0),
        "0800": struct.pack("<H", 0),
    }
    if sop_instance is not None:
        elements["1000"] = uid(sop_instance)
    return command_set(**elements)


def store_status(scu: RawScu, command: bytes, data: bytes, fragments: int = 1) -> tuple[int, str]:
    """Send the command, then the data set in `fragments` PDVs (the last one flagged last)."""
    scu.sock.sendall(pdv(1, 0x03, command))
    step = max(1, -(-len(data) // fragments))
    pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    for n, piece in enumerate(pieces):
        scu.sock.sendall(pdv(1, 0x02 if n == len(pieces) - 1 else 0x00, piece))
    response = scu.response()
    return int(response.Status), str(response.get("ErrorComment", ""))


@pytest.fixture
def ct_node(tmp_path, start_node):  # type: ignore[no-untyped-def]
    return start_node(node_config(tmp_path / "data"))


def scu_for(node) -> RawScu:  # type: ignore[no-untyped-def]
    return RawScu(node.ingest.port, [(CTImageStorage, [ExplicitVRLittleEndian])])


# -- PS3.8: what the upper layer enforces ------------------------------------------------------


def test_a_pdu_longer_than_the_advertised_max_pdu_aborts(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", node={"max_pdu": 16384}))
    scu = scu_for(node)
    assert scu.max_pdu == 16384
    (ds,) = dicomgen.ct_series(1, size=512)
    raw, offset = encoded(ds)
    scu.sock.sendall(pdv(1, 0x03, c_store_rq(ds.SOPInstanceUID)))
    scu.sock.sendall(pdv(1, 0x02, raw[offset:][:524958]))  # a 524,964-byte PDU, as reported
    pdu_type, body = scu.receive()
    assert (pdu_type, body[2], body[3]) == (ABORT, 0x02, 0x06)  # provider, invalid parameter value
    assert spool_files(node) == []


def raw_request(port: int, pdu: bytes, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(pdu)
        header = sock.recv(6, socket.MSG_WAITALL)
        body = sock.recv(int.from_bytes(header[2:], "big"), socket.MSG_WAITALL)
        return header[0], body


def test_an_unknown_protocol_version_is_rejected(ct_node):
    pdu = bytearray(associate_rq("OLDSCU", [(Verification, [ImplicitVRLittleEndian])]).encode())
    pdu[6:8] = b"\x00\x02"  # PS3.8 9.3.2: bit 0 is version 1, the only one
    pdu_type, body = raw_request(ct_node.ingest.port, bytes(pdu))
    assert (pdu_type, body[1], body[2], body[3]) == (ASSOCIATE_RJ, 0x01, 0x02, 0x02)
    (row,) = wait_until(lambda: rows(ct_node, "SELECT * FROM associations"))
    assert row["outcome"] == "rejected" and "protocol version" in row["reason"]


@pytest.mark.parametrize("context_id", [0, 2, 254])
def test_an_even_or_zero_presentation_context_id_aborts(ct_node, context_id):
    request = associate_rq("ODDSCU", [(Verification, [ImplicitVRLittleEndian])])
    pdu = bytearray(request.encode())
    at = 6 + 68  # after the PDU header and the fixed fields, items: type, reserved, length, value
    while pdu[at] != 0x20:  # to the presentation context item: its ID is the value's first byte
        at += 4 + int.from_bytes(pdu[at + 2 : at + 4], "big")
    pdu[at + 4] = context_id
    pdu_type, body = raw_request(ct_node.ingest.port, bytes(pdu))
    assert (pdu_type, body[3]) == (ABORT, 0x06)


def test_an_association_request_trickled_byte_by_byte_is_cut_at_the_deadline(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", node={"negotiation_timeout_s": 2.0}))
    pdu = associate_rq("SLOWSCU", [(Verification, [ImplicitVRLittleEndian])]).encode()
    sock = socket.create_connection(("127.0.0.1", node.ingest.port), timeout=10)
    started = time.monotonic()
    try:
        for byte in pdu:  # 1 byte every 0.2 s: each well within any per-byte timeout
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
    except OSError:
        pass  # the node closed the connection
    assert time.monotonic() - started < 6
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1024)[:1] in (b"", bytes([ABORT]))
    sock.close()


# -- PS3.4 B.2.3: success only for whole data sets --------------------------------------------


def test_a_c_store_without_affected_sop_instance_uid_is_refused(ct_node):
    (ds,) = dicomgen.ct_series(1, size=16)
    raw, offset = encoded(ds)
    status, comment = store_status(scu_for(ct_node), c_store_rq(None), raw[offset:])
    assert status == 0xC210 and "(0000,1000)" in comment
    assert spool_files(ct_node) == [] and rows(ct_node, "SELECT * FROM instances") == []


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.8, 0.95, 0.999])
def test_a_truncated_data_set_flagged_last_is_refused(ct_node, fraction):
    (ds,) = dicomgen.ct_series(1, size=64)
    raw, offset = encoded(ds)
    data = raw[offset:]
    status, comment = store_status(scu_for(ct_node), c_store_rq(ds.SOPInstanceUID), data[: int(len(data) * fraction)])
    assert status == 0xC210, comment
    assert spool_files(ct_node) == [] and rows(ct_node, "SELECT * FROM instances") == []


def test_the_last_fragment_flag_halfway_through_is_refused(ct_node):
    (ds,) = dicomgen.ct_series(1, size=64)
    raw, offset = encoded(ds)
    data = raw[offset:]
    scu = scu_for(ct_node)
    status, _ = store_status(scu, c_store_rq(ds.SOPInstanceUID), data[: len(data) // 2], fragments=4)
    assert status == 0xC210
    scu.sock.sendall(pdv(1, 0x00, data[len(data) // 2 :]))  # the rest, now a stray data fragment
    pdu_type, _ = scu.receive()
    assert pdu_type == ABORT
    assert spool_files(ct_node) == []


@pytest.mark.parametrize("declared", [2**31, 3 * 2**30, 0xFFFFFFF0])
def test_an_element_declaring_gigabytes_with_64_bytes_sent_is_refused(ct_node, declared):
    (ds,) = dicomgen.ct_series(1, size=8)
    raw, offset = encoded(ds)
    data = raw[offset:]
    at = data.index(b"\xe0\x7f\x10\x00")
    forged = data[: at + 8] + struct.pack("<L", declared) + bytes(64)
    status, comment = store_status(scu_for(ct_node), c_store_rq(ds.SOPInstanceUID), forged)
    assert status == 0xC210 and "(7FE0,0010)" in comment
    assert spool_files(ct_node) == []


def test_sequences_nested_100_deep_are_refused_and_not_stored(ct_node):
    ds = nested(100)
    raw, offset = encoded(ds)
    status, comment = store_status(scu_for(ct_node), c_store_rq(ds.SOPInstanceUID), raw[offset:], fragments=8)
    assert status == 0xC210 and "nested more than 32" in comment
    assert spool_files(ct_node) == [] and rows(ct_node, "SELECT * FROM jobs") == []


def test_a_data_set_of_another_instance_than_the_command_names_is_a900(ct_node):
    (ds,) = dicomgen.ct_series(1, size=8)
    raw, offset = encoded(ds)
    status, comment = store_status(scu_for(ct_node), c_store_rq("1.2.3.4.5"), raw[offset:])
    assert status == 0xA900 and "SOP Instance UID" in comment
    assert spool_files(ct_node) == []


# -- time and slots: tricklers cannot lock the others out ---------------------------------------


def echo_from(port: int, source: str) -> bool:
    ae = AE(ae_title="OTHERHOST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACNODE", bind_address=(source, 0))
    try:
        return assoc.is_established and int(assoc.send_c_echo().Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def trickle(
    port: int, source: str, opening: bytes, then: Callable[[socket.socket], None], stop: threading.Event
) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0)) as sock:
            sock.sendall(opening)
            then(sock)
            while not stop.wait(1.0):
                sock.sendall(b"\0")  # a byte a second, for as long as the node listens
    except OSError:
        pass


@pytest.mark.parametrize("phase", ["negotiation", "data", "tiny-pdus"])
def test_32_trickling_peers_do_not_stop_another_hosts_echo_within_30s(ct_node, phase):
    port = ct_node.ingest.port
    stop = threading.Event()
    request = associate_rq("TRICKLER", [(CTImageStorage, [ExplicitVRLittleEndian])]).encode()

    def after_accept(sock: socket.socket) -> None:
        header = sock.recv(6, socket.MSG_WAITALL)
        sock.recv(int.from_bytes(header[2:], "big"), socket.MSG_WAITALL)  # the A-ASSOCIATE-AC
        sock.sendall(pdv(1, 0x03, c_store_rq("1.2.3.4")))
        if phase == "data":  # a 16 KiB PDU announced, its bytes to come one a second
            sock.sendall(struct.pack(">BxL", 0x04, 16384) + struct.pack(">LBB", 16380, 1, 0x00))
        else:  # whole PDUs of one data byte each, one a second: each PDU is quick, the message not
            while not stop.wait(1.0):
                sock.sendall(pdv(1, 0x00, b"\0\0"))

    if phase == "negotiation":
        opening, then = request[:10], lambda sock: None
    else:
        opening, then = request, after_accept
    # 32 peers on 32 addresses: every association slot (node.max_associations) is theirs
    threads = [
        threading.Thread(target=trickle, args=(port, f"127.0.1.{n + 1}", opening, then, stop), daemon=True)
        for n in range(32)
    ]
    for thread in threads:
        thread.start()
    try:
        if phase != "negotiation":
            wait_until(lambda: len(rows(ct_node, "SELECT * FROM associations WHERE outcome = 'open'")) == 32)
        started = time.monotonic()
        while not echo_from(port, "127.0.0.2"):
            assert time.monotonic() - started < 30, "no C-ECHO got through in 30 s"
            time.sleep(0.5)
    finally:
        stop.set()


def closed_at_once(port: int, source: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def test_connections_over_the_caps_are_closed_before_they_cost_a_thread(tmp_path, start_node):
    node = start_node(
        node_config(
            tmp_path / "data", node={"max_connections": 4, "max_connections_per_host": 2, "negotiation_timeout_s": 30}
        )
    )
    port = node.ingest.port
    held = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.2.1", 0)) for _ in range(2)]
    try:
        time.sleep(0.3)
        assert closed_at_once(port, "127.0.2.1")  # the host's third connection
        held.append(socket.create_connection(("127.0.0.1", port), source_address=("127.0.2.2", 0)))
        held.append(socket.create_connection(("127.0.0.1", port), source_address=("127.0.2.3", 0)))
        time.sleep(0.3)
        assert closed_at_once(port, "127.0.2.4")  # the fifth connection in all
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: echo_from(port, "127.0.2.4"))  # slots given back when they close


def test_one_host_cannot_take_every_association(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data", node={"max_associations": 4, "max_associations_per_host": 2}))
    port = node.ingest.port
    held = []
    for _ in range(2):
        ae = AE(ae_title="GREEDY")
        ae.add_requested_context(Verification)
        held.append(ae.associate("127.0.0.1", port, ae_title="FRACNODE", bind_address=("127.0.3.1", 0)))
    try:
        assert all(a.is_established for a in held)
        ae = AE(ae_title="GREEDY")
        ae.add_requested_context(Verification)
        third = ae.associate("127.0.0.1", port, ae_title="FRACNODE", bind_address=("127.0.3.1", 0))
        assert third.is_rejected or third.is_aborted
        assert echo_from(port, "127.0.3.2")  # another host still gets in
        (row,) = wait_until(lambda: rows(node, "SELECT * FROM associations WHERE outcome = 'rejected'"))
        assert "node.max_associations_per_host" in row["reason"]
    finally:
        for assoc in held:
            assoc.release()
