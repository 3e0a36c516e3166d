"""Laboratory information system (LIS) formats of a prediction: FHIR R4 and HL7 v2.5.1.

    Prediction (the JSON answer) + LisContext (patient and order ids from request headers)
      -> fhir.diagnostic_report()   application/fhir+json: DiagnosticReport, contained Observation and Device
      -> hl7v2.oru_r01()            x-application/hl7-v2+er7: MSH, PID, OBR, OBX per value, NTE

The codes are local to DSCNet (there is no LOINC or SNOMED code for an image classifier's
B-lineage subtype call); a receiving LIS maps them once. Both formats say "preliminary":
the result is decision support, for a person to confirm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.labels import CLASS_NAMES

#: The predicted class, coded (FHIR CodeSystem url; HL7 v2 uses these codes with system "L").
SUBTYPE_SYSTEM = "urn:dscnet:codesystem:b-lineage-subtype"
#: What is observed: the subtype call, each class probability, the referral flag.
OBSERVATION_SYSTEM = "urn:dscnet:codesystem:observation"
SUBTYPE_CODE = "b-lineage-subtype"
SUBTYPE_DISPLAY = "B-lineage leukaemia subtype from a blood-smear image (DSCNet, decision support)"
REFER_CODE = "refer-to-human"
REFER_DISPLAY = "Refer to a human reviewer"
#: The heatmap of the predicted class (only with ?explain=true): FHIR presentedForm, HL7 v2 OBX of type ED.
HEATMAP_CODE = "class-activation-heatmap"


def heatmap_title(class_id: str) -> str:
    return f"Class activation heatmap for {CLASS_NAMES[class_id]}"


def probability_code(class_id: str) -> str:
    return f"probability-{class_id.replace('_', '-')}"


def probability_display(class_id: str) -> str:
    return f"Calibrated probability: {CLASS_NAMES[class_id]}"


@dataclass(frozen=True)
class LisContext:
    """What the LIS sent along with the image (never logged) and when the result was issued."""

    issued: datetime
    patient_id: str | None = None
    order_id: str | None = None

