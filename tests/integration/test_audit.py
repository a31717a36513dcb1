"""The ATNA-shaped audit trail: RFC 5424 messages carrying DICOM Audit Messages (PS3.15 A.5), in
the local file and at a syslog collector started here (UDP, TCP and TLS)."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_TOKEN, node_config, wait_until
from tests.integration.test_protocol import dcmtk, storescu
from tests.support import dicomgen
from tests.support.certs import make_pki

# RFC 5424 6: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD SP MSG
HEADER = re.compile(
    r"^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) fracnode (\d+) IHE\+RFC-3881 - \ufeff(.*)$"
)


class Collector:
    """A syslog collector on loopback: UDP datagrams, or RFC 6587/5425 octet-counted frames over
    TCP or TLS."""

    def __init__(self, transport: str, context: ssl.SSLContext | None = None) -> None:
        self.messages: list[str] = []
        self.transport = transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.context = context
        if transport != "udp":
            self.sock.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        if self.transport == "udp":
            while True:
                data, _ = self.sock.recvfrom(65536)
                self.messages.append(data.decode("utf-8"))
        while True:
            conn, _ = self.sock.accept()
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            threading.Thread(target=self._frames, args=(conn,), daemon=True).start()

    def _frames(self, conn: socket.socket) -> None:
        buffer = b""
        while chunk := conn.recv(65536):
            buffer += chunk
            while b" " in buffer:
                length, _, rest = buffer.partition(b" ")
                if len(rest) < int(length):
                    break
                self.messages.append(rest[: int(length)].decode("utf-8"))
                buffer = rest[int(length) :]


def events(messages: list[str]) -> list[tuple[str, str, str]]:
    """(EventID, EventTypeCode or '', EventOutcomeIndicator) of each message, checking its form."""
    found = []
    for message in messages:
        match = HEADER.match(message)
        assert match, message[:200]
        assert int(match[1]) in (84, 85)  # authpriv (10) × 8 + notice (5) or warning (4)
        root = ET.fromstring(match[5])
        identification = root.find("EventIdentification")
        assert identification is not None and root.find("AuditSourceIdentification") is not None
        event_type = identification.find("EventTypeCode")
        found.append(
            (
                identification.find("EventID").get("csd-code"),  # type: ignore[union-attr]
                event_type.get("csd-code") if event_type is not None else "",
                identification.get("EventOutcomeIndicator"),
            )
        )
    return found


def exercise(node: Any, tmp_path: Path) -> str:
    """An echo, a stored CR, a rejected association and an HTTP refusal; the CR's study UID."""
    port = node.ingest.port
    assert dcmtk("echoscu", "-aet", "MODALITY1", "-aec", "FRACNODE", "127.0.0.1", port).returncode == 0
    cr = dicomgen.cr_image(size=32)
    assert storescu(port, dicomgen.write([cr], tmp_path / "in"), calling_ae="MODALITY1").returncode == 0
    assert dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "NOT-FRACNODE", "127.0.0.1", port).returncode != 0
    refused = httpx.get(f"http://127.0.0.1:{node.web.port}/api/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    return str(cr.StudyInstanceUID)


EXPECTED = {
    ("110100", "110120", "0"),  # application start
    ("110113", "110131", "0"),  # configuration first seen (Software Configuration)
    ("110114", "110122", "0"),  # association accepted (Login)
    ("110114", "110123", "0"),  # association released (Logout)
    ("110104", "", "0"),  # instances transferred in
    ("110114", "110122", "4"),  # association rejected; HTTP 401
}


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_audit_messages_reach_the_file_and_a_collector(tmp_path, start_node, transport):
    context = None
    tls: dict[str, Any] = {}
    if transport == "tls":
        pki = make_pki(tmp_path / "pki")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server.certificate, pki.server.key)
        tls = {"tls": {"ca_certificates": str(pki.ca), "server_name": "localhost"}}
    collector = Collector(transport, context)
    node = start_node(
        node_config(
            tmp_path / "data",
            audit={"syslog": {"host": "127.0.0.1", "port": collector.port, "transport": transport, **tls}},
        )
    )
    study_uid = exercise(node, tmp_path)
    wait_until(lambda: set(events(collector.messages)) >= EXPECTED, timeout_s=30)
    transferred = [m for m in collector.messages if 'csd-code="110104"' in m]
    assert study_uid in transferred[0] and "1 instances stored" in transferred[0]
    assert 'UserID="MODALITY1"' in transferred[0] and 'NetworkAccessPointID="127.0.0.1"' in transferred[0]
    node.stop()  # the fixture's stop after this one finds it stopped
    node.stop = lambda: None
    local = (tmp_path / "data" / "audit.log").read_text(encoding="utf-8").splitlines()
    assert set(events(local)) >= EXPECTED | {("110100", "110121", "0")}  # and the stop
    wait_until(lambda: len(collector.messages) == len(local))
    assert sorted(collector.messages) == sorted(local)


def test_no_patient_data_and_no_secret_in_the_audit_trail(tmp_path, start_node):
    node = start_node(node_config(tmp_path / "data"))
    exercise(node, tmp_path)
    httpx.get(f"http://127.0.0.1:{node.web.port}/api/v1/jobs", headers={"Authorization": f"Bearer {API_TOKEN}x"})
    text = wait_until(lambda: (tmp_path / "data" / "audit.log").read_text(encoding="utf-8"))
    for marker in (
        dicomgen.PATIENT_NAME,
        dicomgen.PATIENT_ID,
        dicomgen.PATIENT_BIRTH_DATE,
        dicomgen.ACCESSION_NUMBER,
        "Sentinel",
        API_TOKEN,
        "nope",
    ):
        assert marker not in text
