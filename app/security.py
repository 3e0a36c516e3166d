"""Access control: optional API keys, and CORS only for the origins configured.

API keys come from `DSCNET_API_KEYS` (comma-separated) and/or the file named by
`DSCNET_API_KEYS_FILE` (one key per line, `#` comments). With no key configured, access is
open. With keys, every request needs one, in `X-API-Key: <key>` or
`Authorization: Bearer <key>`, except on the paths in `OPEN_PATHS` (health probes and the
API description) and `/metrics` unless `DSCNET_METRICS_REQUIRE_KEY` is true.

The check is an ASGI middleware, not a route dependency, so that it runs before any body is
read and covers every route, mount and unknown path added later by default: a new route is
protected unless someone adds it to `OPEN_PATHS`. Keys are kept only as SHA-256 digests and
compared with `hmac.compare_digest` against every configured key, so neither the time taken
nor an early exit tells which key or how many characters matched.

Exceptions:
    AccessConfigError  (the keys cannot be loaded or are unsafe: the service refuses to start)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_content, route_path, send_error

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.settings import Settings

# Paths that never need a key: probes must work for the orchestrator; the API description,
# the web page and its static files hold no data (the code is open source), and the page is
# where a technician types the key. Matching is exact, so `/health/live/` or `/Health/live`
# are not open: anything not listed here needs a key.
OPEN_PATHS = frozenset({
    "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready",
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/",
})
OPEN_PREFIXES = ("/static/",)  # the page's files, served from app/static only
# The v2 per-model readiness probe; `{model_name}` (the OpenAPI template) matches too.
_OPEN_PATTERN = re.compile(r"^/v2/models/[^/]+/ready$")
METRICS_ROUTE = "/metrics"
MIN_KEY_CHARS = 16
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: it travels in a header
_BEARER = re.compile(r"^bearer\s+(\S+)\s*$", re.IGNORECASE)


class AccessConfigError(ValueError):
    """The API keys cannot be loaded, or one is unsafe; the message never contains a key."""


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call what: the digests of the valid keys, and whether /metrics is open."""

    key_digests: tuple[bytes, ...] = ()
    metrics_open: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.key_digests)

    def is_open(self, path: str) -> bool:
        """Whether a request to `path` needs no key."""
        return not self.enabled or is_open_path(path) or (self.metrics_open and path == METRICS_ROUTE)

    def accepts(self, candidates: Iterable[bytes]) -> bool:
        """True if any presented credential is a configured key; compares against all keys, always."""
        accepted = False
        for candidate in candidates:
            digest = hashlib.sha256(candidate).digest()
            for key_digest in self.key_digests:
                accepted |= hmac.compare_digest(digest, key_digest)
        return accepted


def is_open_path(path: str) -> bool:
    """Whether `path` is open whatever the settings: the health probes and the API description."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or bool(_OPEN_PATTERN.match(path))


def load_access_policy(settings: Settings) -> AccessPolicy:
    """The keys of `DSCNET_API_KEYS` and `DSCNET_API_KEYS_FILE`, checked and hashed."""
    keys = [(key.get_secret_value(), "DSCNET_API_KEYS") for key in settings.api_keys]
    if settings.api_keys_file is not None:
        keys += [(key, "DSCNET_API_KEYS_FILE") for key in _read_key_file(settings)]
    for position, (key, source) in enumerate(keys, start=1):
        _check_key(key, source, position)
    digests = tuple(dict.fromkeys(hashlib.sha256(key.encode("ascii")).digest() for key, _ in keys))
    return AccessPolicy(key_digests=digests, metrics_open=not settings.metrics_require_key)


def _read_key_file(settings: Settings) -> list[str]:
    path = settings.api_keys_file
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise AccessConfigError(f"DSCNET_API_KEYS_FILE: cannot read {path}: {reason}") from None
    keys = [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        # An empty file most likely means a secret that failed to mount: refusing to start is
        # safer than silently serving without authentication.
        raise AccessConfigError(f"DSCNET_API_KEYS_FILE: {path} holds no key")
    return keys


def _check_key(key: str, source: str, position: int) -> None:
    # The message names the key by position only: keys must not reach logs.
    if len(key) < MIN_KEY_CHARS:
        raise AccessConfigError(
            f"{source}: key {position} is shorter than {MIN_KEY_CHARS} characters; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not _KEY_CHARS.match(key):
        raise AccessConfigError(f"{source}: key {position} has characters other than printable ASCII")


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The credentials a request carries: X-API-Key values and Authorization: Bearer tokens."""
    keys = []
    for name, value in headers:
        if name == b"x-api-key":
            keys.append(value.strip())
        elif name == b"authorization":
            match = _BEARER.match(value.decode("latin-1"))
            if match:
                keys.append(match.group(1).encode("latin-1"))
    return keys


class ApiKeyMiddleware:
    """Answers 401 to a request without a valid key, before the route or its body is read.

    Reads the policy from `app.state.service.access`, which the lifespan sets; until then
    (the service is starting) a protected route answers 503, as it would without a model.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # the lifespan
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        state = scope["app"].state.service
        policy: AccessPolicy | None = state.access
        keys = presented_keys(scope["headers"])
        if is_open_path(path) or (policy is not None and (policy.is_open(path) or policy.accepts(keys))):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # refused before the handshake: HTTP 403
        elif policy is None:
            await send_error(scope, send, 503, "model_not_ready", state.not_ready_reason, {"Retry-After": "5"})
        elif not keys:
            await send_error(scope, send, 401, "unauthorized", _MISSING, {"WWW-Authenticate": 'Bearer realm="dscnet"'})
        else:
            headers = {"WWW-Authenticate": 'Bearer realm="dscnet", error="invalid_token"'}
            await send_error(scope, send, 401, "unauthorized", "the API key is not valid", headers)


_MISSING = "an API key is required: send it as X-API-Key: <key> or Authorization: Bearer <key>"


class ConfiguredCorsMiddleware:
    """CORS for `DSCNET_CORS_ORIGINS` only; without origins, no CORS header is ever sent.

    Built on the first request, because the settings may be read only at start-up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cors: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = scope["app"].state.service.settings if scope["type"] == "http" else None
        if settings is None or not settings.cors_origins:
            await self.app(scope, receive, send)
            return
        if self._cors is None:
            from app.api.explain import PREDICTION_HEADERS  # the answer of /explain travels in them

            self._cors = CORSMiddleware(
                self.app,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                # the LIS ids too: a page of the lab's that sends them would otherwise be refused
                # at its preflight
                allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type", "Accept",
                               "X-Patient-ID", "X-Order-ID"],
                expose_headers=["X-Request-ID", "Retry-After", *PREDICTION_HEADERS],
                allow_credentials=False,  # keys travel in headers, never in cookies
            )
        await self._cors(scope, receive, send)


def install_access_control(app: FastAPI) -> None:
    """Add the API-key check and CORS, and describe the keys in the OpenAPI document.

    Call before the request-context middleware is added, so that 401s get a request id and
    are counted and logged like every other answer.
    """
    app.add_middleware(ApiKeyMiddleware)
    app.add_middleware(ConfiguredCorsMiddleware)
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build_openapi()  # FastAPI caches it; the additions below are idempotent
        policy: AccessPolicy | None = app.state.service.access
        if policy is not None and policy.enabled:
            _document_keys(schema, policy)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_keys(schema: dict[str, Any], policy: AccessPolicy) -> None:
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["APIKeyHeader"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    schemes["BearerKey"] = {"type": "http", "scheme": "bearer", "description": "the API key as a bearer token"}
    refused = {
        "description": "No API key, or not a valid one.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": {"application/json": {"example": error_content(401, "unauthorized", _MISSING, None, None)}},
    }
    for path, operations in schema.get("paths", {}).items():
        if policy.is_open(path):
            continue
        for operation in operations.values():
            operation["security"] = [{"APIKeyHeader": []}, {"BearerKey": []}]
            operation.setdefault("responses", {}).setdefault("401", refused)
