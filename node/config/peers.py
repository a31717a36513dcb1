"""Peers (the AEs and DICOMweb servers fracnode talks to), destinations and routes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from node.config.base import Strict, check_ae_title
from node.config.security import PeerTls


class DimsePeer(Strict):
    """A DICOM (DIMSE) application entity: a PACS, Orthanc, a modality (PS3.7, PS3.8)."""

    name: str
    type: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    retrieve: Literal["c-get", "c-move"] = Field(
        "c-get",
        description="how a study is pulled from this peer: c-get (on our association; the peer"
        " needs no entry for fracnode) or c-move (the peer sends to our AE title, which it must"
        " know as a move destination)",
    )
    tls: PeerTls | None = Field(None, description="DICOM TLS (PS3.15 B.1) to this peer; port must then be its TLS port")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return check_ae_title(value)


class NoAuth(Strict):
    type: Literal["none"] = "none"


def _secret(value: str | None, path: Path | None, what: str) -> str:
    if value is not None:
        return value
    assert path is not None  # the validators ask for one of the two
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc.strerror}") from exc


class BasicAuth(Strict):
    """HTTP Basic (RFC 7617): `password`, or `password_file` (read at each use, e.g. a secret)."""

    type: Literal["basic"]
    user: str = Field(min_length=1)
    password: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give either password or password_file")
        return self

    def secret(self) -> str:
        return _secret(self.password, self.password_file, "password")


class BearerAuth(Strict):
    """OAuth 2.0 bearer token (RFC 6750): `token`, or `token_file` (read at each use)."""

    type: Literal["bearer"]
    token: str | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_token(self) -> BearerAuth:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give either token or token_file")
        return self

    def secret(self) -> str:
        return _secret(self.token, self.token_file, "token")


HttpAuth = Annotated[NoAuth | BasicAuth | BearerAuth, Field(discriminator="type")]


class DicomwebPeer(Strict):
    """A DICOMweb service (PS3.18): STOW-RS for results, QIDO-RS and WADO-RS to pull studies."""

    name: str
    type: Literal["dicomweb"]
    url: str = Field(description="base URL of the service, e.g. http://orthanc:8042/dicom-web")
    auth: HttpAuth = NoAuth()
    verify_tls: bool | Path = Field(
        True, description="true: the system's trusted CAs; false: no check; or a CA bundle (PEM)"
    )
    client_certificate: Path | None = Field(
        None, description="our certificate (PEM) for a server that asks for one (mutual TLS)"
    )
    client_key: Path | None = Field(None, description="the client certificate's private key (PEM)")
    timeout_s: float = Field(60.0, gt=0, description="connect and read timeout of each request")
    ae_title: str | None = Field(
        None, description="the label its studies carry for routing (calling_ae) and sender replies"
    )

    @model_validator(mode="after")
    def _client_pair(self) -> DicomwebPeer:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"url {value!r} must start with http:// or https:// and name a host")
        return value.rstrip("/")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    @property
    def label(self) -> str:
        """What pulled studies record as their source (the `calling_ae` routing rules see)."""
        return self.ae_title or self.name


def peer_type(value: Any) -> str:
    """A peer without `type` is a DIMSE peer (configurations written before DICOMweb peers)."""
    found = value.get("type", "dimse") if isinstance(value, dict) else getattr(value, "type", "dimse")
    return found if isinstance(found, str) else "dimse"


Peer = Annotated[
    Annotated[DimsePeer, Tag("dimse")] | Annotated[DicomwebPeer, Tag("dicomweb")],
    Discriminator(
        peer_type,
        custom_error_type="peer_type_invalid",
        custom_error_message="a peer's type is dimse (the default when absent) or dicomweb",
    ),
]


# Objects a destination receives only when it asks: overlays for PACS that show neither SR nor
# SEG, and the radiograph SEG, which is standard but which OHIF 3.13 cannot display
# (docs/viewing-results.md says which viewer needs which).
Overlay = Literal["gsps", "secondary_capture", "radiograph_seg"]
OPTIONAL_OBJECTS: tuple[str, ...] = get_args(Overlay)


class DestinationBase(Strict):
    name: str
    overlays: list[Overlay] = Field(
        default_factory=list,
        description="optional objects: gsps and secondary_capture for PACS that show neither SR"
        " nor SEG; radiograph_seg, the radiograph fracture-region SEG (standard, but OHIF 3.13"
        " cannot display it)",
    )


class FolderDestination(DestinationBase):
    type: Literal["folder"]
    path: Path


class DimseDestination(DestinationBase):
    type: Literal["dimse"]
    peer: str


class DicomwebDestination(DestinationBase):
    """STOW-RS to a `type: dicomweb` peer (PS3.18 10.5)."""

    type: Literal["dicomweb"]
    peer: str


class SenderDestination(DestinationBase):
    """Reply to the configured peer whose AE title sent the study."""

    type: Literal["sender"]


Destination = Annotated[
    FolderDestination | DimseDestination | DicomwebDestination | SenderDestination,
    Field(discriminator="type"),
]


class RouteMatchRule(Strict):
    """All given criteria must hold for a series; lists mean "any of"; strings are regexes."""

    modality: list[str] = Field(default_factory=list)
    body_part: str | None = None
    exclude_body_part: str | None = Field(
        None, description="regex on BodyPartExamined that must NOT match (out-of-scope anatomy)"
    )
    series_description: str | None = None
    protocol_name: str | None = None
    sop_class: list[str] = Field(default_factory=list)
    image_type: list[str] = Field(default_factory=list, description="values that must all appear in ImageType")
    calling_ae: list[str] = Field(default_factory=list)

    @field_validator("body_part", "exclude_body_part", "series_description", "protocol_name")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class Route(Strict):
    name: str
    match: RouteMatchRule = RouteMatchRule()
    pipeline: str
    destinations: list[str] = Field(min_length=1)
