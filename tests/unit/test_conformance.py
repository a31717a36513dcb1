"""docs/conformance.md says what the node does: its tables are current, and they hold in real
negotiation (the acceptor's own code, and what the pull's requestor proposes to a real
pynetdicom Query/Retrieve SCP), in real DICOMweb requests, and for the objects the node builds."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_AC

from node import conformance
from node.config import DicomwebPeer, DimsePeer, NodeSettings
from node.ingest import upper_layer as ul
from node.ingest.dimse import DimseIngest
from node.ingest.stow import StowIngest
from node.pipelines.radiograph.results import build_results
from node.pull import RetrieveFailed, StudyNotFound, wado
from node.pull import dimse as pull_dimse
from tests.support import dicomgen
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
    assert set(acceptor().supported) == set(documented)


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
    """Every kind of object the radiograph pipeline sends: grey and colour sources, every optional
    object (both overlays and the radiograph SEG)."""
    source, findings = cr_fracture_study(cr_sample)
    optional = {"gsps", "secondary_capture", "radiograph_seg"}
    grey = build_results(findings, {source.SOPInstanceUID: source}, optional)
    rgb = rgb_dx_image()
    colour_findings = study_findings(image_finding(rgb, "fracture", 0.7, (square(6.0, 6.0, 12.0, 0.8),)),
                                     study_uid=str(rgb.StudyInstanceUID))
    colour = build_results(colour_findings, {rgb.SOPInstanceUID: rgb}, optional)
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


# -- pull on request: what the Query/Retrieve SCU and the DICOMweb user agent really send ---------

NODE_AE = NodeSettings().ae_title


def rows(table: str) -> list[list[str]]:
    """The cells of a generated table's rows (header and rule left out)."""
    block = conformance.generated_block(DOCUMENT, table)
    return [[cell.strip() for cell in row.strip("|").split(" | ")]
            for row in block.splitlines()[2:] if row.startswith("|")]


def values(table: str) -> dict[str, str]:
    """A two-column generated table as {first cell: second cell}."""
    return {cells[0]: cells[1] for cells in rows(table)}


def syntax_names(uids: list[str]) -> list[str]:
    return [UID(uid).name for uid in uids]


class ArchiveSCP:
    """A real pynetdicom Study Root Q/R SCP on loopback (an archive holding one CT instance) that
    records each association the node's pull code requests and each request it gets."""

    def __init__(self, instance: Dataset) -> None:
        self.instance = instance
        self.seen: list[dict[str, Any]] = []
        everything = [*pull_dimse.UNCOMPRESSED, *pull_dimse.COMPRESSED]
        ae = AE("ARCHIVE")
        for uid in pull_dimse.QUERY_RETRIEVE_SOP_CLASSES.values():
            ae.add_supported_context(uid, pull_dimse.UNCOMPRESSED)
        for uid in pull_dimse.COMMON_STORAGE_CLASSES:  # the archive sends as SCU in the requestor's SCP role
            ae.add_supported_context(uid, everything, scu_role=False, scp_role=True)
        handlers = [(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_GET, self.on_get), (evt.EVT_C_MOVE, self.on_move)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.peer = DimsePeer(name="archive", ae_title="ARCHIVE", host="127.0.0.1",
                              port=self.server.server_address[1])

    def record(self, event: evt.Event, service: str, **extra: Any) -> None:
        requestor = event.assoc.requestor
        self.seen.append({
            "service": service,
            "contexts": [(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
                         for cx in requestor.requested_contexts],
            "roles": {str(uid): (item.scu_role, item.scp_role) for uid, item in requestor.role_selection.items()},
            "implementation": (str(requestor.implementation_class_uid), requestor.implementation_version_name),
            "max_pdu": requestor.maximum_length,
            "identifier": event.identifier,
            **extra,
        })

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self.record(event, "C-FIND")
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = self.instance.StudyInstanceUID
        match.NumberOfStudyRelatedInstances = 1
        match.SOPClassesInStudy = [self.instance.SOPClassUID]
        yield 0xFF00, match

    def on_get(self, event: evt.Event) -> Iterator[Any]:
        self.record(event, "C-GET")
        yield 1
        yield 0xFF00, self.instance

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        self.record(event, "C-MOVE", destination=event.move_destination)
        yield None, None  # an unknown move destination: pynetdicom answers 0xA801

    def last(self, service: str) -> dict[str, Any]:
        return [seen for seen in self.seen if seen["service"] == service][-1]


@pytest.fixture(scope="module")
def archive() -> Iterator[ArchiveSCP]:
    (instance,) = dicomgen.ct_series(1, size=8)
    scp = ArchiveSCP(instance)
    yield scp
    scp.server.shutdown()


def test_pull_proposes_each_documented_query_retrieve_class_with_the_documented_syntaxes(archive, spool):
    study = archive.instance.StudyInstanceUID
    found = pull_dimse.find_study(archive.peer, NODE_AE, study, 10)
    assert (found.instances, found.sop_classes) == (1, (CTImageStorage,))
    retrieved = pull_dimse.get_study(archive.peer, NODE_AE, study, found.sop_classes, spool, "ARCHIVE", 10)
    assert retrieved.received + retrieved.duplicates == 1  # sent as C-STORE in our SCP role
    with pytest.raises(RetrieveFailed, match="0xA801"):
        pull_dimse.move_study(archive.peer, NODE_AE, NODE_AE, study, 10)

    documented = rows("qr-scu-sop-classes")
    assert {cells[3] for cells in documented} == {"C-FIND", "C-GET", "C-MOVE"}
    for name, uid, role, service, syntaxes, _ in documented:
        assert (conformance.sop_class_name(uid.strip("`")), role) == (name, "SCU")
        (query_retrieve,) = [(abstract, ts) for abstract, ts in archive.last(service)["contexts"]
                             if abstract in pull_dimse.QUERY_RETRIEVE_SOP_CLASSES.values()]
        assert query_retrieve[0] == uid.strip("`"), service
        assert syntax_names(query_retrieve[1]) == syntaxes.split(", "), service
    for service in ("C-FIND", "C-MOVE"):  # alone on their associations
        assert len(archive.last(service)["contexts"]) == 1 and archive.last(service)["roles"] == {}


def test_pull_identifiers_hold_the_documented_keys_at_the_documented_level(archive, spool):
    study = archive.instance.StudyInstanceUID
    pull_dimse.find_study(archive.peer, NODE_AE, study, 10)
    pull_dimse.get_study(archive.peer, NODE_AE, study, (CTImageStorage,), spool, "ARCHIVE", 10)
    with pytest.raises(RetrieveFailed):
        pull_dimse.move_study(archive.peer, NODE_AE, NODE_AE, study, 10)
    assert archive.last("C-MOVE")["destination"] == NODE_AE

    def expected(column: int) -> dict[str, str]:
        keys = {}
        for cells in rows("qr-scu-identifiers"):
            keyword = keyword_for_tag(int(cells[1].strip("()").replace(",", ""), 16))
            text = cells[column]
            if text == "absent":
                continue
            keys[keyword] = (text.strip("`") if text.startswith("`") else study if "study's UID" in text
                             else "" if text.startswith("empty") else f"undocumented value {text!r}")
        return keys

    def sent(service: str) -> dict[str, str]:
        identifier = archive.last(service)["identifier"]
        return {element.keyword: str(element.value if element.VM else "") for element in identifier}

    assert sent("C-FIND") == expected(2)
    assert sent("C-GET") == sent("C-MOVE") == expected(3)


def test_c_get_proposes_the_scp_role_for_the_documented_storage_classes_and_syntaxes(archive, spool):
    study = archive.instance.StudyInstanceUID
    classes = uids_in("qr-get-storage-sop-classes", "SCP")
    syntaxes = {cells[1].strip("`"): cells[2] for cells in rows("qr-get-transfer-syntaxes")}
    uncompressed = [uid for uid, where in syntaxes.items() if where.startswith("one context per class")]
    compressed = [uid for uid in syntaxes if uid not in uncompressed]
    most = int(re.search(r"up to (\d+) classes", syntaxes[compressed[0]]).group(1))  # type: ignore[union-attr]
    get_class = pull_dimse.QUERY_RETRIEVE_SOP_CLASSES["C-GET"]

    def proposed(sop_classes: tuple[str, ...]) -> dict[str, Any]:
        pull_dimse.get_study(archive.peer, NODE_AE, study, sop_classes, spool, "ARCHIVE", 10)
        seen = archive.last("C-GET")
        assert len(seen["contexts"]) <= 128  # PS3.8 9.3.2.2
        assert seen["contexts"][0][0] == get_class and get_class not in seen["roles"]
        return seen

    # the C-FIND response named no SOP classes: the documented ones, in the SCP role only
    seen = proposed(())
    assert seen["roles"] == {uid: (False, True) for uid in classes}
    assert seen["contexts"][1:] == [context for uid in classes for context in ((uid, uncompressed), (uid, compressed))]
    # few classes: each compressed syntax in a context of its own, so any can be accepted
    study_first = [CTImageStorage, *(uid for uid in classes if uid != CTImageStorage)]  # what it holds
    for count in (1, most):
        seen = proposed(tuple(study_first[:count]))
        assert seen["contexts"][1:] == [context for uid in study_first[:count] for context in
                                        ((uid, uncompressed), *((uid, [syntax]) for syntax in compressed))]
    seen = proposed(tuple(study_first[: most + 1]))
    assert len(seen["contexts"]) == 1 + 2 * (most + 1)


def test_the_pull_requestor_identifies_itself_as_documented(archive):
    pull_dimse.find_study(archive.peer, NODE_AE, archive.instance.StudyInstanceUID, 10)
    documented = values("qr-scu-association")
    assert archive.last("C-FIND")["max_pdu"] == int(documented["Maximum PDU size received"])
    implementation = tuple(re.findall(r"`([^`]+)`", documented["Implementation Class UID, Version Name"]))
    assert archive.last("C-FIND")["implementation"] == implementation
    assert f"at most {pull_dimse.MAX_STORAGE_CLASSES}" in documented["Storage SOP classes per C-GET"]


class DicomwebArchive(BaseHTTPRequestHandler):
    """Records each request; answers QIDO-RS with 204 (no match), WADO-RS for every transfer
    syntax with 406, else 204: a real server the node's real client talks to."""

    seen: ClassVar[list[tuple[str, str, str]]] = []

    def do_GET(self) -> None:
        accept = self.headers.get("Accept", "")
        self.seen.append(("GET", self.path, accept))
        self.send_response(406 if "transfer-syntax=*" in accept else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_a_dicomweb_pull_sends_the_documented_qido_and_wado_requests(spool, db):
    server = ThreadingHTTPServer(("127.0.0.1", 0), DicomwebArchive)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    DicomwebArchive.seen = []
    study = generate_uid()
    peer = DicomwebPeer(name="web", type="dicomweb", url=f"http://127.0.0.1:{server.server_address[1]}/dicom-web")
    try:
        with pytest.raises(StudyNotFound, match="QIDO-RS"):
            wado.find_study(peer, study)
        with pytest.raises(StudyNotFound, match="WADO-RS: HTTP 204"):
            wado.retrieve_study(peer, study, spool, db, "web")
    finally:
        server.shutdown()
        server.server_close()
    documented = [(request.strip("`").split(" ", 1), accept.strip("`"))
                  for _, request, accept, _ in rows("dicomweb-pull-requests")]
    assert DicomwebArchive.seen == [
        (method, target.replace("{url}", "/dicom-web").replace("{uid}", study), accept)
        for (method, target), accept in documented
    ]
