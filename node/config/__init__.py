"""The node's configuration: one YAML file validated by pydantic (`extra="forbid"`).

Every model default is the embedded default; `config/fracnode.yaml` spells the same
values out (a test keeps the two equal). Errors name the YAML path and line.
"""

from node.config.loading import ENV_ALIASES, ConfigError, ConfigProblem, load, parse
from node.config.model import Config, reference_problems
from node.config.peers import (
    BasicAuth,
    BearerAuth,
    Destination,
    DestinationBase,
    DicomwebDestination,
    DicomwebPeer,
    DimseDestination,
    DimsePeer,
    FolderDestination,
    HttpAuth,
    NoAuth,
    Overlay,
    Peer,
    Route,
    RouteMatchRule,
    SenderDestination,
)
from node.config.security import AuditSettings, NodeTls, PeerTls, SyslogSettings, WebTls
from node.config.settings import (
    AssemblySettings,
    DispatchSettings,
    InferenceSettings,
    JobSettings,
    LoggingSettings,
    NodeSettings,
    RetrySettings,
    StorageSettings,
    Strict,
    WebAuthSettings,
    WebSettings,
    WebUser,
)

__all__ = [
    "ENV_ALIASES",
    "AssemblySettings",
    "AuditSettings",
    "BasicAuth",
    "BearerAuth",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Destination",
    "DestinationBase",
    "DicomwebDestination",
    "DicomwebPeer",
    "DimseDestination",
    "DimsePeer",
    "DispatchSettings",
    "FolderDestination",
    "HttpAuth",
    "InferenceSettings",
    "JobSettings",
    "LoggingSettings",
    "NoAuth",
    "NodeSettings",
    "NodeTls",
    "Overlay",
    "Peer",
    "PeerTls",
    "RetrySettings",
    "Route",
    "RouteMatchRule",
    "SenderDestination",
    "StorageSettings",
    "Strict",
    "SyslogSettings",
    "WebAuthSettings",
    "WebSettings",
    "WebTls",
    "WebUser",
    "load",
    "parse",
    "reference_problems",
]
