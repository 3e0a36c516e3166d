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
    total: float = Field(description="From the request reaching the app (body reading included) to the answer built, ms.")


class Prediction(BaseModel):
    request_id: str
    label: ClassId = Field(description="The most probable class.")
    probabilities: SubtypeProbabilities
    model: ModelRef
    timing_ms: TimingMs


class ItemError(BaseModel):
    status: int = Field(description="The HTTP status this error has on /predict.")
    code: str
    detail: str


class BatchItem(BaseModel):
    index: int = Field(description="Position in the request, from 0.")
    filename: str | None
    label: ClassId | None = None
    probabilities: SubtypeProbabilities | None = None
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
_RID = "6f0d8c6c2b8a4a7e9a1d0c3b5e2f7a19"

PREDICTION_EXAMPLE = {
    "request_id": _RID, "label": "early_pre_b", "probabilities": _PROBS, "model": _MODEL,
    "timing_ms": {"decode": 4.1, "inference": 17.9, "total": 23.0},
}
BATCH_EXAMPLE = {
    "request_id": _RID, "model": _MODEL, "count": 2, "failed": 1,
    "timing_ms": {"decode": 8.3, "inference": 31.2, "total": 41.0},
    "results": [
        {"index": 0, "filename": "smear-001.jpg", "label": "early_pre_b", "probabilities": _PROBS},
        {"index": 1, "filename": "notes.txt", "error": {
            "status": 415, "code": "unsupported_format",
            "detail": "the file is not a recognised image; send JPEG, PNG, TIFF, BMP or WebP"}},
    ],
}


def _error(status: int, code: str, field: str | None, detail: str) -> dict[str, Any]:
    return {"value": {"error": {"status": status, "code": code, "field": field, "detail": detail},
                      "request_id": _RID}}


def error_responses(field: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the upload routes: every error status with its examples."""
    groups: dict[int, tuple[str, dict[str, Any]]] = {
        400: ("Corrupt or truncated image, or a broken multipart body.", {
            "corrupt_image": _error(400, "corrupt_image", field, "the JPEG data is damaged or truncated: image file is truncated"),
            "malformed_multipart": _error(400, "malformed_multipart", field, "the multipart body ended before its closing boundary"),
        }),
        413: ("An upload over the size limit, too many images, or too many pixels.", {
            "file_too_large": _error(413, "file_too_large", field, "the file is over the limit of 20,971,520 bytes"),
            "request_too_large": _error(413, "request_too_large", field, "the request body is 210,000,000 bytes, over the limit of 134,217,728"),
            "too_many_files": _error(413, "too_many_files", field, "more than 32 files in the field 'images'"),
            "too_many_pixels": _error(413, "too_many_pixels", field, "the image has 50000x50000 = 2,500,000,000 pixels, more than the limit of 40,000,000"),
        }),
        415: ("Not a supported image (JPEG, PNG, TIFF, BMP, WebP), or not multipart/form-data.", {
            "unsupported_format": _error(415, "unsupported_format", field, "the file is not a recognised image; send JPEG, PNG, TIFF, BMP or WebP"),
            "not_multipart": _error(415, "not_multipart", field, f"send the image as multipart/form-data in the field '{field}'"),
        }),
        422: ("The field is missing or the file is empty.", {
            "missing_field": _error(422, "missing_field", field, f"no file in the field '{field}'"),
            "empty_file": _error(422, "empty_file", field, "the file is empty (0 bytes)"),
            "extra_file": _error(422, "extra_file", field, "more than one file in the field 'image'; use /predict-batch"),
        }),
        503: ("The model is not loaded and verified yet.", {
            "model_not_ready": _error(503, "model_not_ready", None, "the model is not loaded yet"),
        }),
    }
    if field == "images":
        # Per-image errors land in that item's `error`; only request-level ones remain here.
        dropped = {"corrupt_image", "too_many_pixels", "unsupported_format", "file_too_large",
                   "extra_file", "empty_file"}
    else:
        dropped = {"too_many_files"}
    return {
        status: {"model": ErrorResponse, "description": text, "content": {"application/json": {
            "examples": {code: ex for code, ex in examples.items() if code not in dropped}}}}
        for status, (text, examples) in groups.items()
    }
