"""Per-request bookkeeping as a plain ASGI middleware: request id, metrics, one log line.

A plain ASGI class rather than `BaseHTTPMiddleware`: it passes the body stream through
untouched, so uploads are still read chunk by chunk under their limits.
"""

from __future__ import annotations

import logging
import re
import uuid
from time import perf_counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
# A client's id is echoed only if it is short and plain: it goes into logs and headers.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_log = logging.getLogger("dscnet.access")


def client_request_id(scope: Scope) -> str | None:
    """The X-Request-ID the client sent, if it is safe to echo."""
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            return text if _SAFE_REQUEST_ID.match(text) else None
    return None


class RequestContextMiddleware:
    """Gives each request an id (echoed in X-Request-ID), counts it, times it, logs it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["log"] = {}  # routes add images, labels and stage timings here
        counts = {"status": 500, "request_bytes": 0, "response_bytes": 0}
        start = perf_counter()
        state["started"] = start  # routes report total time from here, body reading included

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                counts["request_bytes"] += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER.encode()]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                counts["response_bytes"] += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, counting_receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = perf_counter() - start
            endpoint = _endpoint(scope)
            self.metrics.requests.labels(endpoint, str(counts["status"])).inc()
            self.metrics.stage_seconds.labels(endpoint, "total").observe(elapsed)
            fields: dict[str, Any] = {
                "request_id": request_id,
                "method": scope["method"],
                "endpoint": endpoint,
                **counts,
                "duration_ms": round(elapsed * 1000, 2),
                **state["log"],
            }
            access_log.info("request", extra={"fields": fields})


def _endpoint(scope: Scope) -> str:
    """The matched route's template (bounded label values), or 'unmatched'."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
