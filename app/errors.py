"""One table from domain errors to HTTP statuses, and the handlers that write error bodies.

Every error answer has the same JSON shape, `{"error": {"status", "code", "field",
"detail"}, "request_id"}`, whether it comes from an image, the upload, FastAPI's validation
or routing. A client's input never yields a 500: only a fault of the server does.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Scope, Send

from app.batching import BatcherStoppedError, OverloadedError
from app.explain import ExplanationUnavailableError
from app.imaging import (
    CorruptImageError,
    ImageDecodeError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedImageError,
)
from app.lis.negotiate import NotAcceptableError
from app.uploads import (
    BodyTimeoutError,
    EmptyFileError,
    ExtraFileError,
    FileTooLargeError,
    MalformedUploadError,
    MissingFieldError,
    NotMultipartError,
    RequestTooLargeError,
    TooManyFilesError,
    UnexpectedFieldError,
    UploadError,
)


class ModelNotReadyError(RuntimeError):
    """A prediction was asked for before the model was verified and warmed up."""

    reason = "model_not_ready"


# Looked up by the error's nearest class, so the base classes are fallbacks for new subclasses.
HTTP_STATUS: dict[type[Exception], int] = {
    ImageDecodeError: 400,
    UnsupportedImageError: 415,
    CorruptImageError: 400,
    ImageTooLargeError: 413,
    ImageTooSmallError: 422,
    NotMultipartError: 415,
    MalformedUploadError: 400,
    MissingFieldError: 422,
    EmptyFileError: 422,
    ExtraFileError: 422,
    FileTooLargeError: 413,
    RequestTooLargeError: 413,
    TooManyFilesError: 413,
    UnexpectedFieldError: 422,
    BodyTimeoutError: 408,
    UploadError: 400,
    ModelNotReadyError: 503,
    BatcherStoppedError: 503,
    OverloadedError: 503,
    NotAcceptableError: 406,
    ExplanationUnavailableError: 501,
}


def status_for(error: Exception) -> int:
    """The HTTP status of a domain error: the table entry of its nearest class."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_content(status: int, code: str, detail: str, field: str | None, request_id: str | None) -> dict:
    """The JSON body of every error answer."""
    return {
        "error": {"status": status, "code": code, "field": field, "detail": detail},
        "request_id": request_id,
    }


def route_path(scope: Scope) -> str:
    """The path the router matches: without the root path a proxy mounted the app under."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def send_error(scope: Scope, send: Send, status: int, code: str, detail: str, headers: dict[str, str]) -> None:
    """Write an error answer straight to ASGI, for middlewares that answer before any route.

    Paths under /v2 get the Open Inference Protocol's body, `{"error": detail}`, as that
    router's own errors do; every other path the common body.
    """
    path = route_path(scope)
    if path == "/v2" or path.startswith("/v2/"):
        body: dict = {"error": detail}
    else:
        body = error_content(status, code, detail, None, scope.get("state", {}).get("request_id"))
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(request: Request, error: ImageDecodeError | UploadError, field: str) -> JSONResponse:
    status = status_for(error)
    field = getattr(error, "field", field)
    return JSONResponse(
        error_content(status, error.reason, str(error), field, _request_id(request)), status_code=status
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the common error body."""

    @app.exception_handler(UploadError)
    async def _upload(request: Request, error: UploadError) -> JSONResponse:
        # Raised while reading the body, before a route could count it (image errors are
        # counted by the route that decoded them).
        app.state.service.metrics.rejected.labels(error.reason).inc()
        getattr(request.state, "log", {}).update(rejected={error.reason: 1})  # the access log says why, as the metric
        return error_response(request, error, error.field)

    @app.exception_handler(ImageDecodeError)
    async def _image(request: Request, error: ImageDecodeError) -> JSONResponse:
        return error_response(request, error, "image")

    @app.exception_handler(ModelNotReadyError)
    async def _not_ready(request: Request, error: ModelNotReadyError) -> JSONResponse:
        status = status_for(error)
        body = error_content(status, error.reason, str(error), None, _request_id(request))
        return JSONResponse(body, status_code=status, headers={"Retry-After": "5"})

    @app.exception_handler(NotAcceptableError)
    @app.exception_handler(ExplanationUnavailableError)
    async def _cannot_answer(request: Request, error: NotAcceptableError | ExplanationUnavailableError) -> JSONResponse:
        status = status_for(error)
        return JSONResponse(error_content(status, error.reason, str(error), None, _request_id(request)), status)

    @app.exception_handler(BatcherStoppedError)
    async def _stopping(request: Request, error: BatcherStoppedError) -> JSONResponse:
        body = error_content(503, error.reason, str(error), None, _request_id(request))
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(OverloadedError)
    async def _overloaded(request: Request, error: OverloadedError) -> JSONResponse:
        app.state.service.metrics.rejected.labels(error.reason).inc()
        body = error_content(503, error.reason, str(error), None, _request_id(request))
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request", "type": "invalid"}
        field = ".".join(str(p) for p in first["loc"][1:]) or None
        body = error_content(422, str(first["type"]), str(first["msg"]), field, _request_id(request))
        return JSONResponse(body, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
            # an unknown path or method under the open inference protocol: its own error body
            return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        body = error_content(error.status_code, code, str(error.detail), None, _request_id(request))
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def _server_fault(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises the error after this answer, so the server logs its traceback.
        # This answer is sent from outside every middleware (Starlette's ServerErrorMiddleware),
        # so the request-id header the request-context middleware adds must be set here.
        request_id = _request_id(request)
        body = error_content(500, "internal_error", "the server failed; see its log", None, request_id)
        return JSONResponse(body, status_code=500, headers={"X-Request-ID": request_id} if request_id else None)
