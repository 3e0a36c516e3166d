"""The answer formats of /predict (JSON, FHIR R4, HL7 v2.5.1) and the LIS ids a request may carry.

The format comes from `?format=` or the Accept header (app.lis.negotiate); it is chosen before
the upload is read, so a 406 costs the server nothing. `X-Patient-ID` and `X-Order-ID` are
optional headers that only the FHIR and HL7 answers echo; they are never logged.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Query
from fastapi.responses import Response

from app.lis import LisContext, fhir, hl7v2
from app.lis.negotiate import MEDIA_TYPES, ResponseFormat, choose_format
from app.pipeline import ImageOutcome
from app.schemas import ErrorResponse, Heatmap, ImageWarning, Prediction, SubtypeProbabilities

# Printable, no controls: they are echoed into FHIR JSON and HL7 fields (escaped there too).
_LIS_ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,64}$"


@dataclass(frozen=True)
class AnswerFormat:
    format: ResponseFormat
    patient_id: str | None
    order_id: str | None


async def answer_format(
    format: Annotated[ResponseFormat | None, Query(
        description="Answer format: json (default), fhir (FHIR R4 DiagnosticReport) or hl7 (HL7 v2.5.1 ORU^R01). "
        "Wins over the Accept header."
    )] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_patient_id: Annotated[str | None, Header(
        max_length=64, pattern=_LIS_ID_PATTERN,
        description="Patient identifier to echo in the FHIR subject / HL7 PID-3; never logged.",
    )] = None,
    x_order_id: Annotated[str | None, Header(
        max_length=64, pattern=_LIS_ID_PATTERN,
        description="Order (placer) number to echo in FHIR basedOn / HL7 OBR-2; never logged.",
    )] = None,
) -> AnswerFormat:
    return AnswerFormat(choose_format(format, accept), x_patient_id, x_order_id)


AnswerFormatDep = Annotated[AnswerFormat, Depends(answer_format)]


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
