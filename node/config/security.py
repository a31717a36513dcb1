"""TLS for every link (PS3.15 Annex B, BCP 195) and the audit trail (IHE ATNA, RFC 5424)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from node.config.base import Strict


class NodeTls(Strict):
    """The DICOM TLS listener (PS3.15 B.1 "The Basic TLS Secure Transport Connection Profile",
    BCP 195 ciphers), beside the plain port."""

    enabled: bool = False
    port: int = Field(2762, ge=0, le=65535, description="2762 is the port IANA registered for DICOM over TLS")
    certificate: Path | None = Field(None, description="the node's certificate chain (PEM)")
    private_key: Path | None = Field(None, description="its private key (PEM, unencrypted; keep it 0600)")
    ca_certificates: Path | None = Field(
        None, description="CAs whose client certificates are trusted (PEM); needed to require one"
    )
    require_client_certificate: bool = Field(
        False, description="mutual TLS: refuse a peer without a certificate from ca_certificates"
    )

    @model_validator(mode="after")
    def _complete(self) -> NodeTls:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("node.tls.enabled needs certificate and private_key")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates (the CAs to trust)")
        return self


class WebTls(Strict):
    """HTTPS for the web server: both files given turns it on (and HSTS with it)."""

    certificate: Path | None = Field(None, description="certificate chain (PEM)")
    private_key: Path | None = Field(None, description="private key (PEM, unencrypted)")

    @model_validator(mode="after")
    def _both(self) -> WebTls:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("web.tls needs both certificate and private_key (or neither)")
        return self

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


class PeerTls(Strict):
    """TLS towards a peer (its port must be its TLS port): who to trust and who we are."""

    ca_certificates: Path | None = Field(
        None, description="CAs that sign the peer's certificate (PEM); null: the system's trusted CAs"
    )
    certificate: Path | None = Field(None, description="our client certificate, for peers that require one")
    private_key: Path | None = Field(None, description="its private key")
    verify_hostname: bool = Field(True, description="the certificate must name the peer's host")
    server_name: str | None = Field(None, description="the name to verify instead of `host`")

    @model_validator(mode="after")
    def _pair(self) -> PeerTls:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its private_key (and the other way round)")
        return self


class SyslogSettings(Strict):
    """An audit record repository (IHE ATNA): RFC 5426 (UDP), RFC 6587 (TCP) or RFC 5425 (TLS)."""

    host: str
    port: int = Field(6514, ge=1, le=65535, description="6514: syslog over TLS; 514 for UDP/TCP")
    transport: Literal["udp", "tcp", "tls"] = "tls"
    tls: PeerTls = PeerTls()


class AuditSettings(Strict):
    """The audit trail: RFC 5424 messages carrying DICOM Audit Messages (PS3.15 A.5)."""

    file: Path | None = Field(None, description="local copy; null: <data_dir>/audit.log")
    syslog: SyslogSettings | None = Field(None, description="also send each message to this collector")
    source_id: str | None = Field(None, description="Audit Source ID; null: the node's AE title")
