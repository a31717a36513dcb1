"""The node's own settings: one pydantic model per section of the YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from node.config.base import AE_TITLE_PATTERN, Strict, check_ae_title
from node.config.database import SQLITE, check_database, is_postgres
from node.config.security import NodeTls, WebTls

__all__ = ["AE_TITLE_PATTERN", "Strict", "check_ae_title"]


class NodeSettings(Strict):
    ae_title: str = "FRACNODE"
    bind: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535, description="0 picks a free port (tests)")
    calling_ae_titles: list[str] = Field(
        default_factory=list, description="accepted calling AE titles; empty accepts any"
    )
    max_associations: int = Field(32, ge=1, le=1000)
    max_pdu: int = Field(0, ge=0, description="maximum PDU length to receive, advertised and enforced; 0 = unlimited")
    network_timeout_s: float = Field(60.0, gt=0, description="longest silence between two PDUs")
    plain: bool = Field(True, description="listen on `port` without TLS; false: TLS only")
    tls: NodeTls = NodeTls()
    max_connections: int = Field(
        256, ge=1, le=100000, description="open TCP connections, associated or not; more are closed at once"
    )
    max_connections_per_host: int = Field(64, ge=1, le=100000)
    max_associations_per_host: int = Field(
        16, ge=1, le=1000, description="so that one host cannot take every association (at most max_associations)"
    )
    negotiation_timeout_s: float = Field(
        10.0, gt=0, description="connection to A-ASSOCIATE-AC (TLS handshake included), however the bytes trickle"
    )
    pdu_timeout_s: float = Field(
        20.0, gt=0, description="to receive one PDU (per started MiB of a longer one), however the bytes trickle"
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return check_ae_title(value)

    @model_validator(mode="after")
    def _some_listener(self) -> NodeSettings:
        if not self.plain and not self.tls.enabled:
            raise ValueError("plain: false needs tls.enabled: true (the node must listen somewhere)")
        return self

    @field_validator("calling_ae_titles")
    @classmethod
    def _calling(cls, values: list[str]) -> list[str]:
        return [check_ae_title(v) for v in values]


class StorageSettings(Strict):
    data_dir: Path = Path("fracnode-data")
    database: str = Field(
        SQLITE,
        description="'sqlite' (the embedded index in data_dir) or postgresql://user@host:port/database"
        " (no password inside: database_password_file, PGPASSFILE or PGPASSWORD)",
    )
    database_password_file: Path | None = Field(
        None, description="a file holding the PostgreSQL password (one line, readable by the node's user only)"
    )
    min_free_mb: int = Field(200, ge=0, description="refuse instances (0xA700) when less space than this is free")
    retention_days: float = Field(
        7.0, ge=0, description="delete spooled studies this long after their last job ended; 0 keeps"
    )
    max_sequence_depth: int = Field(
        32, ge=1, le=200, description="sequences nested deeper are refused (0xC210) as they arrive"
    )
    max_inflated_mb: int = Field(
        2048, ge=1, description="a deflated data set that inflates to more is refused (0xC210)"
    )
    max_inflation_ratio: float = Field(
        200.0, ge=1, description="a deflated data set that inflates more than this many times is refused"
    )

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        return check_database(value)

    @model_validator(mode="after")
    def _password_file_needs_postgres(self) -> StorageSettings:
        if self.database_password_file is not None and not is_postgres(self.database):
            raise ValueError("database_password_file is set but storage.database is not a PostgreSQL URL")
        return self


class AssemblySettings(Strict):
    quiet_period_s: float = Field(5.0, gt=0, le=86400)
    complete_on_release: bool = False


class RetrySettings(Strict):
    initial_s: float = Field(2.0, gt=0)
    factor: float = Field(2.0, ge=1.0)
    max_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> RetrySettings:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be at least initial_s ({self.initial_s})")
        return self


class JobSettings(Strict):
    workers: int = Field(1, ge=1, le=64)
    max_attempts: int = Field(3, ge=1, le=100)
    lease_s: float = Field(
        120.0,
        gt=0,
        description="a running job's lease, renewed every third of it; a worker that dies has its job"
        " taken over when the lease lapses",
    )
    retry: RetrySettings = RetrySettings(initial_s=5.0, factor=3.0, max_s=300.0)


class DispatchSettings(Strict):
    retry: RetrySettings = RetrySettings()
    batch_size: int = Field(64, ge=1)
    lease_s: float = Field(
        300.0,
        gt=0,
        description="how long a dispatcher holds a batch it sends; a dispatcher that dies leaves"
        " the batch to another when this lapses (the PACS may then get an object twice, same UID)",
    )


class InferenceSettings(Strict):
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses CUDA (half precision) when present, else the CPU"
    )
    models_dir: Path | None = Field(
        None, description="folder of MONAI bundles; null = the models/ folder shipped with fracnode"
    )
    max_batch: int = Field(8, ge=1, le=256, description="images run through a model at once")
    max_wait_ms: float = Field(5.0, ge=0, le=10000, description="how long a batch waits for images of other studies")
    weights_sha256: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of a bundle's weights file by bundle name, for bundles that record none"
        " (a MONAI Model Zoo bundle); checked before loading, as the one in metadata.json is",
    )

    @field_validator("weights_sha256")
    @classmethod
    def _sha256_hex(cls, values: dict[str, str]) -> dict[str, str]:
        for name, value in values.items():
            if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
                raise ValueError(f"{name}: a sha256 is 64 hex digits (`sha256sum models/model.pt`)")
        return values

    def bundle(self, name: str) -> Path:
        base = self.models_dir or Path(__file__).resolve().parents[2] / "models"
        return base / name


class WebUser(Strict):
    name: str = Field(min_length=1)
    password: str = Field(min_length=8, description="compared in constant time; keep the file private")


class WebAuthSettings(Strict):
    """Who may use the HTTP API, the dashboard, STOW-RS and /metrics.

    With neither tokens nor users, the node makes a random token on first start and keeps it in
    `<data_dir>/api-token` (readable by the node's user only): nothing is ever served unauthenticated
    unless `disabled: true` says so explicitly.
    """

    tokens: list[str] = Field(default_factory=list, description="bearer tokens (Authorization: Bearer ...)")
    users: list[WebUser] = Field(default_factory=list, description="HTTP Basic users (the dashboard's login)")
    disabled: bool = Field(False, description="serve without authentication (a closed lab network only)")

    @field_validator("tokens")
    @classmethod
    def _token_length(cls, values: list[str]) -> list[str]:
        for value in values:
            if len(value) < 16:
                raise ValueError("a token must have at least 16 characters; make one with `openssl rand -hex 24`")
        return values


class WebSettings(Strict):
    enabled: bool = Field(True, description="serve DICOMweb (STOW-RS), the REST API, the dashboard and /metrics")
    bind: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (env FRACNODE_HTTP_PORT); 0 picks a free port")
    auth: WebAuthSettings = WebAuthSettings()
    max_request_mb: int = Field(4096, ge=1, description="largest STOW-RS request body accepted (413 beyond it)")
    tls: WebTls = WebTls()


class LoggingSettings(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    libraries: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="level of other libraries' loggers (highdicom, pynetdicom, MONAI, uvicorn)"
    )
