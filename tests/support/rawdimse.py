"""A-ASSOCIATE-RQ PDUs built with pynetdicom's classes, for tests that speak the Upper Layer directly."""

from __future__ import annotations

from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"


def associate_rq(
    calling_ae: str, contexts: list[tuple[str, list[str]]], scu_role_for: str | None = None
) -> A_ASSOCIATE_RQ:
    """A request to FRACNODE proposing `contexts` (abstract syntax, transfer syntaxes) as 1, 3, 5…;
    with `scu_role_for`, an SCP/SCU role selection (SCU only) for that SOP class."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = "FRACNODE"
    requested = []
    for number, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, syntaxes)
        context.context_id = 2 * number + 1
        requested.append(context)
    primitive.presentation_context_definition_list = requested
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    items: list = [maximum, implementation]
    if scu_role_for:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = scu_role_for
        role.scu_role = True
        role.scp_role = False
        items.append(role)
    primitive.user_information = items
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu
