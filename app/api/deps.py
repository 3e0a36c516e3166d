"""The service's shared state and the typed dependencies routes ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from app.batching import MicroBatcher
from app.classifier import OnnxClassifier
from app.errors import ModelNotReadyError
from app.metrics import Metrics
from app.security import AccessPolicy
from app.settings import Settings
from app.uploads import ClientDisconnectedError, Upload, UploadLimits, check_declared_size, read_uploads

# Room for the multipart boundaries and part headers around a single file at its limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


@dataclass
class ServiceState:
    """What the lifespan sets up and the routes read; `ready` flips only after warm-up."""

    metrics: Metrics
    settings: Settings | None = None
    classifier: OnnxClassifier | None = None
    #: shares model runs between concurrent requests; None when batching is off
    batcher: MicroBatcher | None = None
    ready: bool = False
    not_ready_reason: str = "the model is not loaded yet"
    load_error: str | None = None
    #: who may call what (app.security); None until the lifespan has read the settings
    access: AccessPolicy | None = None


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_classifier(state: StateDep) -> OnnxClassifier:
    if not state.ready or state.classifier is None:
        raise ModelNotReadyError(state.not_ready_reason)
    return state.classifier


ClassifierDep = Annotated[OnnxClassifier, Depends(get_classifier)]


async def get_settings(state: StateDep) -> Settings:
    if state.settings is None:
        raise ModelNotReadyError(state.not_ready_reason)
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def refuse_unknown_query(request: Request) -> None:
    """A query parameter the route does not read is a 422 `unexpected_parameter`, not ignored;
    one given twice is a 422 `repeated_parameter` (every one the service reads takes one value,
    and FastAPI would keep the last: `?format=json&format=hl7` answered HL7 without a word).

    A LIS integration that sends `?patient_id=...` (a header here) would otherwise get an HL7
    message without the patient and no word why. Runs before the body is read.
    """
    if not request.query_params:
        return
    route: APIRoute = request.scope["route"]
    names = _query_parameters(route.dependant)  # a few microseconds, only when a query is sent
    seen: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in names:
            reads = f"it reads {', '.join(sorted(names))}" if names else "it takes none"
            raise RequestValidationError([{
                "type": "unexpected_parameter", "loc": ("query", name), "input": value,
                "msg": f"{name!r} is not a query parameter of this endpoint ({reads})",
            }])
        if name in seen:
            raise RequestValidationError([{
                "type": "repeated_parameter", "loc": ("query", name), "input": [seen[name], value],
                "msg": f"{name!r} is given more than once ({seen[name]!r}, {value!r}); send it once",
            }])
        seen[name] = value


def _query_parameters(dependant: Dependant) -> set[str]:
    """The query parameters a route reads, its dependencies' included."""
    names = {field.alias for field in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_parameters(dependency)
    return names


async def _read(request: Request, limits: UploadLimits) -> list[Upload]:
    boundary = check_declared_size(
        request.headers.get("content-type"), request.headers.get("content-length"), limits
    )
    try:
        return await read_uploads(request.stream(), boundary, limits)
    except ClientDisconnect as err:
        raise ClientDisconnectedError("the client disconnected before the body was complete", limits.field) from err


async def read_image_upload(request: Request, settings: SettingsDep) -> Upload:
    """The single file in field `image` of a /predict request."""
    limits = UploadLimits(
        field="image",
        max_files=1,
        max_file_bytes=settings.max_upload_bytes,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        body_timeout_s=settings.body_timeout_s,
    )
    (upload,) = await _read(request, limits)
    return upload


async def read_batch_uploads(request: Request, settings: SettingsDep) -> list[Upload]:
    """The files in field `images` of a /predict-batch request, in the order sent."""
    limits = UploadLimits(
        field="images",
        max_files=settings.max_batch_images,
        max_file_bytes=settings.max_upload_bytes,
        max_body_bytes=settings.max_batch_bytes,
        per_file_errors=True,
        body_timeout_s=settings.body_timeout_s,
    )
    return await _read(request, limits)


ImageUploadDep = Annotated[Upload, Depends(read_image_upload)]
BatchUploadsDep = Annotated[list[Upload], Depends(read_batch_uploads)]
