"""The HTTP application: DICOMweb (PS3.18), the REST API, the dashboard and /metrics.

Each part is a router in its own module; this one assembles them. Handlers reach the node only
through what the application holds: `request.app.state.queries` (node.web.queries.Queries) to
read, `request.app.state.commands` (node.web.commands.Commands) to act, and
`request.app.state.config`; `request.app.state.audit` records operator actions. Handlers that
touch the database or files are plain `def` functions, which FastAPI runs in its thread pool, so
the event loop never blocks.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from node import __version__
from node.audit import Audit
from node.config import Config
from node.web import api, dashboard, hardening, metrics, overview, pull, stow
from node.web.auth import Credentials, authenticated
from node.web.commands import Commands
from node.web.queries import Queries

# (router, URL prefix): all but /health need authentication
ROUTERS: tuple[tuple[APIRouter, str], ...] = (
    (stow.router, "/dicomweb"),
    (api.router, "/api/v1"),
    (pull.router, "/api/v1"),
    (overview.router, "/api/v1"),
    (metrics.router, ""),
    (dashboard.router, ""),
)


def create_app(config: Config, queries: Queries, commands: Commands, credentials: Credentials,
               audit: Audit | None = None) -> FastAPI:
    app = FastAPI(
        title="fracnode",
        version=__version__,
        description="A DICOM node that runs fracture AI. DICOMweb STOW-RS under /dicomweb, "
        "the operator's API under /api/v1, the dashboard at /, Prometheus metrics at /metrics.",
        docs_url=None,  # node.web.hardening serves both, with authentication
        redoc_url=None,
        openapi_url=None,
    )
    app.state.config = config
    app.state.queries = queries
    app.state.commands = commands
    app.state.credentials = credentials
    app.state.audit = audit  # operator actions and refused sign-ins are audited (IHE ATNA)

    @app.get("/health", tags=["service"], summary="Liveness (no authentication)")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/v1/session", tags=["service"], summary="Who the credentials authenticate")
    def session(principal: str = Depends(authenticated)) -> dict[str, str]:
        return {"principal": principal, "version": __version__}

    for router, prefix in ROUTERS:
        app.include_router(router, prefix=prefix, dependencies=[Depends(authenticated)])
    dashboard.install(app)  # its sign-in page answers refusals of the dashboard's URLs
    hardening.install(app, https=config.web.tls.enabled)
    return app
