"""`GET /metrics`: the node's Prometheus metrics (node.metrics) in the text exposition format.

Authenticated like the rest of the HTTP side: give Prometheus a bearer token
(`authorization: {credentials: ...}` in its scrape config) or a Basic user.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["service"])
# the classic text format, which generate_latest writes and every Prometheus version reads
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text exposition format 0.0.4)",
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    return Response(request.app.state.queries.metrics(), media_type=CONTENT_TYPE)
