"""DICOM upper-layer edge: C-ECHO and C-STORE SCP (PS3.4 Annex A and B, PS3.7 9.1.1).

The listener gives each connection its own thread running an `Association` (PS3.8 state machine,
C-STORE data sets streamed into the spool). This module decides who may associate and what is
offered, and keeps the audit trail. Nothing here decodes pixel data or waits on later stages.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable

from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import NodeSettings
from node.ingest import upper_layer as ul
from node.ingest.association import Association, AssociationRecord
from node.ingest.trail import Trail
from node.logs import event
from node.net import set_nodelay
from node.spool import Spool, Stored
from node.store import Database

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
STORAGE_SOP_CLASSES = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


class _Listener(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], serve: Callable[[socket.socket, tuple[str, int]], None]) -> None:
        self._serve = serve
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, socketserver.BaseRequestHandler)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        set_nodelay(client)
        return client, address

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        self._serve(request, client_address)


class DimseIngest:
    """The C-STORE/C-ECHO SCP. `on_released(study_uids)` fires when an association ends."""

    def __init__(
        self,
        settings: NodeSettings,
        spool: Spool,
        db: Database,
        on_stored: Callable[[], None] = lambda: None,
        on_released: Callable[[set[str]], None] = lambda studies: None,
        on_unchanged: Callable[[set[str]], None] = lambda studies: None,
    ) -> None:
        # the node's SCU side (dispatch) uses pynetdicom: query identifiers hold patient data
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
        pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
        self.settings = settings
        self.spool = spool
        self.db = db
        self.trail = Trail(db)
        self.on_stored = on_stored
        self.on_released = on_released
        self.on_unchanged = on_unchanged  # studies an association resent without a new byte
        # abstract syntax → accepted transfer syntaxes, preferred first (Verification: pynetdicom's
        # default four uncompressed syntaxes)
        self.supported: dict[str, tuple[str, ...]] = {
            str(cx.abstract_syntax): tuple(str(ts) for ts in cx.transfer_syntax)
            for cx in [build_context(Verification)]
            + [build_context(sop_class, TRANSFER_SYNTAXES) for sop_class in STORAGE_SOP_CLASSES]
        }
        self.storage_sop_classes = frozenset(STORAGE_SOP_CLASSES)
        self._lock = threading.Lock()
        self._open = 0  # accepted associations not yet ended
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._server: _Listener | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        server = _Listener((self.settings.bind, self.settings.port), self._serve)
        thread = threading.Thread(target=server.serve_forever, name="dimse-server", daemon=True)
        thread.start()
        self._server = server
        event(log, logging.INFO, "DICOM listener started", ae_title=self.settings.ae_title,
              bind=self.settings.bind, port=self.port)

    def stop(self) -> None:
        """Stop listening, abort open associations and wait for their threads."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections = dict(self._connections)
        for sock in connections.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's blocking read
            except OSError:
                pass
        for thread in connections:
            thread.join(timeout=10)

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        current = threading.current_thread()
        with self._lock:
            self._connections[current] = sock
        try:
            Association(self, sock, address).run()
        finally:
            with self._lock:
                del self._connections[current]

    # -- admission and the audit trail --------------------------------------------------------

    def admit(self, request: ul.AssociationRequest) -> tuple[tuple[int, int, int], str] | None:
        """None to accept (and count the association open), else the A-ASSOCIATE-RJ and why."""
        if request.called_ae != self.settings.ae_title:
            reason = f"called AE title {request.called_ae!r} is not this node's ({self.settings.ae_title!r})"
            return ul.REJECT_CALLED_AE, reason
        if self.settings.calling_ae_titles and request.calling_ae not in self.settings.calling_ae_titles:
            return ul.REJECT_CALLING_AE, f"calling AE title {request.calling_ae!r} is not in node.calling_ae_titles"
        if request.application_context != ul.APPLICATION_CONTEXT_NAME:
            return ul.REJECT_APPLICATION_CONTEXT, f"application context {request.application_context!r}"
        with self._lock:
            if self._open >= self.settings.max_associations:
                return ul.REJECT_LOCAL_LIMIT, "too many associations (node.max_associations)"
            self._open += 1
        return None

    def accepted(self, request: ul.AssociationRequest, address: tuple[str, int]) -> AssociationRecord:
        record = AssociationRecord(uuid.uuid4().hex, time.time(), request.calling_ae, address[0],
                                    int(address[1]), request.called_ae)
        self.trail.opened(record.id, record.started_at, record.peer_ae, record.peer_address, record.peer_port,
                          record.called_ae)
        event(audit, logging.INFO, "association accepted", association=record.id,
              calling_ae=record.peer_ae, address=record.peer_address, port=record.peer_port,
              called_ae=record.called_ae)
        return record

    def rejected(self, request: ul.AssociationRequest, address: tuple[str, int], reason: str) -> None:
        now = time.time()
        record_id = uuid.uuid4().hex
        self.trail.rejected(record_id, now, request.calling_ae, address[0], int(address[1]), request.called_ae,
                            reason)
        event(audit, logging.WARNING, "association rejected", association=record_id,
              calling_ae=request.calling_ae, address=address[0], port=int(address[1]),
              called_ae=request.called_ae, reason=reason)

    def release(self) -> None:
        """Give back the slot `admit` counted, for an association that was never accepted."""
        with self._lock:
            self._open -= 1

    def ended(self, record: AssociationRecord, outcome: str) -> None:
        self.release()
        self.trail.ended(record.id, time.time(), outcome, record.received, record.failed)
        event(audit, logging.INFO, f"association {outcome}", association=record.id,
              calling_ae=record.peer_ae, address=record.peer_address,
              instances_received=record.received, instances_failed=record.failed)
        if record.studies and outcome == "released":
            self.on_released(set(record.studies))
            if record.studies - record.changed:
                self.on_unchanged(record.studies - record.changed)

    def stored(self, record: AssociationRecord, stored: Stored) -> None:
        record.received += 1
        record.studies.add(stored.header.study_uid)
        if not stored.duplicate:
            record.changed.add(stored.header.study_uid)
            self.on_stored()

    def refused(self, record: AssociationRecord, status: int, reason: str, sop_uid: str) -> None:
        record.failed += 1
        event(log, logging.WARNING, "instance refused", status=f"0x{status:04X}", reason=reason,
              sop_instance_uid=sop_uid or None, association=record.id)


