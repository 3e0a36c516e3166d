"""POST /predict and POST /predict-batch.

The uploads are read asynchronously by the dependencies; decoding, the quality checks and
inference (`classify_uploads`) then run in the thread pool, so they never block the event loop.
The rest of a route (building and serialising the answer) is cheap and stays on the loop: a
plain `def` route would cost a second hand-off to the pool and back for the response
validation alone (docs/PERFORMANCE.md).
"""

from __future__ import annotations

from collections import Counter
from time import perf_counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import (
    BatchUploadsDep,
    ClassifierDep,
    ImageUploadDep,
    ServiceState,
    SettingsDep,
    StateDep,
    refuse_unknown_query,
)
from app.api.formats import (
    LIS_CONTENT,
    NO_EXPLANATION,
    NOT_ACCEPTABLE,
    AnswerFormatDep,
    heatmap,
    only_type,
    outcome_fields,
    render,
)
from app.classifier import OnnxClassifier
from app.errors import status_for
from app.pipeline import BatchOutcome, classify_uploads
from app.schemas import (
    BATCH_EXAMPLE,
    PREDICTION_EXAMPLE,
    BatchItem,
    BatchPrediction,
    ItemError,
    ModelRef,
    Prediction,
    TimingMs,
    error_responses,
)

router = APIRouter(tags=["prediction"], dependencies=[Depends(refuse_unknown_query)])

_IMAGE_TYPES = "image/jpeg, image/png, image/tiff, image/bmp, image/webp"


def _upload_body(field: str, many: bool) -> dict[str, Any]:
    """The multipart request body for OpenAPI; the routes parse it themselves (see app.uploads)."""
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": file_schema} if many else file_schema
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [field], "properties": {field: schema}},
        "encoding": {field: {"contentType": _IMAGE_TYPES}},
    }}}}


def _ok(example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": example}}}}


ACCEPTS_JSON, ONLY_JSON = only_type("application/json", "/predict-batch")


@router.post(
    "/predict",
    response_model=Prediction,
    responses={
        200: {"content": {"application/json": {"example": PREDICTION_EXAMPLE}, **LIS_CONTENT}},
        **error_responses("image"), **NOT_ACCEPTABLE, **NO_EXPLANATION,
    },
    openapi_extra=_upload_body("image", many=False),
)
async def predict(
    request: Request,
    state: StateDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    answer: AnswerFormatDep,  # before the upload: a 406 is sent without reading the body
    upload: ImageUploadDep,
    explain: Annotated[bool, Query(description="Add the heatmap of the predicted class (app.explain).")] = False,
) -> Prediction | Response:
    """Classify one image sent as multipart/form-data in the field `image`; JSON, FHIR R4 or HL7 v2.5.1."""
    outcome = await run_in_threadpool(
        classify_uploads, classifier, [upload], max_pixels=settings.max_pixels, batcher=state.batcher, explain=explain
    )
    timing = _timing(request, outcome)
    record_outcome(request, state, "/predict", outcome)
    item = outcome.items[0]
    if item.error is not None:
        raise item.error  # the error handlers turn it into its 400/413/415/422 body
    prediction = Prediction(
        request_id=request.state.request_id,
        label=item.label,
        model=_model_ref(classifier),
        timing_ms=timing,
        explanation=heatmap(item),
        **outcome_fields(item),
    )
    return render(prediction, answer)


@router.post(
    "/predict-batch",
    response_model=BatchPrediction,
    response_model_exclude_none=True,
    responses={**_ok(BATCH_EXAMPLE), **error_responses("images"), **ONLY_JSON},
    openapi_extra=_upload_body("images", many=True),
)
async def predict_batch(
    request: Request, state: StateDep, classifier: ClassifierDep, settings: SettingsDep,
    _accept: Annotated[None, ACCEPTS_JSON],  # before the upload: a 406 is sent without reading the body
    uploads: BatchUploadsDep,
) -> BatchPrediction:
    """Classify several images (field `images`, repeated) in one model run; results in the order sent."""
    outcome = await run_in_threadpool(
        classify_uploads, classifier, uploads, max_pixels=settings.max_pixels, batcher=state.batcher
    )
    timing = _timing(request, outcome)
    record_outcome(request, state, "/predict-batch", outcome)
    results = []
    for index, item in enumerate(outcome.items):
        result = BatchItem(index=index, filename=item.filename, label=item.label, **outcome_fields(item))
        if item.error is not None:
            result.error = ItemError(status=status_for(item.error), code=item.error.reason, detail=str(item.error))
        results.append(result)
    return BatchPrediction(
        request_id=request.state.request_id,
        model=_model_ref(classifier),
        timing_ms=timing,
        count=len(results),
        failed=sum(r.error is not None for r in results),
        results=results,
    )


def _model_ref(classifier: OnnxClassifier) -> ModelRef:
    identity = classifier.identity
    return ModelRef(name=identity.name, version=identity.version, sha256=identity.sha256)


def _timing(request: Request, outcome: BatchOutcome) -> TimingMs:
    return TimingMs(
        decode=round(outcome.decode_seconds * 1000, 3),
        inference=round(outcome.inference_seconds * 1000, 3),
        total=round((perf_counter() - request.state.started) * 1000, 3),
    )


def record_outcome(request: Request, state: ServiceState, endpoint: str, outcome: BatchOutcome,
                   count_labels: bool = True) -> None:
    """Metrics and log fields for the outcome: counts, labels and reasons, never image content.

    Args:
        count_labels: False where the answer reports no prediction (the v2 protocol fails a
            whole request on one bad image), so no label is counted as predicted.
    """
    metrics = state.metrics
    metrics.stage_seconds.labels(endpoint, "decode").observe(outcome.decode_seconds)
    if outcome.batch_size:
        metrics.stage_seconds.labels(endpoint, "inference").observe(outcome.inference_seconds)
        if state.batcher is None:  # else the batcher observes each shared run
            metrics.batch_size.observe(outcome.batch_size)
    labels = Counter(item.label for item in outcome.items if item.label is not None and count_labels)
    reasons = Counter(item.error.reason for item in outcome.items if item.error is not None)
    for label, count in labels.items():
        metrics.predictions.labels(label).inc(count)
    if count_labels:  # the answers that report a prediction, as labels are counted
        classified = [item for item in outcome.items if item.label is not None]
        for cause, count in Counter(c for item in classified for c in item.refer_causes).items():
            metrics.referrals.labels(cause).inc(count)
        for code, count in Counter(w.code for item in classified for w in item.warnings).items():
            metrics.quality_warnings.labels(code).inc(count)
    for reason, count in reasons.items():
        metrics.rejected.labels(reason).inc(count)
    request.state.log.update(
        images=len(outcome.items),
        labels=dict(labels),
        rejected=dict(reasons),
        decode_ms=round(outcome.decode_seconds * 1000, 3),
        inference_ms=round(outcome.inference_seconds * 1000, 3),
    )
