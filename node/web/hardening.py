"""What every HTTP response gets, whatever the request was: an answer, safe headers, no 500.

- `ResponseGuard` (ASGI middleware) replaces bytes outside printable ASCII in every header value
  (a STOW-RS part's Content-Type quoted in a Warning, say), which the HTTP server would otherwise
  refuse to send, leaving the client without any answer (RFC 9110 5.5); and adds the security
  headers where a route set none: `Cache-Control: no-store` (responses carry study data),
  `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`, a
  Content-Security-Policy that allows nothing, and with HTTPS `Strict-Transport-Security`.
- Validation errors (422) never echo the input: a value that JSON cannot carry (`1e999999` is
  infinity, `NaN`) made the error response itself fail with a 500; and an input may be anything.
- The API description (`/api/openapi.json`, `/api/docs`) needs the same credentials as the API;
  the docs page is rendered here from the schema, with no script from anywhere.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.logs import event
from node.redact import format_exception
from node.store import DatabaseUnavailable
from node.web.auth import authenticated

log = logging.getLogger("fracnode.web")
HSTS = "max-age=31536000"  # RFC 6797: one year, for this host only
DEFAULT_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t"


def clean_header_value(value: bytes) -> bytes:
    """`value` with every byte outside printable ASCII (and tab) replaced by '?'."""
    if all(byte in _PRINTABLE for byte in value):
        return value
    return bytes(byte if byte in _PRINTABLE else 0x3F for byte in value)


class ResponseGuard:
    """ASGI middleware: every response start gets clean header values and the default headers."""

    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        self.extra = DEFAULT_HEADERS + (((b"strict-transport-security", HSTS.encode()),) if hsts else ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, clean_header_value(value)) for name, value in message.get("headers", [])]
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in self.extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, guarded)


def _safe_errors(errors: Any) -> list[dict[str, Any]]:
    """pydantic's errors without `input` and `ctx` (they may hold non-JSON values or anything)."""
    safe = []
    for error in errors:
        loc = [part if isinstance(part, int | str) else str(part) for part in error.get("loc", ())]
        safe.append({"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))})
    return safe


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _safe_errors(exc.errors())}, status_code=422)


DATABASE_DOWN = (
    "the node's database cannot be reached: the dashboard and the API answer again when it is back,"
    " the DICOM listeners refuse instances with 0xA700 (out of resources) meanwhile and senders retry;"
    " check the PostgreSQL server named by storage.database"
)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """An outage of the database, not a bug: 503 with what it means, and when to ask again."""
    return JSONResponse({"detail": DATABASE_DOWN}, status_code=503, headers={"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not an input: logged (a traceback without library messages), answered plainly."""
    event(
        log, logging.ERROR, "request failed", method=request.method, path=request.url.path, error=format_exception(exc)
    )
    return JSONResponse({"detail": "internal error; the node's log has the details"}, status_code=500)


def _docs_page(schema: dict[str, Any]) -> str:
    """The API reference as plain HTML: operations, parameters and responses from the schema."""
    rows = []
    for path, operations in sorted(schema.get("paths", {}).items()):
        for method, operation in operations.items():
            parameters = ", ".join(
                f"{p.get('name')} ({p.get('in')}{', required' if p.get('required') else ''})"
                for p in operation.get("parameters", [])
            )
            responses = ", ".join(sorted(operation.get("responses", {})))
            rows.append(
                f"<tr><td><code>{html.escape(method.upper())}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(operation.get('summary', ''))}</td><td>{html.escape(parameters)}</td>"
                f"<td>{html.escape(responses)}</td></tr>"
            )
    info = schema.get("info", {})
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(info.get('title', 'API'))} API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border-bottom:1px solid #ccc;"
        "padding:4px 8px;text-align:left;vertical-align:top}</style></head><body>"
        f"<h1>{html.escape(info.get('title', ''))} {html.escape(info.get('version', ''))}</h1>"
        f"<p>{html.escape(info.get('description', ''))}</p>"
        '<p>The machine-readable description: <a href="/api/openapi.json">/api/openapi.json</a>'
        " (OpenAPI 3; load it into any OpenAPI viewer).</p>"
        "<table><tr><th>method</th><th>path</th><th>what</th><th>parameters</th><th>responses</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def install(app: FastAPI, https: bool) -> None:
    """The guard, the error handlers and the authenticated API description."""
    app.add_middleware(ResponseGuard, hsts=https)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[Depends(authenticated)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/docs", include_in_schema=False, dependencies=[Depends(authenticated)])
    def docs() -> HTMLResponse:
        policy = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
        return HTMLResponse(_docs_page(app.openapi()), headers={"Content-Security-Policy": policy})
