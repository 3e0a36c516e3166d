"""Liveness, readiness, the model card and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ClassifierDep, StateDep
from app.schemas import ErrorResponse, Liveness, ModelRef, Readiness

router = APIRouter(tags=["operations"])

_NOT_READY = {"status": "not_ready", "detail": "the model is not loaded yet", "model": None}
_READY = {
    "status": "ready",
    "detail": "model loaded, checksum verified, warm-up inference done",
    "model": {"name": "dscnet", "version": "1.0.0", "sha256": "3f1c…e9a0"},
}


@router.get("/health/live", response_model=Liveness)
async def live() -> Liveness:
    """The process is up and answering."""
    return Liveness()


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={
        200: {"content": {"application/json": {"example": _READY}}},
        503: {"model": Readiness, "content": {"application/json": {"example": _NOT_READY}}},
    },
)
async def ready(state: StateDep) -> Readiness | JSONResponse:
    """200 once the model is loaded, its checksum verified and a warm-up inference done; else 503."""
    if not state.ready or state.classifier is None:
        body = Readiness(status="not_ready", detail=state.not_ready_reason)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
    identity = state.classifier.identity
    return Readiness(
        status="ready",
        detail="model loaded, checksum verified, warm-up inference done",
        model=ModelRef(name=identity.name, version=identity.version, sha256=identity.sha256),
    )


@router.get(
    "/model",
    responses={
        200: {"description": "The model card (models/dscnet.json) as loaded.", "content": {"application/json": {
            "example": {"name": "dscnet", "version": "1.0.0", "file": "dscnet.onnx", "sha256": "3f1c…e9a0",
                        "classes": ["benign", "early_pre_b", "pre_b", "pro_b"],
                        "preprocessing": {"version": "1", "function": "app.imaging.decode_image"}}}}},
        503: {"model": ErrorResponse, "description": "The model is not loaded yet."},
    },
)
async def model_card(classifier: ClassifierDep) -> dict[str, Any]:
    """The model card of the model being served, including its metrics and intended use."""
    return classifier.raw_card


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {
        "example": 'dscnet_requests_total{endpoint="/predict",status="200"} 12.0\n'}}}},
)
async def metrics(state: StateDep) -> Response:
    """Prometheus exposition of the `dscnet_` metrics."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
