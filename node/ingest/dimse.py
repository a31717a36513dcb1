"""DICOM upper-layer edge: C-ECHO and C-STORE SCP (PS3.4 Annex A and B, PS3.7 9.1.1).

The listeners (plain TCP on `node.port`, DICOM TLS on `node.tls.port`, PS3.15 B.1) give each
connection its own thread running an `Association` (PS3.8 state machine, C-STORE data sets
streamed into the spool). This module decides who may connect (`node.max_connections`, per host
too), who may associate and what is offered, and keeps the audit trail. Nothing here decodes
pixel data or waits on later stages.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.audit import Audit
from node.config import NodeSettings
from node.ingest import upper_layer as ul
from node.ingest.association import Association, AssociationRecord
from node.ingest.trail import Trail
from node.logs import event
from node.net import set_nodelay
from node.spool import Spool, Stored
from node.store import Database
from node.tls import failure_reason, handshake, looks_like_plain_dicom, peer_subject, server_context

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
REFUSAL_LOG_INTERVAL_S = 10.0  # refused connections from one host are logged at most this often


def _count_out(counts: Counter[str], host: str) -> None:
    """One less for `host`; a host with none left is forgotten (the table stays small)."""
    counts[host] -= 1
    if counts[host] <= 0:
        del counts[host]


class _Listener(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], serve: Callable[[socket.socket, tuple[str, int]], None],
                 admit: Callable[[str], bool], closed: Callable[[str], None]) -> None:
        self._serve = serve
        self._admit = admit
        self._closed = closed
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, socketserver.BaseRequestHandler)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        set_nodelay(client)
        return client, address

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        # before a thread: a connection over the limits costs nothing but its accept()
        if not self._admit(client_address[0]):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread to be had: the connection is closed, not left waiting
            self._closed(client_address[0])
            self.shutdown_request(request)

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
        audit: Audit | None = None,
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
        self.audit = audit
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
        self._open_by_host: Counter[str] = Counter()
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._connections_by_host: Counter[str] = Counter()
        self._connection_count = 0  # admitted connections not yet closed (threads may lag)
        self._refusals: dict[str, tuple[int, float]] = {}  # host: (refused since logged, logged at)
        self._servers: dict[str, _Listener] = {}
        # made now: a certificate that cannot be used fails the node's construction (TlsSetupError)
        self._tls_context = server_context(settings.tls, "node.tls") if settings.tls.enabled else None

    @property
    def port(self) -> int:
        """The plain DICOM port (the TLS port when the plain one is off)."""
        server = self._servers.get("plain") or self._servers["tls"]
        return int(server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        server = self._servers.get("tls")
        return int(server.server_address[1]) if server is not None else None

    def start(self) -> None:
        listeners: list[tuple[str, int, Callable[[socket.socket, tuple[str, int]], None]]] = []
        if self.settings.plain:
            listeners.append(("plain", self.settings.port, self._serve))
        if self.settings.tls.enabled:
            listeners.append(("tls", self.settings.tls.port, self._serve_tls))
        for kind, port, serve in listeners:
            server = _Listener((self.settings.bind, port), serve, self._admit_connection,
                               self._connection_closed)
            thread = threading.Thread(target=server.serve_forever, name=f"dimse-{kind}", daemon=True)
            thread.start()
            self._servers[kind] = server
            event(log, logging.INFO, "DICOM listener started", ae_title=self.settings.ae_title,
                  bind=self.settings.bind, port=int(server.server_address[1]), tls=kind == "tls",
                  client_certificate_required=kind == "tls" and self.settings.tls.require_client_certificate)

    def stop(self) -> None:
        """Stop listening, abort open associations and wait for their threads."""
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        self._servers = {}
        with self._lock:
            connections = dict(self._connections)
        for sock in connections.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's blocking read
            except OSError:
                pass
        for thread in connections:
            thread.join(timeout=10)

    # -- connections ----------------------------------------------------------------------------

    def _admit_connection(self, host: str) -> bool:
        """Count a new connection in, or refuse it: node.max_connections, and per host."""
        with self._lock:
            per_host = self._connections_by_host[host]
            if (self._connection_count < self.settings.max_connections
                    and per_host < self.settings.max_connections_per_host):
                self._connection_count += 1
                self._connections_by_host[host] += 1
                return True
            refused, logged_at = self._refusals.get(host, (0, 0.0))
            refused += 1
            now = time.monotonic()
            if now - logged_at < REFUSAL_LOG_INTERVAL_S:
                self._refusals[host] = (refused, logged_at)
                return False
            self._refusals[host] = (0, now)
            limit = ("node.max_connections_per_host" if per_host >= self.settings.max_connections_per_host
                     else "node.max_connections")
        event(log, logging.WARNING, "connections refused: too many open", address=host, limit=limit,
              refused=refused, open_from_host=per_host)
        return False

    def _connection_closed(self, host: str) -> None:
        with self._lock:
            self._connection_count -= 1
            _count_out(self._connections_by_host, host)

    def _serve(self, sock: socket.socket, address: tuple[str, int], tls: bool = False) -> None:
        current = threading.current_thread()
        deadline = time.monotonic() + self.settings.negotiation_timeout_s
        with self._lock:
            self._connections[current] = sock
        try:
            subject = ""
            if tls:
                wrapped = self._tls_handshake(sock, address, deadline)
                if wrapped is None:
                    return
                sock, subject = wrapped, peer_subject(wrapped)
                with self._lock:
                    self._connections[current] = sock
            Association(self, sock, address, deadline, subject).run()
        finally:
            with self._lock:
                del self._connections[current]
            self._connection_closed(address[0])

    def _serve_tls(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self._serve(sock, address, tls=True)

    def _tls_handshake(self, sock: socket.socket, address: tuple[str, int],
                       deadline: float) -> ssl.SSLSocket | None:
        """The TLS handshake of a connection to the TLS port; None (logged and audited) when it
        fails: no, an expired or an untrusted certificate, a plain client, a slow one."""
        assert self._tls_context is not None
        try:
            if looks_like_plain_dicom(sock, max(deadline - time.monotonic(), 0.01)):
                reason = "a plain (non-TLS) DICOM client on the TLS port"
            else:
                wrapped = self._tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                handshake(wrapped, deadline)
                return wrapped
        except (OSError, ValueError) as exc:
            reason = failure_reason(exc)
        event(log, logging.WARNING, "TLS connection refused", address=address[0], port=address[1],
              reason=reason)
        if self.audit is not None:
            self.audit.tls_refused(address[0], reason)
        try:
            sock.close()
        except OSError:
            pass
        return None

    # -- admission and the audit trail --------------------------------------------------------

    def admit(self, request: ul.AssociationRequest, host: str) -> tuple[tuple[int, int, int], str] | None:
        """None to accept (and count the association open), else the A-ASSOCIATE-RJ and why."""
        if not request.protocol_version & 0x0001:  # PS3.8 9.3.2: version 1 is bit 0
            return ul.REJECT_PROTOCOL_VERSION, f"protocol version 0x{request.protocol_version:04X}"
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
            from_host = self._open_by_host[host]
            if from_host >= self.settings.max_associations_per_host:
                return ul.REJECT_LOCAL_LIMIT, "too many associations from this host (node.max_associations_per_host)"
            self._open += 1
            self._open_by_host[host] += 1
        return None

    def accepted(self, request: ul.AssociationRequest, address: tuple[str, int],
                 peer_subject: str = "") -> AssociationRecord:
        record = AssociationRecord(uuid.uuid4().hex, time.time(), request.calling_ae, address[0],
                                    int(address[1]), request.called_ae, peer_subject)
        self.trail.opened(record.id, record.started_at, record.peer_ae, record.peer_address, record.peer_port,
                          record.called_ae)
        event(audit, logging.INFO, "association accepted", association=record.id,
              calling_ae=record.peer_ae, address=record.peer_address, port=record.peer_port,
              called_ae=record.called_ae, tls_subject=peer_subject or None)
        if self.audit is not None:
            self.audit.association(record.peer_ae, record.peer_address, True, tls_subject=peer_subject)
        return record

    def rejected(self, request: ul.AssociationRequest, address: tuple[str, int], reason: str) -> None:
        now = time.time()
        record_id = uuid.uuid4().hex
        self.trail.rejected(record_id, now, request.calling_ae, address[0], int(address[1]), request.called_ae,
                            reason)
        event(audit, logging.WARNING, "association rejected", association=record_id,
              calling_ae=request.calling_ae, address=address[0], port=int(address[1]),
              called_ae=request.called_ae, reason=reason)
        if self.audit is not None:
            self.audit.association(request.calling_ae, address[0], False, reason)

    def release(self, host: str) -> None:
        """Give back the slot `admit` counted, for an association that was never accepted."""
        with self._lock:
            self._open -= 1
            _count_out(self._open_by_host, host)

    def ended(self, record: AssociationRecord, outcome: str) -> None:
        self.release(record.peer_address)
        self.trail.ended(record.id, time.time(), outcome, record.received, record.failed)
        event(audit, logging.INFO, f"association {outcome}", association=record.id,
              calling_ae=record.peer_ae, address=record.peer_address,
              instances_received=record.received, instances_failed=record.failed)
        if self.audit is not None:
            self.audit.association_ended(record.peer_ae, record.peer_address, outcome,
                                         record.studies, record.failed)
        if record.studies and outcome == "released":
            self.on_released(set(record.studies))
            unchanged = record.studies.keys() - record.changed
            if unchanged:
                self.on_unchanged(unchanged)

    def stored(self, record: AssociationRecord, stored: Stored) -> None:
        record.received += 1
        record.studies[stored.header.study_uid] = record.studies.get(stored.header.study_uid, 0) + 1
        if not stored.duplicate:
            record.changed.add(stored.header.study_uid)
            self.on_stored()

    def refused(self, record: AssociationRecord, status: int, reason: str, sop_uid: str) -> None:
        record.failed += 1
        event(log, logging.WARNING, "instance refused", status=f"0x{status:04X}", reason=reason,
              sop_instance_uid=sop_uid or None, association=record.id)


