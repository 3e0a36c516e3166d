"""The answer formats of /predict (JSON, FHIR R4, HL7 v2.5.1) and the LIS ids a request may carry.

The format comes from `?format=` or the Accept header (app.lis.negotiate); it is chosen before
the upload is read, so a 406 costs the server nothing. `X-Patient-ID` and `X-Order-ID` are
optional headers that only the FHIR and HL7 answers echo; they are never logged.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from app.lis import LisContext, fhir, hl7v2
from app.lis.negotiate import MEDIA_TYPES, ResponseFormat, choose_format, require_acceptable
from app.pipeline import ImageOutcome
from app.schemas import ErrorResponse, Heatmap, ImageWarning, Prediction, SubtypeProbabilities

# Printable ASCII: they are echoed into FHIR JSON and HL7 fields (escaped there too). HTTP headers
# arrive as Latin-1, so UTF-8 text ("été") would be echoed garbled ("Ã©tÃ©"): refused instead.
_LIS_ID_PATTERN = re.compile(r"[\x20-\x7e]{1,64}")
_LIS_ID_SCHEMA = {"pattern": f"^{_LIS_ID_PATTERN.pattern}$", "maxLength": 64}  # checked in answer_format


@dataclass(frozen=True)
class AnswerFormat:
    format: ResponseFormat
    patient_id: str | None
    order_id: str | None


async def answer_format(
    request: Request,
    format: Annotated[ResponseFormat | None, Query(
        description="Answer format: json (default), fhir (FHIR R4 DiagnosticReport) or hl7 (HL7 v2.5.1 ORU^R01). "
        "Wins over the Accept header."
    )] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_patient_id: Annotated[str | None, Header(
        json_schema_extra=_LIS_ID_SCHEMA,
        description="Patient identifier to echo in the FHIR subject / HL7 PID-3 (1 to 64 printable ASCII "
                    "characters, sent once); never logged.",
    )] = None,
    x_order_id: Annotated[str | None, Header(
        json_schema_extra=_LIS_ID_SCHEMA,
        description="Order (placer) number to echo in FHIR basedOn / HL7 OBR-2 (1 to 64 printable ASCII "
                    "characters, sent once); never logged.",
    )] = None,
) -> AnswerFormat:
    for name in ("X-Patient-ID", "X-Order-ID"):
        _check_lis_id(name, request.headers.getlist(name))
    return AnswerFormat(choose_format(format, accept), x_patient_id, x_order_id)


def _check_lis_id(name: str, values: list[str]) -> None:
    """One value of printable ASCII, 1 to 64 characters; the 422 never echoes what was sent."""
    if len(values) > 1:  # FastAPI would keep one; an identifier must never be chosen for the sender
        raise RequestValidationError([{"type": "repeated_header", "loc": ("header", name.lower()), "input": None,
                                       "msg": f"{name} is sent {len(values)} times; send it once"}])
    if values and not _LIS_ID_PATTERN.fullmatch(values[0]):
        raise RequestValidationError([{
            "type": "invalid_lis_id", "loc": ("header", name.lower()), "input": None,
            "msg": f"{name} must be 1 to 64 printable ASCII characters (letters, digits, punctuation, spaces): "
                   f"it is {len(values[0])} characters long" + ("" if values[0].isascii() else
                   ", with characters outside ASCII, which an HTTP header does not carry reliably")
                   + ("" if values[0].isprintable() else ", with control characters"),
        }])


AnswerFormatDep = Annotated[AnswerFormat, Depends(answer_format)]


def only_type(media: str, endpoint: str) -> tuple[Any, dict[int | str, dict[str, Any]]]:
    """For an endpoint with one answer type: the dependency that answers 406 when Accept rules it
    out (list it before the upload, so the body is not read), and its OpenAPI response."""

    async def dependency(accept: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
        require_acceptable(accept, media, endpoint)

    return Depends(dependency), {406: {"description": f"The Accept header rules out {media}, the one type of this answer."}}


def outcome_fields(item: ImageOutcome) -> dict[str, Any]:
    """An image's result fields (probabilities, referral, warnings) for Prediction and BatchItem; {} for an error."""
    if item.probabilities is None or item.uncalibrated is None:
        return {}
    return {
        "probabilities": SubtypeProbabilities(**item.probabilities),
        "uncalibrated_probabilities": SubtypeProbabilities(**item.uncalibrated),
        "refer_to_human": item.refer_to_human,
        "refer_reason": item.refer_reason,
        "warnings": [ImageWarning(code=w.code, detail=w.detail) for w in item.warnings],
    }


def heatmap(item: ImageOutcome) -> Heatmap | None:
    """The image's heatmap for JSON, when it was asked for."""
    if item.explanation is None:
        return None
    return Heatmap(class_id=item.explanation.class_id, png_base64=base64.b64encode(item.explanation.png).decode())


def render(prediction: Prediction, answer: AnswerFormat) -> Prediction | Response:
    """The prediction as JSON (returned as is) or as a FHIR / HL7 document."""
    if answer.format == "json":
        return prediction
    context = LisContext(datetime.now(UTC), answer.patient_id, answer.order_id)
    if answer.format == "fhir":
        body = json.dumps(fhir.diagnostic_report(prediction, context), ensure_ascii=False)
        return Response(body, media_type=MEDIA_TYPES["fhir"][0])
    return Response(hl7v2.oru_r01(prediction, context), media_type=MEDIA_TYPES["hl7"][0])


FHIR_EXAMPLE: dict[str, Any] = {
    "resourceType": "DiagnosticReport", "id": "6f0d8c6c2b8a4a7e9a1d0c3b5e2f7a19", "status": "preliminary",
    "contained": [{"resourceType": "Device", "id": "device", "deviceName": [{"name": "dscnet", "type": "model-name"}],
                   "version": [{"type": {"text": "model version"}, "value": "1.0.0"}]},
                  {"resourceType": "Observation", "id": "observation", "status": "preliminary",
                   "code": {"text": "B-lineage leukaemia subtype from a blood-smear image (DSCNet, decision support)"},
                   "valueCodeableConcept": {"coding": [{"system": "urn:dscnet:codesystem:b-lineage-subtype",
                                                        "code": "early_pre_b", "display": "Early pre-B ALL"}]},
                   "device": {"reference": "#device"}}],
    "code": {"text": "B-lineage leukaemia subtype from a blood-smear image (DSCNet, decision support)"},
    "result": [{"reference": "#observation"}],
    "conclusion": "Early pre-B ALL (calibrated probability 0.931). Decision support, not a stand-alone diagnosis.",
}
HL7_EXAMPLE = (
    "MSH|^~\\&|DSCNET|DSCNET|||20261126101356+0000||ORU^R01^ORU_R01|6f0d8c6c2b8a4a7e9a1d|P|2.5.1\r"
    "PID|1|\r"
    "OBR|1||6f0d8c6c2b8a4a7e9a1d0c3b5e2f7a19^DSCNET|b-lineage-subtype^B-lineage leukaemia subtype ...^L|||...\r"
    "OBX|1|CWE|b-lineage-subtype^...^L||early_pre_b^Early pre-B ALL^L||||0.931||P|||20261126101356+0000|||"
    "dscnet-calibrated^...^L|1.0.0^dscnet\r"
)


def _error_example(status: int, code: str, detail: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "content": {"application/json": {"example": {
        "error": {"status": status, "code": code, "field": None, "detail": detail},
        "request_id": "6f0d8c6c2b8a4a7e9a1d0c3b5e2f7a19"}}}}


NOT_ACCEPTABLE = {406: {
    "description": "The Accept header allows none of JSON, FHIR or HL7 v2.",
    **_error_example(406, "not_acceptable", "cannot answer in any type the Accept header allows; /predict offers "
                     "application/json, application/fhir+json, x-application/hl7-v2+er7"),
}}
NO_EXPLANATION = {501: {
    "description": "The model being served has no class activation output (exported before explanations).",
    **_error_example(501, "explanation_unavailable",
                     "the model being served has no class activation output to explain with"),
}}
LIS_CONTENT = {
    MEDIA_TYPES["fhir"][0]: {"schema": {"type": "object"}, "example": FHIR_EXAMPLE},
    MEDIA_TYPES["hl7"][0]: {"schema": {"type": "string"}, "example": HL7_EXAMPLE},
}
