"""The HTTP application: DICOMweb (PS3.18), the REST API, the dashboard and /metrics.

Each part is a router in its own module; this one assembles them and holds the node reference
(`request.app.state.node`) that handlers use. Handlers that touch SQLite or files are plain
`def` functions, which FastAPI runs in its thread pool, so the event loop never blocks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from node import __version__
from node.web import hardening
from node.web.auth import Credentials, authenticated

if TYPE_CHECKING:
    from node.service import Node

# (module, URL prefix): every module exposes `router`; all but /health need authentication
ROUTERS: tuple[tuple[str, str], ...] = (
    ("node.web.stow", "/dicomweb"),
    ("node.web.api", "/api/v1"),
    ("node.web.pull", "/api/v1"),
    ("node.web.overview", "/api/v1"),
    ("node.web.metrics", ""),
    ("node.web.dashboard", ""),
)


def create_app(node: Node, credentials: Credentials) -> FastAPI:
    app = FastAPI(
        title="fracnode",
        version=__version__,
        description="A DICOM node that runs fracture AI. DICOMweb STOW-RS under /dicomweb, "
        "the operator's API under /api/v1, the dashboard at /, Prometheus metrics at /metrics.",
        docs_url=None,  # node.web.hardening serves both, with authentication
        redoc_url=None,
        openapi_url=None,
    )
    app.state.node = node
    app.state.credentials = credentials

    @app.get("/health", tags=["service"], summary="Liveness (no authentication)")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/v1/session", tags=["service"], summary="Who the credentials authenticate")
    def session(principal: str = Depends(authenticated)) -> dict[str, str]:
        return {"principal": principal, "version": __version__}

    for module, prefix in ROUTERS:
        part = importlib.import_module(module)
        app.include_router(part.router, prefix=prefix, dependencies=[Depends(authenticated)])
        if hasattr(part, "install"):  # app-wide hooks of a part (the dashboard's sign-in page)
            part.install(app)
    hardening.install(app, https=node.config.web.tls.enabled)
    return app
