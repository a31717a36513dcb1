"""docs/conformance.md says what the node does: its tables are current, and they hold in real
negotiation (the acceptor's own code) and for the objects the node really builds."""

from __future__ import annotations

import itertools
import re

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_AC

from node import conformance
from node.config import NodeSettings
from node.ingest import upper_layer as ul
from node.ingest.dimse import DimseIngest
from node.ingest.stow import StowIngest
from node.results.radiograph import build_results
from tests.support.findings import (
    cr_fracture_study,
    image_finding,
    rgb_dx_image,
    square,
    study_findings,
)
from tests.support.rawdimse import associate_rq

DOCUMENT = conformance.DOCUMENT.read_text(encoding="utf-8")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # a Query/Retrieve class: the node is no SCP of it
MPEG2 = "1.2.840.10008.1.2.4.100"  # a transfer syntax the node does not accept


def uids_in(table: str, role: str | None = None) -> list[str]:
    """The UIDs (second column) of a generated table's rows, in order; with `role`, its rows only."""
    block = conformance.generated_block(DOCUMENT, table)
    rows = [row for row in block.splitlines()[2:] if row.startswith("|")]
    found = [re.findall(r"`([0-9.]+)`", row)[0] for row in rows if role is None or f"| {role} |" in row]
    assert found, f"no rows in {table}"
    return found


def acceptor() -> DimseIngest:
    """The node's C-STORE SCP as configured by default; only its presentation contexts are used."""
    return DimseIngest(NodeSettings(), spool=None, db=None)  # type: ignore[arg-type]


def negotiate(*contexts: tuple[str, list[str]]) -> tuple[dict[int, tuple[str, str]], dict[int, int]]:
    """What the node's acceptor answers to the proposed contexts: accepted ones, and every result."""
    request = ul.decode_request(associate_rq("MODALITY", list(contexts)).encode())
    acceptance = ul.accept(request, acceptor().supported, 0)
    reply = A_ASSOCIATE_AC()
    reply.decode(acceptance.pdu)
    results = {cx.context_id: cx.result for cx in reply.to_primitive().presentation_context_definition_results_list}
    return acceptance.contexts, results


def test_the_generated_tables_are_current():
    assert conformance.render(DOCUMENT) == DOCUMENT, "docs/conformance.md is stale: run scripts/conformance-tables"
    assert conformance.main(["--check"]) == 0


def test_every_scp_sop_class_in_the_document_is_accepted_and_no_other():
    documented = uids_in("scp-sop-classes", "SCP")
    assert len(documented) == len(set(documented)) > 100
    syntaxes = uids_in("scp-transfer-syntaxes")
    for start in range(0, len(documented), 100):  # at most 128 contexts per association (PS3.8 9.3.2.2)
        chunk = documented[start : start + 100]
        accepted, _ = negotiate(*[(uid, syntaxes) for uid in chunk])
        assert sorted(abstract for abstract, _ in accepted.values()) == sorted(chunk)
    _, results = negotiate((STUDY_ROOT_FIND, [ExplicitVRLittleEndian]))
    assert results == {1: 0x03}  # abstract syntax not supported (PS3.8 Table 9-18)
    assert {str(cx.abstract_syntax) for cx in acceptor().supported} == set(documented)


def test_every_documented_transfer_syntax_is_accepted_alone_and_in_the_documented_order():
    syntaxes = uids_in("scp-transfer-syntaxes")
    accepted, _ = negotiate(*[(CTImageStorage, [uid]) for uid in syntaxes])
    assert sorted(syntax for _, syntax in accepted.values()) == sorted(syntaxes)
    for earlier, later in itertools.pairwise(syntaxes):
        accepted, _ = negotiate((CTImageStorage, [later, earlier]))
        assert accepted == {1: (CTImageStorage, earlier)}, f"{earlier} should be preferred to {later}"
    _, results = negotiate((CTImageStorage, [MPEG2]))
    assert results == {1: 0x04}  # transfer syntaxes not supported


def test_stow_rs_accepts_the_same_classes_and_syntaxes():
    stow = StowIngest(spool=None, db=None)  # type: ignore[arg-type]
    assert stow.storage_sop_classes == set(uids_in("scp-sop-classes", "SCP")) - {conformance.VERIFICATION}
    assert stow.transfer_syntaxes == set(uids_in("scp-transfer-syntaxes"))


@pytest.fixture(scope="module")
def built_results(cr_sample):
    """Every kind of object the radiograph pipeline sends: grey and colour sources, both overlays."""
    source, findings = cr_fracture_study(cr_sample)
    grey = build_results(findings, {source.SOPInstanceUID: source}, {"gsps", "secondary_capture"})
    rgb = rgb_dx_image()
    colour_findings = study_findings(image_finding(rgb, "fracture", 0.7, (square(6.0, 6.0, 12.0, 0.8),)),
                                     study_uid=str(rgb.StudyInstanceUID))
    colour = build_results(colour_findings, {rgb.SOPInstanceUID: rgb}, {"gsps", "secondary_capture"})
    return [*grey, *colour]


def test_the_documented_result_classes_are_the_objects_the_node_builds(built_results):
    documented = set(uids_in("scu-sop-classes", "SCU")) - {conformance.VERIFICATION}
    assert {str(ds.SOPClassUID) for ds in built_results} == documented


def test_results_are_written_in_the_documented_transfer_syntax(built_results):
    proposed = uids_in("scu-transfer-syntaxes")
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in built_results} == {conformance.RESULT_TRANSFER_SYNTAX}
    assert conformance.RESULT_TRANSFER_SYNTAX in proposed


def test_a_missing_table_marker_is_named():
    with pytest.raises(ValueError, match="generated:scp-sop-classes"):
        conformance.render(DOCUMENT.replace("<!-- generated:scp-sop-classes -->", ""))
