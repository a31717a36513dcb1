"""Throw-away X.509 certificates for TLS tests, made in the test's folder (nothing is committed).

A CA, a server certificate for localhost/127.0.0.1, client certificates (valid, expired, and one
from a CA nobody trusts), written as PEM files; private keys are 0600 like real ones.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Pair:
    certificate: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    certificate: Path
    key: ec.EllipticCurvePrivateKey
    name: x509.Name


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fracnode tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def authority(folder: Path, name: str = "fracnode test CA") -> Authority:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name.replace(' ', '-')}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(path, key, subject)


def issue(ca: Authority, folder: Path, common_name: str, *, server: bool = False, expired: bool = False) -> Pair:
    """A certificate signed by `ca`: for a server (localhost, 127.0.0.1) or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    if expired:
        before, after = _NOW - datetime.timedelta(days=30), _NOW - datetime.timedelta(days=1)
    else:
        before, after = _NOW - datetime.timedelta(days=1), _NOW + datetime.timedelta(days=30)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    certificate = builder.sign(ca.key, hashes.SHA256())
    stem = folder / common_name.replace(" ", "-")
    pair = Pair(stem.with_suffix(".pem"), stem.with_suffix(".key"))
    pair.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pair
    client: Pair
    expired_client: Pair
    expired_server: Pair
    stranger: Pair  # signed by a CA the node does not trust


def make_pki(folder: Path) -> Pki:
    ca = authority(folder)
    other = authority(folder / "other", "stranger CA")
    return Pki(
        ca=ca.certificate,
        server=issue(ca, folder, "fracnode-server", server=True),
        client=issue(ca, folder, "MODALITY01"),
        expired_client=issue(ca, folder, "EXPIRED01", expired=True),
        expired_server=issue(ca, folder, "expired-server", server=True, expired=True),
        stranger=issue(other, folder / "other", "STRANGER01"),
    )
