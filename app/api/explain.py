"""POST /explain: the heatmap of the predicted class as a PNG, the prediction in headers.

For the prediction and the heatmap in one JSON answer, use `POST /predict?explain=true`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.api.deps import ClassifierDep, ImageUploadDep, SettingsDep, StateDep, refuse_unknown_query
from app.api.formats import NO_EXPLANATION, only_type
from app.pipeline import classify_uploads
from app.schemas import error_responses

router = APIRouter(tags=["prediction"], dependencies=[Depends(refuse_unknown_query)])

_PNG_EXAMPLE = "(PNG bytes: the 224x224 input with the heatmap blended over it)"
PREDICTION_HEADERS = {
    "X-DSCNet-Label": "The predicted class (the class the heatmap explains).",
    "X-DSCNet-Confidence": "Its calibrated probability.",
    "X-DSCNet-Refer-To-Human": "true or false.",
    "X-DSCNet-Refer-Reason": "Why the case is referred (absent when it is not).",
    "X-DSCNet-Warnings": "Comma-separated quality warning codes (absent when none).",
    "X-DSCNet-Model": "name/version of the model.",
}


ACCEPTS_PNG, ONLY_PNG = only_type("image/png", "/explain")


@router.post(
    "/explain",
    response_class=Response,
    responses={
        **ONLY_PNG,
        200: {
            "description": "The heatmap overlay; the prediction is in the X-DSCNet-* headers.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}, "example": _PNG_EXAMPLE}},
            "headers": {name: {"description": text, "schema": {"type": "string"}}
                        for name, text in PREDICTION_HEADERS.items()},
        },
        **error_responses("image"),
        **NO_EXPLANATION,
    },
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["image"],
                   "properties": {"image": {"type": "string", "format": "binary"}}},
    }}}},
)
def explain(
    request: Request, state: StateDep, classifier: ClassifierDep, settings: SettingsDep,
    _accept: Annotated[None, ACCEPTS_PNG],  # before the upload: a 406 is sent without reading the body
    upload: ImageUploadDep,
) -> Response:
    """Heatmap of where the model found evidence for the class it predicts, over the 224x224 input (PNG)."""
    outcome = classify_uploads(classifier, [upload], max_pixels=settings.max_pixels, explain=True)
    item = outcome.items[0]
    if item.error is not None:
        state.metrics.rejected.labels(item.error.reason).inc()
        raise item.error
    state.metrics.predictions.labels(item.label).inc()
    request.state.log.update(images=1, labels={item.label: 1})
    headers = {
        "X-DSCNet-Label": item.label,
        "X-DSCNet-Confidence": f"{item.probabilities[item.label]:.6f}",
        "X-DSCNet-Refer-To-Human": "true" if item.refer_to_human else "false",
        "X-DSCNet-Model": _header_text(f"{classifier.identity.name}/{classifier.identity.version}"),
        "Cache-Control": "no-store",
    }
    if item.refer_reason:
        headers["X-DSCNet-Refer-Reason"] = _header_text(item.refer_reason)
    if item.warnings:
        headers["X-DSCNet-Warnings"] = ",".join(w.code for w in item.warnings)
    return Response(item.explanation.png, media_type="image/png", headers=headers)


def _header_text(text: str) -> str:
    """Printable ASCII only: a header value cannot carry controls, and clients read latin-1 at best."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
