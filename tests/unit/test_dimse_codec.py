"""The node's own DIMSE command sets and Upper Layer PDUs, read back by pynetdicom's decoders."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
)
from pynetdicom import build_context
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.dsutils import encode as encode_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    ImplementationVersionNameNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import negotiate_as_acceptor
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
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


@pytest.mark.parametrize(
    ("status", "comment"), [(0x0000, ""), (0xA700, "cannot write x.dcm: No space"), (0xC210, "a\\b" + "x" * 100)]
)
def test_a_c_store_response_reads_back_with_pynetdicom(status: int, comment: str) -> None:
    request = commands.decode(command_set(store_request(message_id=42)))
    encoded = commands.encode_response(request, status, comment)
    ds = decode_dataset(BytesIO(encoded), True, True)
    assert ds.CommandGroupLength == len(encoded) - 12
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.CommandDataSetType) == (0x8001, 42, 0x0101)
    assert (ds.Status, ds.AffectedSOPClassUID, ds.AffectedSOPInstanceUID) == (status, CTImageStorage, "1.2.3.4.5.6")
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
    supported = {CTImageStorage: (ExplicitVRLittleEndian, ImplicitVRLittleEndian)}
    acceptance = ul.accept(request, supported, max_pdu=0)
    assert acceptance.contexts == {1: (CTImageStorage, ExplicitVRLittleEndian)}
    reply = A_ASSOCIATE_AC()
    reply.decode(acceptance.pdu)
    primitive = reply.to_primitive()
    assert {cx.context_id: cx.result for cx in primitive.presentation_context_definition_results_list} == {
        1: 0x00,
        3: 0x03,
    }
    assert primitive.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    (version,) = [i for i in primitive.user_information if isinstance(i, ImplementationVersionNameNotification)]
    assert version.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert primitive.maximum_length_received == 0
    assert (primitive.calling_ae_title, primitive.called_ae_title) == ("MODALITY", "FRACNODE")
    assert primitive.application_context_name == "1.2.840.10008.3.1.1.1"
    # the node keeps the default roles (it is the SCP): no role reply, as pynetdicom's own acceptor
    assert not [i for i in primitive.user_information if isinstance(i, SCP_SCU_RoleSelectionNegotiation)]


def test_a_rejection_carries_result_source_and_diagnostic() -> None:
    reply = A_ASSOCIATE_RJ()
    reply.decode(ul.reject_pdu(*ul.REJECT_CALLED_AE))
    assert (reply.result, reply.source, reply.reason_diagnostic) == (0x01, 0x01, 0x07)


def test_a_malformed_association_request_is_a_protocol_error() -> None:
    with pytest.raises(ul.ProtocolError):
        ul.decode_request(b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16)


SUPPORTED = {
    CTImageStorage: (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless),
    Verification: (ImplicitVRLittleEndian, ExplicitVRLittleEndian),
    MRImageStorage: (ExplicitVRLittleEndian,),
}
PROPOSALS = [
    [(CTImageStorage, [ImplicitVRLittleEndian])],
    [(CTImageStorage, [JPEG2000Lossless, ImplicitVRLittleEndian, ExplicitVRLittleEndian])],
    [(CTImageStorage, ["1.2.840.10008.1.2.4.100"]), (MRImageStorage, [ImplicitVRLittleEndian])],
    [
        ("1.2.3.4.5.6", [ExplicitVRLittleEndian]),
        (Verification, [ExplicitVRLittleEndian]),
        (CTImageStorage, [JPEG2000Lossless]),
        (MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    ],
]


@pytest.mark.parametrize("proposal", PROPOSALS)
@pytest.mark.parametrize("role", [False, True])
def test_negotiation_answers_as_pynetdicoms_own_acceptor(proposal: list, role: bool) -> None:
    """The node's codec and pynetdicom's `negotiate_as_acceptor`, given the same contexts, agree
    on every result and transfer syntax, with and without a role selection item."""
    pdu = associate_rq("MODALITY", proposal, scu_role_for=CTImageStorage if role else None)
    acceptance = ul.accept(ul.decode_request(pdu.encode()), SUPPORTED, max_pdu=32768)
    reply = A_ASSOCIATE_AC()
    reply.decode(acceptance.pdu)
    primitive = reply.to_primitive()
    ours = [
        (cx.context_id, cx.result, str(cx.transfer_syntax[0]))
        for cx in primitive.presentation_context_definition_results_list
    ]

    requested = pdu.to_primitive()
    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in requested.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    acceptor_contexts = [build_context(uid, list(syntaxes)) for uid, syntaxes in SUPPORTED.items()]
    expected, role_replies = negotiate_as_acceptor(
        requested.presentation_context_definition_list, acceptor_contexts, roles or None
    )
    assert ours == [(cx.context_id, cx.result, str(cx.transfer_syntax[0])) for cx in expected]
    assert role_replies == []
    assert acceptance.contexts == {
        cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in expected if cx.result == 0
    }
    assert primitive.maximum_length_received == 32768


def test_a_request_decodes_as_pynetdicom_reads_it() -> None:
    contexts = [
        (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (Verification, [ImplicitVRLittleEndian]),
    ]
    encoded = associate_rq("CT-SCANNER 01", contexts, scu_role_for=CTImageStorage).encode()
    request = ul.decode_request(encoded)
    assert (request.calling_ae, request.called_ae) == ("CT-SCANNER 01", "FRACNODE")
    assert request.application_context == "1.2.840.10008.3.1.1.1"
    assert request.peer_max_pdu == 16384
    assert request.contexts == (
        ul.ProposedContext(1, CTImageStorage, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        ul.ProposedContext(3, Verification, (ImplicitVRLittleEndian,)),
    )
    assert request.ae_titles == encoded[10:42]


def _request(*items: bytes) -> bytes:
    body = b"\0\1\0\0" + b"FRACNODE".ljust(16) + b"MODALITY".ljust(16) + bytes(32) + b"".join(items)
    return bytes((0x01, 0)) + len(body).to_bytes(4, "big") + body


def _item(item_type: int, value: bytes) -> bytes:
    return bytes((item_type, 0)) + len(value).to_bytes(2, "big") + value


def _context(context_id: int, *sub_items: bytes) -> bytes:
    return _item(0x20, bytes((context_id, 0, 0, 0)) + b"".join(sub_items))


APPLICATION = _item(0x10, b"1.2.840.10008.3.1.1.1")
CT = _item(0x30, CTImageStorage.encode())
EXPLICIT = _item(0x40, ExplicitVRLittleEndian.encode())


def test_nul_padded_uids_and_unknown_items_are_read() -> None:
    request = ul.decode_request(
        _request(
            _item(0x10, b"1.2.840.10008.3.1.1.1\0"),
            _context(1, _item(0x30, CTImageStorage.encode() + b"\0"), EXPLICIT),
            _item(0x50, _item(0x51, (65536).to_bytes(4, "big")) + _item(0x53, b"\0\1\0\1") + _item(0x58, b"\1\0")),
            _item(0x7F, b"private"),
        )
    )
    assert request.application_context == "1.2.840.10008.3.1.1.1"
    assert request.contexts == (ul.ProposedContext(1, CTImageStorage, (ExplicitVRLittleEndian,)),)
    assert request.peer_max_pdu == 65536


@pytest.mark.parametrize(
    ("pdu", "message"),
    [
        (_request(APPLICATION)[:-3], "the PDU length does not match"),
        (_request(APPLICATION, b"\x20\x00\x01"), "ends inside an item header"),
        (_request(APPLICATION, _item(0x20, b"\x01\0\0\0" + CT + EXPLICIT)[:-4] + b"\0" * 0), "runs past the end"),
        (_request(APPLICATION, _context(1, EXPLICIT)), "0 abstract syntaxes and 1 transfer syntaxes"),
        (_request(APPLICATION, _context(1, CT)), "1 abstract syntaxes and 0 transfer syntaxes"),
        (_request(APPLICATION, _context(1, CT, EXPLICIT), _context(1, CT, EXPLICIT)), "proposed twice"),
        (_request(APPLICATION, _context(1, _item(0x30, "1.2.é".encode()), EXPLICIT)), "not ASCII"),
        (_request(APPLICATION, _item(0x20, b"\x01\0")), "without its ID"),
    ],
)
def test_malformed_requests_name_what_is_wrong(pdu: bytes, message: str) -> None:
    with pytest.raises(ul.ProtocolError, match=message) as raised:
        ul.decode_request(pdu)
    assert raised.value.reason == ul.REASON_INVALID_PARAMETER
