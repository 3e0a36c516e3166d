"""The Open Inference Protocol (KServe "v2" REST), for KServe and Triton-style clients.

    POST /v2/models/dscnet/infer
      {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [N], "data": [base64, ...]}]}
      -> base64 -> decode_image (each) -> one model run (shared with concurrent requests)
      -> {"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [N, 4], "data": [...]}]}

Rows are in the order of the inputs, columns in the class order of the model metadata
(`GET /v2/models/dscnet`, output `parameters.classes`). The image bytes are the same files
`/predict` accepts, base64-encoded; the limits are the service's: at most
`DSCNET_MAX_BATCH_IMAGES` images, each at most `DSCNET_MAX_UPLOAD_BYTES` once decoded, the
JSON body at most `DSCNET_MAX_BATCH_BYTES`.

Errors use the protocol's body, `{"error": "<message>"}`, with the status the rest of the
service gives the same fault (`app.errors.status_for`): 400 a malformed request or a corrupt
image, 404 an unknown model, 413 over a limit, 415 not an image we accept, 503 not ready (as
KServe answers). One bad image fails the request: the protocol has no per-item errors.
The request, input and output `parameters` the protocol allows are refused (400, naming the
parameter), since the server acts on none of them; only the binary-tensor extension's
`binary_data_output` / `binary_data` set to false, which ask for JSON, pass.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from app.api.deps import ClassifierDep, ServiceState, SettingsDep, StateDep, refuse_unknown_query
from app.api.predict import record_outcome
from app.batching import BatcherStoppedError, OverloadedError
from app.errors import ModelNotReadyError, status_for
from app.labels import CLASS_IDS
from app.pipeline import classify_uploads
from app.settings import Settings
from app.uploads import FileTooLargeError, Upload, UploadError, body_deadline

MODEL_NAME = "dscnet"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
PLATFORM = "onnxruntime_onnx"
INFER_ENDPOINT = "/v2/models/{model_name}/infer"


class InferenceRequestError(ValueError):
    """A request the protocol refuses; `status` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class V2Route(APIRoute):
    """Answers this router's failures in the protocol's `{"error": "..."}` body.

    The service-wide handlers write the richer `/predict` body; v2 clients parse only
    `error`, so these routes catch the same domain errors first and keep their statuses.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def protocol_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except InferenceRequestError as err:
                return _error(err.status, str(err))
            except ModelNotReadyError as err:
                return _error(status_for(err), str(err), {"Retry-After": "5"})
            except OverloadedError as err:
                request.app.state.service.metrics.rejected.labels(err.reason).inc()
                return _error(status_for(err), str(err), {"Retry-After": str(err.retry_after_s)})
            except BatcherStoppedError as err:
                return _error(status_for(err), str(err), {"Retry-After": "5"})
            except UploadError as err:  # raised before decoding (a file over the size limit)
                request.app.state.service.metrics.rejected.labels(err.reason).inc()
                return _error(status_for(err), str(err))
            except RequestValidationError as err:
                return _error(400, f"invalid request: {err.errors()[0]['msg'] if err.errors() else err}")

        return protocol_errors


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], route_class=V2Route)


# A request's objects take only the protocol's fields, each of its own JSON type: a misspelt "ouputs" or
# a "shape" of ["1"] is a 400, not ignored or converted (what a client sent is acted on or refused).
_STRICT = ConfigDict(extra="forbid", strict=True)


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a variable dimension.")
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description="The served file's sha256 and where its model card is.")


class RequestInput(BaseModel):
    model_config = _STRICT
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(BaseModel):
    model_config = _STRICT
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = _STRICT
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


async def served_model(model_name: str) -> str:
    """The model named in the path, if it is the one this server serves."""
    if model_name != MODEL_NAME:
        raise InferenceRequestError(f"unknown model {model_name!r}; this server serves {MODEL_NAME!r}", 404)
    return model_name


ServedModelDep = Annotated[str, Depends(served_model)]


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    """Server metadata: name, version, protocol extensions (none)."""
    return ServerMetadata(name=MODEL_NAME, version=request.app.version, extensions=[])


@router.get("/health/live")
async def server_live() -> dict[str, bool]:
    """200 while the process answers."""
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "Not ready yet (or shutting down)."}})
async def server_ready(state: StateDep) -> JSONResponse:
    """200 once the model is verified and warmed up, else 503."""
    return _readiness({"ready": state.ready}, state)


@router.get("/models/{model_name}/ready", responses={503: {"description": "Not ready yet."}, 404: {}})
async def model_ready(model_name: ServedModelDep, state: StateDep) -> JSONResponse:
    """200 with `ready: true` once the model can serve, else 503."""
    return _readiness({"name": model_name, "ready": state.ready}, state)


def _readiness(body: dict[str, Any], state: ServiceState) -> JSONResponse:
    if state.ready and state.classifier is not None:
        return JSONResponse(body)
    return JSONResponse({**body, "ready": False}, status_code=503, headers={"Retry-After": "5"})


@router.get(
    "/models/{model_name}", response_model=ModelMetadata, response_model_exclude_none=True,
    responses={404: {"description": "Unknown model."}, 503: {"description": "Not ready yet."}},
)
async def model_metadata(model_name: ServedModelDep, classifier: ClassifierDep) -> ModelMetadata:
    """Model metadata: the encoded-image input, the FP32 [N, 4] output and its class order."""
    identity = classifier.identity
    return ModelMetadata(
        name=model_name,
        versions=[identity.version],
        platform=PLATFORM,
        inputs=[TensorMetadata(
            name=INPUT_NAME, datatype="BYTES", shape=[-1],
            parameters={"content": "an encoded image file (JPEG, PNG, TIFF, BMP, WebP), base64 in JSON"},
        )],
        outputs=[TensorMetadata(
            name=OUTPUT_NAME, datatype="FP32", shape=[-1, len(CLASS_IDS)], parameters={"classes": list(CLASS_IDS)},
        )],
        parameters={"sha256": identity.sha256, "model_card": "/model"},
    )


async def read_json_body(request: Request, settings: SettingsDep) -> bytes:
    """The raw body, read in chunks and refused as soon as it passes DSCNET_MAX_BATCH_BYTES."""
    limit = settings.max_batch_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InferenceRequestError(f"the request body is {int(declared):,} bytes, over the limit of {limit:,}", 413)
    chunks: list[bytes] = []
    size = 0
    try:
        async with body_deadline(settings.body_timeout_s, INPUT_NAME):  # a BodyTimeoutError: 408
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise InferenceRequestError(f"the request body is over the limit of {limit:,} bytes", 413)
                chunks.append(chunk)
    except ClientDisconnect as err:
        raise InferenceRequestError("the client disconnected before the body was complete") from err
    return b"".join(chunks)


BodyDep = Annotated[bytes, Depends(read_json_body)]

_INFER_EXAMPLE = {
    "id": "smear-42",
    "inputs": [{"name": INPUT_NAME, "shape": [1], "datatype": "BYTES", "data": ["/9j/4AAQSkZJRgABAQ..."]}],
}
_INFER_ANSWER = {
    "model_name": MODEL_NAME, "model_version": "1.0.0", "id": "smear-42",
    "outputs": [{"name": OUTPUT_NAME, "shape": [1, 4], "datatype": "FP32", "data": [0.012, 0.931, 0.041, 0.016]}],
}


@router.post(
    "/models/{model_name}/infer",
    dependencies=[Depends(refuse_unknown_query)],
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    responses={
        200: {"content": {"application/json": {"example": _INFER_ANSWER}}},
        **{status: {"description": text, "content": {"application/json": {"example": {"error": "..."}}}}
           for status, text in ((400, "Malformed request or corrupt image."), (404, "Unknown model."),
                                (413, "Over a size, count or pixel limit."), (415, "Not a supported image."),
                                (503, "The model is not ready yet."))},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "required": ["inputs"]}, "example": _INFER_EXAMPLE}}}},
)
def infer(
    request: Request,
    model_name: ServedModelDep,
    state: StateDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    body: BodyDep,
) -> InferenceResponse:
    """Classify base64-encoded images sent as one BYTES tensor; FP32 probabilities [N, 4] back."""
    inference = parse_request(body)
    uploads = [Upload(None, data) for data in image_bytes(inference, settings)]
    # The /predict path: decode_image on each, one model run shared through the micro-batcher.
    outcome = classify_uploads(classifier, uploads, max_pixels=settings.max_pixels, batcher=state.batcher)
    # The protocol fails the whole request on one bad image: then no label counts as predicted.
    record_outcome(request, state, INFER_ENDPOINT, outcome, count_labels=all(i.error is None for i in outcome.items))
    for index, item in enumerate(outcome.items):
        if item.error is not None:
            raise InferenceRequestError(f"input {INPUT_NAME!r} element {index}: {item.error}", status_for(item.error))
    rows = [[item.probabilities[name] for name in CLASS_IDS] for item in outcome.items]
    return InferenceResponse(
        model_name=model_name,
        model_version=classifier.identity.version,
        id=inference.id,
        outputs=[ResponseOutput(
            name=OUTPUT_NAME, shape=[len(rows), len(CLASS_IDS)], datatype="FP32",
            data=np.asarray(rows, dtype=np.float32).ravel().tolist(),
        )],
    )


def parse_request(body: bytes) -> InferenceRequest:
    """The request object, with the one BYTES input and the outputs this model has."""
    try:
        document = json.loads(body, object_pairs_hook=_unique_keys)
    except InferenceRequestError:
        raise
    except RecursionError as err:  # "[" * 1000: the decoder's stack, not the server, gives out
        raise InferenceRequestError("invalid inference request: the JSON is nested too deeply") from err
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise InferenceRequestError(f"invalid inference request: the body is not JSON ({err})") from err
    try:
        inference = InferenceRequest.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InferenceRequestError(f"invalid inference request at {where}: {first['msg']}") from err
    if len(inference.inputs) != 1 or inference.inputs[0].name != INPUT_NAME:
        names = [item.name for item in inference.inputs]
        raise InferenceRequestError(f"send exactly one input named {INPUT_NAME!r}, got {names}")
    for output in inference.outputs or []:
        if output.name != OUTPUT_NAME:
            raise InferenceRequestError(f"unknown output {output.name!r}; this model has {OUTPUT_NAME!r}")
    _refuse_parameters("request", inference.parameters, "binary_data_output")
    _refuse_parameters(f"input {INPUT_NAME!r}", inference.inputs[0].parameters)
    for output in inference.outputs or []:
        _refuse_parameters(f"output {OUTPUT_NAME!r}", output.parameters, "binary_data")
    return inference


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (a second "inputs" would silently win)."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise InferenceRequestError(f"invalid inference request: the key {key!r} is given more than once "
                                        "in one JSON object")
        document[key] = value
    return document


def _refuse_parameters(where: str, parameters: dict[str, Any] | None, json_flag: str | None = None) -> None:
    """Refuse every parameter: this server acts on none, and ignoring one would drop what a client asked.

    The one exception is the binary-tensor extension's flag set to false (`json_flag`), which
    asks for what the server does anyway: JSON outputs.
    """
    for name, value in (parameters or {}).items():
        if name == json_flag and value is False:
            continue
        if name == json_flag:
            raise InferenceRequestError(f"{where} parameter {name!r} may only be false: outputs are JSON, "
                                        "the binary-tensor extension is not supported")
        raise InferenceRequestError(
            f"{where} parameter {name!r} is not supported: this server acts on no {where.split()[0]} parameters")


def image_bytes(inference: InferenceRequest, settings: Settings) -> list[bytes]:
    """The encoded image files of the input tensor, checked against its shape and the limits."""
    tensor = inference.inputs[0]
    if tensor.datatype != "BYTES":
        raise InferenceRequestError(f"input {INPUT_NAME!r} must be BYTES (base64 image files), got {tensor.datatype}")
    elements = _flatten(tensor.data)
    count = math.prod(tensor.shape) if tensor.shape else 0
    if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]) or count != len(elements):
        raise InferenceRequestError(
            f"input {INPUT_NAME!r} has shape {tensor.shape} and {len(elements)} elements; "
            "send shape [N] (or [N, 1]) with N base64 strings"
        )
    if not elements:
        raise InferenceRequestError(f"input {INPUT_NAME!r} holds no image")
    if len(elements) > settings.max_batch_images:
        raise InferenceRequestError(
            f"{len(elements)} images in one request, more than the limit of {settings.max_batch_images}", 413
        )
    return [_decode_base64(element, index, settings.max_upload_bytes) for index, element in enumerate(elements)]


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _decode_base64(element: Any, index: int, max_bytes: int) -> bytes:
    if not isinstance(element, str):
        raise InferenceRequestError(f"input {INPUT_NAME!r} element {index} is not a base64 string")
    if len(element) > (max_bytes + 2) // 3 * 4:
        # Refused before decoding: the base64 text alone says the file is over the limit.
        raise FileTooLargeError(
            f"input {INPUT_NAME!r} element {index}: the file is over the limit of {max_bytes:,} bytes", INPUT_NAME
        )
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InferenceRequestError(f"input {INPUT_NAME!r} element {index} is not valid base64: {err}") from err
