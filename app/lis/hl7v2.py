"""A prediction as an HL7 v2.5.1 ORU^R01 message (ER7 encoding, segments ended by CR).

    MSH  sending application DSCNET, message ORU^R01^ORU_R01, control id = request id (20 chars), v2.5.1
    PID  PID-3 the patient id the request carried, else empty
    OBR  OBR-2 placer order number (the request's order id), OBR-3 filler = request id^DSCNET,
         OBR-24 HM, OBR-25 P (preliminary)
    NTE  the model: name, version, sha256
    OBX  1: CWE the predicted class, OBX-9 its calibrated probability
    OBX  2..5: NM each class's calibrated probability, unit 1 (UCUM)
    OBX  6: CWE refer to a human, Y or N (HL7 table 0136), followed by an NTE with the reason
    NTE  one per quality warning
    OBX  7: ED the heatmap PNG, only with ?explain=true: DSCNET^IM^PNG^Base64^<the PNG in base64>
    Every OBX: OBX-11 P, OBX-14 the observation time, OBX-17 the method, OBX-18 the model version.

Free text is escaped (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\) and line breaks dropped, so nothing a client
sends can add a field or a segment.
"""

from __future__ import annotations

from datetime import datetime

from app.labels import CLASS_IDS, CLASS_NAMES
from app.lis import (
    HEATMAP_CODE,
    REFER_CODE,
    REFER_DISPLAY,
    SUBTYPE_CODE,
    SUBTYPE_DISPLAY,
    LisContext,
    heatmap_title,
    probability_code,
)
from app.schemas import Prediction

MEDIA_TYPE = "x-application/hl7-v2+er7"
SENDING_APPLICATION = "DSCNET"
METHOD = "dscnet-calibrated^DSCNet image classifier, temperature-calibrated^L"
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
# One table for str.translate: controls to a space, delimiters to their escapes (a heatmap's
# base64 is about 100,000 characters; a per-character Python loop took about 10 ms on it).
_TRANSLATION = {**{code: " " for code in (*range(32), 127)}, **{ord(ch): esc for ch, esc in _ESCAPES.items()}}


def escape(text: str) -> str:
    """HL7 v2 escaping of free text for one component; CR, LF and other controls become spaces."""
    return text.translate(_TRANSLATION)


def hl7_timestamp(moment: datetime) -> str:
    """DTM as YYYYMMDDHHMMSS+ZZZZ."""
    return moment.strftime("%Y%m%d%H%M%S%z")


def oru_r01(prediction: Prediction, context: LisContext) -> str:
    """The ORU^R01 message for one prediction; segments joined by CR, ending with one."""
    when = hl7_timestamp(context.issued)
    model = prediction.model
    equipment = f"{escape(model.version)}^{escape(model.name)}"
    probabilities = prediction.probabilities.model_dump()
    confidence = probabilities[prediction.label]

    def obx(set_id: int, value_type: str, identifier: str, value: str, units: str = "", probability: str = "") -> str:
        return _segment("OBX", {
            1: str(set_id), 2: value_type, 3: identifier, 5: value, 6: units, 9: probability,
            11: "P", 14: when, 17: METHOD, 18: equipment,
        })

    segments = [
        "MSH|^~\\&|" + "|".join([
            SENDING_APPLICATION, SENDING_APPLICATION, "", "", when, "", "ORU^R01^ORU_R01",
            escape(prediction.request_id[:20]), "P", "2.5.1",
        ]),
        _segment("PID", {1: "1", 3: escape(context.patient_id or "")}),
        _segment("OBR", {
            1: "1", 2: escape(context.order_id or ""), 3: f"{escape(prediction.request_id)}^{SENDING_APPLICATION}",
            4: f"{SUBTYPE_CODE}^{escape(SUBTYPE_DISPLAY)}^L", 7: when, 22: when, 24: "HM", 25: "P",
        }),
        _segment("NTE", {1: "1", 2: "L", 3: escape(
            f"Model {model.name} version {model.version}, sha256 {model.sha256}. "
            "Decision support, not a stand-alone diagnosis.")}),
        obx(1, "CWE", f"{SUBTYPE_CODE}^{escape(SUBTYPE_DISPLAY)}^L",
            f"{prediction.label}^{escape(CLASS_NAMES[prediction.label])}^L", probability=_number(confidence)),
    ]
    for offset, class_id in enumerate(CLASS_IDS, start=2):
        segments.append(obx(
            offset, "NM", f"{probability_code(class_id)}^{escape('Calibrated probability: ' + CLASS_NAMES[class_id])}^L",
            _number(probabilities[class_id]), units="1^unity^UCUM",
        ))
    refer = "Y^Yes^HL70136" if prediction.refer_to_human else "N^No^HL70136"
    segments.append(obx(len(CLASS_IDS) + 2, "CWE", f"{REFER_CODE}^{escape(REFER_DISPLAY)}^L", refer))
    notes = [f"Referred to a human: {prediction.refer_reason}"] if prediction.refer_reason else []
    notes += [f"Image quality warning {w.code}: {w.detail}" for w in prediction.warnings]
    segments += [_segment("NTE", {1: str(n), 2: "L", 3: escape(note)}) for n, note in enumerate(notes, start=1)]
    if prediction.explanation is not None:
        # ED: source application ^ type of data (IM, image; table 0191) ^ subtype ^ encoding (table 0299) ^ data.
        # Base64 has no HL7 delimiter; escaping it anyway keeps the rule "everything is escaped".
        heatmap = prediction.explanation
        segments.append(obx(
            len(CLASS_IDS) + 3, "ED", f"{HEATMAP_CODE}^{escape(heatmap_title(heatmap.class_id))}^L",
            f"{SENDING_APPLICATION}^IM^PNG^Base64^{escape(heatmap.png_base64)}",
        ))
    return "\r".join(segments) + "\r"


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value}; fields not given are empty, trailing ones dropped."""
    values = [fields.get(number, "") for number in range(1, max(fields) + 1)]
    return "|".join([name, *values])


def _number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
