"""Response bodies of the API, with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from app.labels import CLASS_IDS

ClassId = Literal["benign", "early_pre_b", "pre_b", "pro_b"]
assert get_args(ClassId) == CLASS_IDS, "ClassId must list app.labels.CLASS_IDS in order"


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class SubtypeProbabilities(BaseModel):
    """Probability of each class; the four sum to 1."""

    benign: float = Field(ge=0, le=1)
    early_pre_b: float = Field(ge=0, le=1)
    pre_b: float = Field(ge=0, le=1)
    pro_b: float = Field(ge=0, le=1)


class TimingMs(BaseModel):
    decode: float = Field(description="Decoding and resizing the image(s), ms.")
    inference: float = Field(description="The model run, ms.")
    total: float = Field(
        description="From the request reaching the app (body reading included) to the answer built, ms."
    )


WarningCode = Literal["out_of_focus", "under_exposed", "over_exposed", "monochrome", "cells_too_small", "not_smear_like"]


class ImageWarning(BaseModel):
    """An input-quality problem a technician can fix (app.quality); any warning refers the case."""

    code: WarningCode
    detail: str


class Heatmap(BaseModel):
    """Where the model found evidence for `class_id`, overlaid on the 224x224 input (app.explain)."""

    class_id: ClassId
    media_type: Literal["image/png"] = "image/png"
    png_base64: str


class Prediction(BaseModel):
    request_id: str
    label: ClassId = Field(description="The most probable class.")
    probabilities: SubtypeProbabilities = Field(
        description="Calibrated probabilities (the model card's temperature applied): the ones to read."
    )
    uncalibrated_probabilities: SubtypeProbabilities = Field(description="The model's own softmax output.")
    refer_to_human: bool = Field(
        description="True when the calibrated top probability is below the validated threshold, the image drew "
        "a quality warning, or the model has no validated threshold."
    )
    refer_reason: str | None = Field(description="Why the case is referred; null when it is not.")
    warnings: list[ImageWarning] = Field(description="Input-quality warnings; empty for a good image.")
    model: ModelRef
    timing_ms: TimingMs
    explanation: Heatmap | None = Field(None, description="The heatmap, only with ?explain=true.")


class ItemError(BaseModel):
    status: int = Field(description="The HTTP status this error has on /predict.")
    code: str
    detail: str


class BatchItem(BaseModel):
    index: int = Field(description="Position in the request, from 0.")
    filename: str | None
    label: ClassId | None = None
    probabilities: SubtypeProbabilities | None = None
    uncalibrated_probabilities: SubtypeProbabilities | None = None
    refer_to_human: bool | None = None
    refer_reason: str | None = None
    warnings: list[ImageWarning] | None = None
    error: ItemError | None = None


class BatchPrediction(BaseModel):
    request_id: str
    model: ModelRef
    timing_ms: TimingMs
    count: int = Field(description="Images received.")
    failed: int = Field(description="Images that carry an error instead of a label.")
    results: list[BatchItem]


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(description="Stable machine-readable reason.")
    field: str | None = Field(description="The form field at fault, if any.")
    detail: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    detail: str
    model: ModelRef | None = None


_MODEL = {"name": "dscnet", "version": "1.0.0", "sha256": "3f1c…e9a0"}
_PROBS = {"benign": 0.012, "early_pre_b": 0.931, "pre_b": 0.041, "pro_b": 0.016}
_RAW = {"benign": 0.004, "early_pre_b": 0.975, "pre_b": 0.016, "pro_b": 0.005}
_ACCEPTED = {"uncalibrated_probabilities": _RAW, "refer_to_human": False, "refer_reason": None, "warnings": []}
_RID = "6f0d8c6c2b8a4a7e9a1d0c3b5e2f7a19"

PREDICTION_EXAMPLE = {
    "request_id": _RID, "label": "early_pre_b", "probabilities": _PROBS, **_ACCEPTED, "model": _MODEL,
    "timing_ms": {"decode": 4.1, "inference": 17.9, "total": 23.0}, "explanation": None,
}
BATCH_EXAMPLE = {
    "request_id": _RID, "model": _MODEL, "count": 2, "failed": 1,
    "timing_ms": {"decode": 8.3, "inference": 31.2, "total": 41.0},
    "results": [
        {"index": 0, "filename": "smear-001.jpg", "label": "early_pre_b", "probabilities": _PROBS,
         "uncalibrated_probabilities": _RAW, "refer_to_human": False, "warnings": []},
        {"index": 1, "filename": "notes.txt", "error": {
            "status": 415, "code": "unsupported_format",
            "detail": "the file is not a recognised image; send JPEG, PNG, TIFF, BMP or WebP"}},
    ],
}


_ERROR_EXAMPLES: list[tuple[int, str, str]] = [  # (status, code, detail); {field} is the route's field
    (400, "corrupt_image", "the JPEG data is damaged or truncated: image file is truncated"),
    (400, "malformed_multipart", "the multipart body ended before its closing boundary"),
    (408, "body_timeout", "the request body did not arrive within 60 s; the connection stalled or is too slow"),
    (413, "file_too_large", "the file is over the limit of 20,971,520 bytes"),
    (413, "request_too_large", "the request body is 210,000,000 bytes, over the limit of 134,217,728"),
    (413, "too_many_files", "more than 32 files in the field 'images'"),
    (413, "too_many_pixels",
     "the image has 50000x50000 = 2,500,000,000 pixels, more than the limit of 40,000,000"),
    (415, "unsupported_format", "the file is not a recognised image; send JPEG, PNG, TIFF, BMP or WebP"),
    (415, "not_multipart", "send the image as multipart/form-data in the field '{field}'"),
    (422, "missing_field", "no file in the field '{field}'"),
    (422, "empty_file", "the file is empty (0 bytes)"),
    (422, "extra_file", "more than one file in the field 'image'; use /predict-batch"),
    (422, "unexpected_field", "the field 'note' is not read by this endpoint; send the image(s) in '{field}' only"),
    (422, "unexpected_parameter", "'patient_id' is not a query parameter of this endpoint (it reads explain, format)"),
    (422, "repeated_parameter", "'format' is given more than once ('json', 'hl7'); send it once"),
    (422, "repeated_header", "X-Patient-ID is sent 2 times; send it once"),
    (422, "invalid_lis_id", "X-Patient-ID must be 1 to 64 printable ASCII characters (letters, digits, punctuation, "
     "spaces): it is 65 characters long"),
    (422, "image_too_small", "the image is 24x24 pixels; its shorter side must be at least 32 (it is centre-cropped "
     "to a square and resized to 224x224); send the full microscope field, not a thumbnail"),
    (503, "model_not_ready", "the model is not loaded yet"),
    (503, "overloaded", "256 images are already waiting for the model (the limit is 256); retry later"),
]
_STATUS_TEXT = {
    400: "Corrupt or truncated image, or a broken multipart body.",
    408: "The request body did not arrive within DSCNET_BODY_TIMEOUT_S.",
    413: "An upload over the size limit, too many images, or too many pixels.",
    415: "Not a supported image (JPEG, PNG, TIFF, BMP, WebP), or not multipart/form-data.",
    422: "The field is missing or the file is empty or too small; a field or query parameter the endpoint "
    "does not read.",
    503: "The model is not loaded and verified yet, or too many images are waiting (see Retry-After).",
}
# On /predict-batch these land in the failing item's `error`, not in the answer's status.
_PER_IMAGE_CODES = {"corrupt_image", "file_too_large", "too_many_pixels", "unsupported_format", "empty_file",
                    "image_too_small"}


def error_responses(field: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for an upload route (`field` is image or images): every error status with examples."""
    skipped = _PER_IMAGE_CODES | {"extra_file"} if field == "images" else {"too_many_files"}
    responses: dict[int | str, dict[str, Any]] = {}
    for status, code, detail in _ERROR_EXAMPLES:
        if code in skipped:
            continue
        body = {"error": {"status": status, "code": code, "field": None if status == 503 else field,
                          "detail": detail.format(field=field)}, "request_id": _RID}
        entry = responses.setdefault(status, {
            "model": ErrorResponse, "description": _STATUS_TEXT[status],
            "content": {"application/json": {"examples": {}}},
        })
        entry["content"]["application/json"]["examples"][code] = {"value": body}
    return responses
