"""A prediction as a FHIR R4 DiagnosticReport, as plain JSON-ready dicts.

    DiagnosticReport (status preliminary, category HM)
      contained: Device       the model: name, version, sha256 (identifier)
                 Observation  valueCodeableConcept = the predicted class,
                              component = each class's calibrated probability (UCUM "1")
                                          and the refer-to-a-human flag (valueBoolean),
                              note = the referral reason and quality warnings,
                              device -> #device
      result -> #observation; conclusion in words; presentedForm = the heatmap PNG (with ?explain=true)

The subject is a logical reference by identifier, only when the request carried a patient id.
Tests validate the output with the `fhir.resources` R4B models (their DiagnosticReport,
Observation and Device have the same elements as R4 4.0.1).
"""

from __future__ import annotations

import re
from typing import Any

from app.labels import CLASS_IDS, CLASS_NAMES
from app.lis import (
    OBSERVATION_SYSTEM,
    REFER_CODE,
    REFER_DISPLAY,
    SUBTYPE_CODE,
    SUBTYPE_DISPLAY,
    SUBTYPE_SYSTEM,
    LisContext,
    heatmap_title,
    probability_code,
    probability_display,
)
from app.schemas import Prediction

MEDIA_TYPE = "application/fhir+json"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
REQUEST_ID_SYSTEM = "urn:dscnet:request-id"
MODEL_SHA256_SYSTEM = "urn:dscnet:model-sha256"
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9.-]")


def diagnostic_report(prediction: Prediction, context: LisContext) -> dict[str, Any]:
    """The DiagnosticReport for one prediction, with its Observation and Device contained."""
    issued = context.issued.isoformat(timespec="milliseconds")
    subject = {"subject": {"identifier": {"value": context.patient_id}}} if context.patient_id else {}
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": fhir_id(prediction.request_id),
        "contained": [_device(prediction), _observation(prediction, issued, subject)],
        "identifier": [{"system": REQUEST_ID_SYSTEM, "value": prediction.request_id}],
        "status": "preliminary",
        "category": [{"coding": [{"system": V2_0074, "code": "HM", "display": "Hematology"}]}],
        "code": _subtype_code(),
        **subject,
        "issued": issued,
        "result": [{"reference": "#observation"}],
        "conclusion": _conclusion(prediction),
        "conclusionCode": [_class_concept(prediction.label)],
    }
    if context.order_id:
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": {"value": context.order_id}}]
    if prediction.explanation is not None:
        report["presentedForm"] = [{
            "contentType": prediction.explanation.media_type,
            "data": prediction.explanation.png_base64,
            "title": heatmap_title(prediction.explanation.class_id),
        }]
    return report


def fhir_id(text: str) -> str:
    """A FHIR id ([A-Za-z0-9-.]{1,64}) made from a request id."""
    return _NOT_ID_CHARS.sub("-", text)[:64] or "result"


def _subtype_code() -> dict[str, Any]:
    return {"coding": [{"system": OBSERVATION_SYSTEM, "code": SUBTYPE_CODE, "display": SUBTYPE_DISPLAY}],
            "text": SUBTYPE_DISPLAY}


def _class_concept(class_id: str) -> dict[str, Any]:
    return {"coding": [{"system": SUBTYPE_SYSTEM, "code": class_id, "display": CLASS_NAMES[class_id]}],
            "text": CLASS_NAMES[class_id]}


def _device(prediction: Prediction) -> dict[str, Any]:
    model = prediction.model
    return {
        "resourceType": "Device",
        "id": "device",
        "identifier": [{"system": MODEL_SHA256_SYSTEM, "value": model.sha256}],
        "status": "active",
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "type": {"text": "Image classification software (ONNX model)"},
        "version": [{"type": {"text": "model version"}, "value": model.version},
                    {"type": {"text": "sha256 of the ONNX file"}, "value": model.sha256}],
    }


def _observation(prediction: Prediction, issued: str, subject: dict[str, Any]) -> dict[str, Any]:
    probabilities = prediction.probabilities.model_dump()
    components: list[dict[str, Any]] = [
        {
            "code": {"coding": [{"system": OBSERVATION_SYSTEM, "code": probability_code(class_id),
                                 "display": probability_display(class_id)}]},
            "valueQuantity": {"value": round(probabilities[class_id], 6), "unit": "1", "system": UCUM, "code": "1"},
        }
        for class_id in CLASS_IDS
    ]
    components.append({
        "code": {"coding": [{"system": OBSERVATION_SYSTEM, "code": REFER_CODE, "display": REFER_DISPLAY}]},
        "valueBoolean": prediction.refer_to_human,
    })
    notes = [f"Referred to a human: {prediction.refer_reason}"] if prediction.refer_reason else []
    notes += [f"Image quality warning {w.code}: {w.detail}" for w in prediction.warnings]
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "observation",
        "status": "preliminary",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
        "code": _subtype_code(),
        **subject,
        "issued": issued,
        "valueCodeableConcept": _class_concept(prediction.label),
        "method": {"text": "DSCNet image classifier, temperature-calibrated probabilities"},
        "device": {"reference": "#device"},
        "component": components,
    }
    if notes:
        observation["note"] = [{"text": note} for note in notes]
    return observation


def _conclusion(prediction: Prediction) -> str:
    confidence = getattr(prediction.probabilities, prediction.label)
    text = f"{CLASS_NAMES[prediction.label]} (calibrated probability {confidence:.3f})."
    if prediction.refer_to_human:
        text += f" Refer to a human: {prediction.refer_reason}."
    return text + " Decision support, not a stand-alone diagnosis."
