"""The operator's dashboard at `/`: one page of HTML, CSS and JavaScript over the REST API.

Signing in: the page needs the same credentials as the API. A browser that asks for it without
credentials gets a 401 whose challenge makes it show its login prompt when `web.auth.users` are
configured (HTTP Basic); the body of that 401 is the page itself, which then offers a sign-in
form for an API token (or user and password) and says why access was refused. The page holds no
data, so showing it to a stranger shows nothing; everything it displays comes from /api/v1 with
credentials. CSS and JavaScript are inlined (a script hash in the Content-Security-Policy), so
no other file has to be fetched before signing in.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

router = APIRouter(include_in_schema=False)
PAGES = ("/", "/ui", "/ui/")


@cache
def _page() -> tuple[str, str]:
    """The page with its CSS and script inlined, and the Content-Security-Policy that allows it."""
    static = files("node.web") / "static"
    script = (static / "dashboard.js").read_text(encoding="utf-8")
    style = (static / "dashboard.css").read_text(encoding="utf-8")
    html = (static / "index.html").read_text(encoding="utf-8")
    html = html.replace("<!--STYLE-->", f"<style>\n{style}</style>")
    html = html.replace("<!--SCRIPT-->", f"<script>\n{script}</script>")
    digest = base64.b64encode(hashlib.sha256(f"\n{script}".encode()).digest()).decode()
    policy = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline';"
        " img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none';"
        " frame-ancestors 'none'"
    )
    return html, policy


def page(status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    html, policy = _page()
    return HTMLResponse(
        html,
        status_code,
        headers={
            **(headers or {}),
            "Content-Security-Policy": policy,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get("/", response_class=HTMLResponse, summary="The dashboard")
def dashboard() -> HTMLResponse:
    return page()


@router.get("/ui", response_class=HTMLResponse)
@router.get("/ui/", response_class=HTMLResponse)
def dashboard_alias() -> HTMLResponse:
    return page()


async def _refusal(request: Request, exc: Exception) -> Response:
    """A browser refused on the dashboard gets the sign-in page (with the 401 and its challenge);
    every other refusal stays the API's JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if (
        exc.status_code == 401
        and request.method == "GET"
        and request.url.path in PAGES
        and "text/html" in request.headers.get("accept", "")
    ):
        return page(401, dict(exc.headers or {}))
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    """Called by node.web.app after the routers are included."""
    app.add_exception_handler(StarletteHTTPException, _refusal)
