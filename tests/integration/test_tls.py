"""DICOM TLS both ways (PS3.15 B.1, BCP 195), tested with DCMTK's TLS-enabled tools.

The node's TLS listener against `echoscu`/`storescu +tls` (mutual TLS, a missing, expired or
untrusted client certificate, a plain client on the TLS port), and the node as TLS client
(dispatch, echo) against `storescp +tls`.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from node.config import DimsePeer
from node.dispatch.dimse import AssociationFailed, Target, echo, store
from node.pull import PeerUnreachable
from node.pull.dimse import find_study
from tests.conftest import node_config, require_tool, wait_until
from tests.support import dicomgen
from tests.support.certs import Pki, make_pki
from tests.support.orthanc import free_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def dcmtk(tool: str, *args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(tool), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def tls_node(tmp_path: Path, pki: Pki, start_node: Any, **tls: Any) -> Any:
    settings = {
        "enabled": True,
        "port": 0,
        "certificate": str(pki.server.certificate),
        "private_key": str(pki.server.key),
        "ca_certificates": str(pki.ca),
        "require_client_certificate": True,
        **tls,
    }
    return start_node(node_config(tmp_path / "data", node={"tls": settings}))


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.fields["reason"]
        for r in caplog.records  # type: ignore[attr-defined]
        if r.getMessage() == "TLS connection refused"
    ]


def test_mutual_tls_echo_and_store_with_dcmtk(tmp_path, start_node, pki):
    node = tls_node(tmp_path, pki, start_node)
    port = node.ingest.tls_port
    assert port and port != node.ingest.port
    ok = dcmtk(
        "echoscu", "+tls", pki.client.key, pki.client.certificate, "+cf", pki.ca, "-aec", "FRACNODE", "127.0.0.1", port
    )
    assert ok.returncode == 0, ok.stderr
    series = dicomgen.ct_series(2, size=32)
    files = dicomgen.write(series, tmp_path / "ct")
    sent = dcmtk(
        "storescu",
        "+tls",
        pki.client.key,
        pki.client.certificate,
        "+cf",
        pki.ca,
        "-aec",
        "FRACNODE",
        "127.0.0.1",
        port,
        *files,
    )
    assert sent.returncode == 0, sent.stderr
    rows = wait_until(lambda: node.db.query("SELECT * FROM instances"))
    assert {r["sop_instance_uid"] for r in rows} == {ds.SOPInstanceUID for ds in series}
    audit = wait_until(
        lambda: [r for r in node.db.query("SELECT * FROM associations") if r["outcome"] == "released"] or None
    )
    assert audit


def test_a_client_without_a_certificate_is_refused_when_one_is_required(tmp_path, start_node, pki, caplog):
    caplog.set_level(logging.WARNING, "fracnode")
    node = tls_node(tmp_path, pki, start_node)
    refused = dcmtk("echoscu", "+tla", "+cf", pki.ca, "-aec", "FRACNODE", "127.0.0.1", node.ingest.tls_port)
    assert refused.returncode != 0
    reasons = wait_until(lambda: refusals(caplog))
    assert "no client certificate" in reasons[0] or "required" in reasons[0], reasons


@pytest.mark.parametrize(
    ("which", "says"), [("expired_client", "certificate has expired"), ("stranger", "not trusted")]
)
def test_an_expired_or_untrusted_client_certificate_is_refused_with_a_clear_reason(
    tmp_path, start_node, pki, caplog, which, says
):
    caplog.set_level(logging.WARNING, "fracnode")
    node = tls_node(tmp_path, pki, start_node)
    pair = getattr(pki, which)
    refused = dcmtk(
        "echoscu",
        "+tls",
        pair.key,
        pair.certificate,
        "+cf",
        pki.ca,
        "-aec",
        "FRACNODE",
        "127.0.0.1",
        node.ingest.tls_port,
    )
    assert refused.returncode != 0
    reasons = wait_until(lambda: refusals(caplog))
    assert says in reasons[0], reasons
    assert node.db.query("SELECT * FROM associations") == []  # nothing got as far as an association


def test_a_plain_client_on_the_tls_port_is_refused_and_the_plain_port_still_works(tmp_path, start_node, pki, caplog):
    caplog.set_level(logging.WARNING, "fracnode")
    node = tls_node(tmp_path, pki, start_node)
    plain = dcmtk("echoscu", "-aec", "FRACNODE", "127.0.0.1", node.ingest.tls_port, timeout=30)
    assert plain.returncode != 0
    assert "plain (non-TLS) DICOM client on the TLS port" in wait_until(lambda: refusals(caplog))[0]
    assert dcmtk("echoscu", "-aec", "FRACNODE", "127.0.0.1", node.ingest.port).returncode == 0


def test_tls_only_listens_on_the_tls_port_alone(tmp_path, start_node, pki):
    settings = {
        "enabled": True,
        "port": 0,
        "certificate": str(pki.server.certificate),
        "private_key": str(pki.server.key),
    }
    node = start_node(node_config(tmp_path / "data", node={"plain": False, "tls": settings}))
    assert node.ingest.port == node.ingest.tls_port  # the only listener
    ok = dcmtk("echoscu", "+tla", "+cf", pki.ca, "-aec", "FRACNODE", "127.0.0.1", node.ingest.tls_port)
    assert ok.returncode == 0, ok.stderr  # no client certificate required in this configuration


class TlsStoreScp:
    """DCMTK's storescp +tls on a free port, writing into a folder."""

    def __init__(self, folder: Path, pki: Pki, server: Any) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                require_tool("storescp"),
                "+tls",
                str(server.key),
                str(server.certificate),
                "+cf",
                str(pki.ca),
                "-aet",
                "TLSSCP",
                "-od",
                str(folder),
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"},
        )
        time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def test_the_node_stores_to_and_echoes_storescp_over_mutual_tls(tmp_path, pki):
    scp = TlsStoreScp(tmp_path / "received", pki, pki.server)
    try:
        from node.config import PeerTls

        tls = PeerTls(ca_certificates=pki.ca, certificate=pki.client.certificate, private_key=pki.client.key)
        target = Target("TLSSCP", "localhost", scp.port, tls)
        assert wait_until(lambda: _echo_or_none(target) is not None, timeout_s=20)
        assert echo(target, "FRACNODE", timeout_s=10) == 0
        files = dicomgen.write(dicomgen.ct_series(2, size=16), tmp_path / "out")
        results = store(target, "FRACNODE", files)
        assert [r.ok for r in results] == [True, True], results
        assert len(list(scp.folder.iterdir())) == 2
        # a pull uses the peer's same TLS settings: storescp accepts no query context, so
        # pynetdicom aborts, but only after the TLS handshake and the A-ASSOCIATE-AC
        peer = DimsePeer(name="tls-scp", ae_title="TLSSCP", host="localhost", port=scp.port, tls=tls)
        with pytest.raises(PeerUnreachable, match="aborted the association"):
            find_study(peer, "FRACNODE", "1.2.3", timeout_s=10)
        # without our certificate storescp (which requires one) refuses: a clear reason, no success
        anonymous = Target("TLSSCP", "localhost", scp.port, PeerTls(ca_certificates=pki.ca))
        with pytest.raises(AssociationFailed):
            echo(anonymous, "FRACNODE", timeout_s=10)
    finally:
        scp.stop()


def _echo_or_none(target: Target) -> int | None:
    try:
        return echo(target, "FRACNODE", timeout_s=5)
    except AssociationFailed:
        return None


def test_an_expired_or_untrusted_server_certificate_fails_the_association_with_the_reason(tmp_path, pki):
    scp = TlsStoreScp(tmp_path / "received", pki, pki.expired_server)
    try:
        from node.config import PeerTls

        expired = Target(
            "TLSSCP",
            "localhost",
            scp.port,
            PeerTls(ca_certificates=pki.ca, certificate=pki.client.certificate, private_key=pki.client.key),
        )
        with pytest.raises(AssociationFailed, match="certificate has expired"):
            echo(expired, "FRACNODE", timeout_s=10)
        untrusted = Target(
            "TLSSCP", "localhost", scp.port, PeerTls(certificate=pki.client.certificate, private_key=pki.client.key)
        )  # system CAs only
        with pytest.raises(AssociationFailed, match="not trusted"):
            echo(untrusted, "FRACNODE", timeout_s=10)
        peer = DimsePeer(name="tls-scp", ae_title="TLSSCP", host="localhost", port=scp.port, tls=expired.tls)
        with pytest.raises(PeerUnreachable, match="certificate has expired"):
            find_study(peer, "FRACNODE", "1.2.3", timeout_s=10)
        assert list(scp.folder.iterdir()) == []
    finally:
        scp.stop()
