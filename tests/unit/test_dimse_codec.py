"""The node's own DIMSE command sets and Upper Layer PDUs, read back by pynetdicom's decoders."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.dsutils import encode as encode_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import IMPLEMENTATION_CLASS_UID
from node.ingest import commands
from node.ingest import upper_layer as ul
from tests.support.rawdimse import associate_rq


def command_set(message: C_STORE_RQ | C_ECHO_RQ) -> bytes:
    return encode_dataset(message.command_set, True, True)


def store_request(message_id: int = 7) -> C_STORE_RQ:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = "1.2.3.4.5.6"
    primitive.Priority = 2
    primitive.DataSet = BytesIO(b"\0" * 10)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return message


def test_a_c_store_request_from_pynetdicom_is_read() -> None:
    command = commands.decode(command_set(store_request()))
    assert command == commands.Command(
        command_field=commands.C_STORE_RQ,
        message_id=7,
        affected_sop_class_uid=CTImageStorage,
        affected_sop_instance_uid="1.2.3.4.5.6",
        has_data_set=True,
    )


def test_a_c_echo_request_has_no_data_set() -> None:
    primitive = C_ECHO()
    primitive.MessageID = 3
    primitive.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    command = commands.decode(command_set(message))
    assert (command.command_field, command.message_id, command.has_data_set) == (0x0030, 3, False)


@pytest.mark.parametrize(
    "data",
    [b"\0\0\0\0\x04\0\0\0", b"\x08\0\x16\0\x02\0\0\0ab", b"\0\0\0\x01\x02\0\0\0\x01\0", b""],
    ids=["truncated", "not-group-0000", "no-command-field", "empty"],
)
def test_malformed_command_sets_are_refused(data: bytes) -> None:
    with pytest.raises(commands.MalformedCommand):
        commands.decode(data)


@pytest.mark.parametrize(("status", "comment"), [(0x0000, ""), (0xA700, "cannot write x.dcm: No space"),
                                                 (0xC210, "a\\b" + "x" * 100)])
def test_a_c_store_response_reads_back_with_pynetdicom(status: int, comment: str) -> None:
    request = commands.decode(command_set(store_request(message_id=42)))
    encoded = commands.encode_response(request, status, comment)
    ds = decode_dataset(BytesIO(encoded), True, True)
    assert ds.CommandGroupLength == len(encoded) - 12
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.CommandDataSetType) == (0x8001, 42, 0x0101)
    assert (ds.Status, ds.AffectedSOPClassUID, ds.AffectedSOPInstanceUID) == (
        status, CTImageStorage, "1.2.3.4.5.6"
    )
    if comment:
        assert ds.ErrorComment == comment.replace("\\", "/")[:64].strip()
    else:
        assert "ErrorComment" not in ds


@pytest.mark.parametrize("peer_max_pdu", [0, 20, 1000])
def test_p_data_splits_a_payload_to_the_peers_maximum(peer_max_pdu: int) -> None:
    payload = bytes(range(256)) * 3
    encoded = ul.p_data_pdus(5, 0x01, payload, peer_max_pdu)
    fragments, controls, pos = [], [], 0
    while pos < len(encoded):
        length = int.from_bytes(encoded[pos + 2 : pos + 6], "big")
        if peer_max_pdu:
            assert length <= peer_max_pdu
        pdu = P_DATA_TF()
        pdu.decode(encoded[pos : pos + 6 + length])
        (item,) = pdu.presentation_data_value_items
        context_id, data = item.context_id, item.data
        assert context_id == 5 and data is not None
        controls.append(data[0])
        fragments.append(data[1:])
        pos += 6 + length
    assert b"".join(fragments) == payload
    assert controls == [0x01] * (len(controls) - 1) + [0x03]


def association_request(*contexts: tuple[str, list[str]], role: bool = False) -> ul.AssociationRequest:
    pdu = associate_rq("MODALITY", list(contexts), scu_role_for=CTImageStorage if role else None)
    return ul.decode_request(pdu.encode())


def test_negotiation_accepts_the_first_supported_syntax_and_names_the_node() -> None:
    request = association_request(
        (CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
        ("1.2.3.4.5", [ExplicitVRLittleEndian]),
        role=True,
    )
    assert (request.calling_ae, request.called_ae, request.peer_max_pdu) == ("MODALITY", "FRACNODE", 16384)
    supported = [build_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    acceptance = ul.accept(request, supported, max_pdu=0)
    assert acceptance.contexts == {1: (CTImageStorage, ExplicitVRLittleEndian)}
    reply = A_ASSOCIATE_AC()
    reply.decode(acceptance.pdu)
    primitive = reply.to_primitive()
    assert {cx.context_id: cx.result for cx in primitive.presentation_context_definition_results_list} == {
        1: 0x00, 3: 0x03
    }
    assert primitive.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert primitive.maximum_length_received == 0
    # the node keeps the default roles (it is the SCP): no role reply, as pynetdicom's own acceptor
    assert not [i for i in primitive.user_information if isinstance(i, SCP_SCU_RoleSelectionNegotiation)]


def test_a_rejection_carries_result_source_and_diagnostic() -> None:
    reply = A_ASSOCIATE_RJ()
    reply.decode(ul.reject_pdu(*ul.REJECT_CALLED_AE))
    assert (reply.result, reply.source, reply.reason_diagnostic) == (0x01, 0x01, 0x07)


def test_a_malformed_association_request_is_a_protocol_error() -> None:
    with pytest.raises(ul.ProtocolError):
        ul.decode_request(b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16)
