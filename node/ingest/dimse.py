"""DICOM upper-layer edge: C-ECHO and C-STORE SCP (PS3.4 Annex A and B, PS3.7 9.1.1).

The C-STORE handler only writes the bytes as received to the spool and maps the outcome to a
status. It never decodes pixel data or waits on later stages.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.config import NodeSettings
from node.db import Database
from node.logs import event
from node.spool import OutOfSpace, Spool, UnreadableInstance

log = logging.getLogger("fracnode.ingest")
audit = logging.getLogger("fracnode.audit")

# PS3.5 Annex A: the transfer syntaxes the node accepts and stores as received
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
STORAGE_SOP_CLASSES = [cx.abstract_syntax for cx in AllStoragePresentationContexts]

# PS3.4 Annex B.2.3 C-STORE status codes
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm: DIMSE sends small PDUs and waits for replies."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class NoDelayServer(ThreadedAssociationServer):
    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        set_nodelay(client)
        return client, address


@dataclass
class _AssociationRecord:
    id: str
    started_at: float
    peer_ae: str
    peer_address: str
    peer_port: int
    called_ae: str
    received: int = 0
    failed: int = 0
    studies: set[str] = field(default_factory=set)


class DimseIngest:
    """The C-STORE/C-ECHO SCP. `on_released(study_uids)` fires when an association ends."""

    def __init__(
        self,
        settings: NodeSettings,
        spool: Spool,
        db: Database,
        on_stored: Callable[[], None] = lambda: None,
        on_released: Callable[[set[str]], None] = lambda studies: None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.db = db
        self.on_stored = on_stored
        self.on_released = on_released
        self._records: dict[int, _AssociationRecord] = {}
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        # query identifiers hold patient data: off wherever the node runs, not only under `serve`
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
        pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
        ae = AE(ae_title=self.settings.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.settings.calling_ae_titles)
        ae.maximum_associations = self.settings.max_associations
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.network_timeout = self.settings.network_timeout_s
        ae.acse_timeout = self.settings.network_timeout_s
        ae.dimse_timeout = self.settings.network_timeout_s
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        return ae

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_RELEASED, self._handle_ended),
            (evt.EVT_ABORTED, self._handle_ended),
            (evt.EVT_CONN_CLOSE, self._handle_ended),
        ]
        address = (self.settings.bind, self.settings.port)
        server = self.ae.make_server(address, evt_handlers=handlers, server_class=NoDelayServer)
        self.ae._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, name="dimse-server", daemon=True)
        thread.start()
        self._server = server
        event(log, logging.INFO, "DICOM listener started", ae_title=self.settings.ae_title,
              bind=self.settings.bind, port=self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    # -- association events (audit trail) ---------------------------------------------------

    def _peer(self, assoc: Association) -> tuple[str, str, int, str]:
        requestor = assoc.requestor
        primitive = requestor.primitive
        called = primitive.called_ae_title if primitive is not None else assoc.acceptor.ae_title
        return (
            str(requestor.ae_title).strip(),
            str(requestor.address),
            int(requestor.port or 0),
            str(called or "").strip(),
        )

    def _handle_accepted(self, event_: evt.Event) -> None:
        peer_ae, address, port, called = self._peer(event_.assoc)
        record = _AssociationRecord(uuid.uuid4().hex, time.time(), peer_ae, address, port, called)
        with self._lock:
            self._records[id(event_.assoc)] = record
        self.db.execute(
            """INSERT INTO associations (id, started_at, peer_ae, peer_address, peer_port,
            called_ae, outcome) VALUES (?,?,?,?,?,?, 'open')""",
            (record.id, record.started_at, peer_ae, address, port, called),
        )
        event(audit, logging.INFO, "association accepted", association=record.id,
              calling_ae=peer_ae, address=address, port=port, called_ae=called)

    def _rejection_reason(self, assoc: Association) -> str:
        peer_ae, _, _, called = self._peer(assoc)
        if called != self.settings.ae_title:
            return f"called AE title {called!r} is not this node's ({self.settings.ae_title!r})"
        if self.settings.calling_ae_titles and peer_ae not in self.settings.calling_ae_titles:
            return f"calling AE title {peer_ae!r} is not in node.calling_ae_titles"
        return "too many associations (node.max_associations)"

    def _handle_rejected(self, event_: evt.Event) -> None:
        peer_ae, address, port, called = self._peer(event_.assoc)
        reason = self._rejection_reason(event_.assoc)
        now = time.time()
        record_id = uuid.uuid4().hex
        self.db.execute(
            """INSERT INTO associations (id, started_at, ended_at, peer_ae, peer_address, peer_port,
            called_ae, outcome, reason) VALUES (?,?,?,?,?,?,?, 'rejected', ?)""",
            (record_id, now, now, peer_ae, address, port, called, reason),
        )
        event(audit, logging.WARNING, "association rejected", association=record_id,
              calling_ae=peer_ae, address=address, port=port, called_ae=called, reason=reason)

    def _handle_ended(self, event_: evt.Event) -> None:
        with self._lock:
            record = self._records.pop(id(event_.assoc), None)
        if record is None:  # already ended (CONN_CLOSE follows RELEASED/ABORTED)
            return
        outcome = "aborted" if event_.event is evt.EVT_ABORTED or event_.assoc.is_aborted else "released"
        self.db.execute(
            """UPDATE associations SET ended_at = ?, outcome = ?, instances_received = ?,
            instances_failed = ? WHERE id = ?""",
            (time.time(), outcome, record.received, record.failed, record.id),
        )
        event(audit, logging.INFO, f"association {outcome}", association=record.id,
              calling_ae=record.peer_ae, address=record.peer_address,
              instances_received=record.received, instances_failed=record.failed)
        if record.studies and outcome == "released":
            self.on_released(set(record.studies))

    # -- C-STORE -------------------------------------------------------------------------------

    def _handle_store(self, event_: evt.Event) -> int | tuple[int, str] | object:
        with self._lock:
            record = self._records.get(id(event_.assoc))
        association_id = record.id if record else ""
        calling_ae = str(event_.assoc.requestor.ae_title).strip()
        expected = str(event_.request.AffectedSOPInstanceUID or "") or None
        try:
            raw = event_.encoded_dataset(include_meta=True)
            stored = self.spool.store(raw, calling_ae, association_id, expected)
        except OutOfSpace as exc:
            return self._failure(record, STATUS_OUT_OF_RESOURCES, str(exc), expected)
        except UnreadableInstance as exc:
            return self._failure(record, STATUS_CANNOT_UNDERSTAND, str(exc), expected)
        except Exception as exc:  # the node must answer, whatever went wrong
            log.exception("C-STORE failed", extra={"fields": {"sop_instance_uid": expected}})
            return self._failure(record, STATUS_PROCESSING_FAILURE, f"{type(exc).__name__}: {exc}", expected)
        if record is not None:
            record.received += 1
            record.studies.add(stored.header.study_uid)
        if not stored.duplicate:
            self.on_stored()
        return STATUS_SUCCESS

    def _failure(
        self, record: _AssociationRecord | None, status: int, reason: str, sop_uid: str | None
    ) -> object:
        if record is not None:
            record.failed += 1
        event(log, logging.WARNING, "instance refused", status=f"0x{status:04X}", reason=reason,
              sop_instance_uid=sop_uid, association=record.id if record else "")
        from pydicom import Dataset

        status_ds = Dataset()
        status_ds.Status = status
        status_ds.ErrorComment = reason[:64]  # LO: 64 characters at most
        return status_ds
