"""FHIR R4 and HL7 v2.5.1 answers: validated with fhir.resources, parsed back with hl7, chosen by Accept or ?format."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import hl7
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from app.labels import CLASS_IDS, CLASS_NAMES
from app.lis import LisContext, SUBTYPE_SYSTEM
from app.lis.fhir import MODEL_SHA256_SYSTEM, diagnostic_report, fhir_id
from app.lis.hl7v2 import escape, oru_r01
from app.lis.negotiate import NotAcceptableError, choose_format
from app.schemas import PREDICTION_EXAMPLE, Prediction
from helpers_lab import calibration, client_for, model_with, smear_png

WHEN = datetime(2026, 11, 26, 10, 13, 56, tzinfo=UTC)
SHA = "ab" * 32


def prediction(**changes: object) -> Prediction:
    body = {**PREDICTION_EXAMPLE, "model": {"name": "dscnet", "version": "1.0.0", "sha256": SHA}, **changes}
    return Prediction.model_validate(body)


REFERRED = {
    "refer_to_human": True, "refer_reason": "calibrated confidence 0.612 is below the referral threshold 0.900",
    "warnings": [{"code": "out_of_focus", "detail": "the image looks blurred | ^ & ~ \\ \r\nnext line"}],
}


# --- FHIR ---------------------------------------------------------------------------------


def validated(report: dict) -> DiagnosticReport:
    """fhir.resources' R4B models: DiagnosticReport, Observation and Device have R4's elements."""
    return DiagnosticReport.model_validate(report)


def test_fhir_report_validates_and_carries_the_result() -> None:
    report = validated(diagnostic_report(prediction(), LisContext(WHEN)))
    assert report.status == "preliminary" and report.issued is not None
    device, observation = report.contained
    assert device.get_resource_type() == "Device" and observation.get_resource_type() == "Observation"
    assert report.result[0].reference == "#observation" and observation.device.reference == "#device"
    coding = observation.valueCodeableConcept.coding[0]
    assert (coding.system, coding.code, coding.display) == (SUBTYPE_SYSTEM, "early_pre_b", CLASS_NAMES["early_pre_b"])
    probabilities = {c.code.coding[0].code: float(c.valueQuantity.value) for c in observation.component[:4]}
    assert probabilities == {f"probability-{k.replace('_', '-')}": v for k, v in PREDICTION_EXAMPLE["probabilities"].items()}
    assert all(c.valueQuantity.system == "http://unitsofmeasure.org" for c in observation.component[:4])
    assert observation.component[4].valueBoolean is False and observation.note is None
    assert device.deviceName[0].name == "dscnet" and device.deviceName[0].type == "model-name"
    assert device.version[0].value == "1.0.0"
    assert device.identifier[0].system == MODEL_SHA256_SYSTEM and device.identifier[0].value == SHA
    assert report.subject is None and report.basedOn is None and report.presentedForm is None


def test_fhir_report_of_a_referred_case_with_patient_order_and_heatmap() -> None:
    explained = prediction(**REFERRED, explanation={"class_id": "early_pre_b", "png_base64": "iVBORw0KGgo="})
    report = validated(diagnostic_report(explained, LisContext(WHEN, patient_id="P-1", order_id="O-2")))
    observation = report.contained[1]
    assert observation.component[4].valueBoolean is True
    notes = [note.text for note in observation.note]
    assert notes[0].startswith("Referred to a human: calibrated confidence 0.612")
    assert notes[1].startswith("Image quality warning out_of_focus")
    assert report.subject.identifier.value == "P-1" and observation.subject.identifier.value == "P-1"
    assert report.basedOn[0].identifier.value == "O-2"
    assert report.presentedForm[0].contentType == "image/png"
    assert "Refer to a human" in report.conclusion


def test_fhir_ids_are_valid_for_any_request_id() -> None:
    assert fhir_id("abc_def:1.2-3") == "abc-def-1.2-3"
    assert len(fhir_id("x" * 128)) == 64
    validated(diagnostic_report(prediction(request_id="client_id:42"), LisContext(WHEN)))


# --- HL7 v2 -------------------------------------------------------------------------------


def parsed(message: str) -> hl7.Message:
    assert message.endswith("\r") and "\n" not in message
    return hl7.parse(message)


def test_hl7_message_parses_back_with_one_obx_per_probability() -> None:
    message = parsed(oru_r01(prediction(), LisContext(WHEN, patient_id="P-1", order_id="O-2")))
    msh = message.segment("MSH")
    assert str(msh[9]) == "ORU^R01^ORU_R01" and str(msh[12]) == "2.5.1" and str(msh[7]) == "20261126101356+0000"
    assert str(msh[10]) == PREDICTION_EXAMPLE["request_id"][:20]
    assert str(message.segment("PID")[3]) == "P-1"
    obr = message.segment("OBR")
    assert str(obr[2]) == "O-2" and str(obr[25]) == "P"
    obx = message.segments("OBX")
    assert len(obx) == 1 + len(CLASS_IDS) + 1
    assert str(obx[0][5]) == f"early_pre_b^{CLASS_NAMES['early_pre_b']}^L" and float(str(obx[0][9])) == 0.931
    for segment, class_id in zip(obx[1:5], CLASS_IDS, strict=True):
        assert str(segment[2]) == "NM"
        assert float(str(segment[5])) == PREDICTION_EXAMPLE["probabilities"][class_id]
    assert str(obx[5][5]).startswith("N^")
    for segment in obx:
        assert str(segment[11]) == "P"
        assert str(segment[18][0][0]) == "1.0.0"  # OBX-18: the model version
    assert SHA in str(message.segment("NTE")[3])


def test_hl7_message_with_explain_carries_the_heatmap_as_an_ed_obx() -> None:
    explained = prediction(**REFERRED, explanation={"class_id": "early_pre_b", "png_base64": "iVBORw0KGgo="})
    message = parsed(oru_r01(explained, LisContext(WHEN)))
    obx = message.segments("OBX")
    assert len(obx) == 1 + len(CLASS_IDS) + 2
    heatmap = obx[-1]
    assert str(heatmap[1]) == str(len(obx)) and str(heatmap[2]) == "ED" and str(heatmap[11]) == "P"
    assert str(heatmap[3]).startswith("class-activation-heatmap^Class activation heatmap for Early pre-B")
    source, kind, subtype, encoding, data = (str(heatmap[5][0][i]) for i in range(5))
    assert (source, kind, subtype, encoding, data) == ("DSCNET", "IM", "PNG", "Base64", "iVBORw0KGgo=")
    # The referral's notes still follow the referral OBX, before the heatmap.
    assert [str(s[0]) for s in message][-4:] == ["OBX", "NTE", "NTE", "OBX"]
    assert len(parsed(oru_r01(prediction(), LisContext(WHEN))).segments("OBX")) == 1 + len(CLASS_IDS) + 1


def test_hl7_free_text_cannot_break_the_message() -> None:
    hostile = "X|Y^Z&W~V\\U\rMSH|evil"
    message = parsed(oru_r01(prediction(**REFERRED), LisContext(WHEN, patient_id=hostile, order_id="O|2")))
    assert len(message.segments("MSH")) == 1
    assert message.unescape(str(message.segment("PID")[3])) == "X|Y^Z&W~V\\U MSH|evil"
    assert message.unescape(str(message.segment("OBR")[2])) == "O|2"
    notes = [message.unescape(str(segment[3])) for segment in message.segments("NTE")]
    assert notes[1].startswith("Referred to a human") and "blurred | ^ & ~ \\   next line" in notes[2]
    assert str(message.segments("OBX")[5][5]).startswith("Y^")


def test_escape_covers_every_delimiter() -> None:
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"


# --- negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        (None, None, "json"),
        (None, "", "json"),
        (None, "*/*", "json"),
        (None, "nonsense", "json"),  # malformed ranges are ignored, as if no Accept was sent
        (None, "application/*", "json"),
        (None, "application/json", "json"),
        (None, "application/fhir+json", "fhir"),
        (None, "application/fhir+json; fhirVersion=4.0", "fhir"),
        (None, "application/json+fhir", "fhir"),
        (None, "x-application/hl7-v2+er7", "hl7"),
        (None, "text/html, x-application/hl7-v2+er7;q=0.5", "hl7"),
        (None, "application/json;q=0.4, application/fhir+json;q=0.9", "fhir"),
        (None, "*/*;q=0.1, x-application/hl7-v2+er7", "hl7"),
        (None, "application/json;q=0, */*", "fhir"),
        ("hl7", "application/json", "hl7"),
        ("json", "text/html", "json"),
    ],
)
def test_format_choice(query, accept, expected) -> None:
    assert choose_format(query, accept) == expected


@pytest.mark.parametrize("accept", ["application/fhir+json;q=abc", "application/json;q=abc", "*/*;q=nan",
                                    "x-application/hl7-v2+er7;q=-1", "application/json;q=2"])
def test_a_q_that_is_not_a_number_from_0_to_1_is_refused_not_skipped(accept: str) -> None:
    # skipped, a lone FHIR range with a bad q gave JSON without a word; read as q=0, a misleading 406
    with pytest.raises(NotAcceptableError, match="is not a number from 0 to 1"):
        choose_format(None, accept)


@pytest.mark.parametrize("accept", ["text/html", "image/png", "application/json;q=0, application/*;q=0, */*;q=0"])
def test_nothing_acceptable_is_refused(accept: str) -> None:
    with pytest.raises(NotAcceptableError):
        choose_format(None, accept)


# --- through the API ----------------------------------------------------------------------


@pytest.fixture
def lab_client(tmp_path: Path):
    with client_for(model_with(tmp_path, calibration(threshold=0.3))) as client:
        yield client


def post(client, path: str = "/predict", **kwargs):
    return client.post(path, files={"image": ("smear.png", smear_png(), "image/png")}, **kwargs)


@pytest.mark.parametrize(
    ("how", "media_type"),
    [({"params": {"format": "fhir"}}, "application/fhir+json"),
     ({"headers": {"Accept": "application/fhir+json"}}, "application/fhir+json")],
)
def test_predict_answers_fhir(lab_client, how: dict, media_type: str) -> None:
    json_body = post(lab_client).json()
    response = post(lab_client, **how)
    assert response.status_code == 200 and response.headers["content-type"] == media_type
    report = validated(response.json())
    assert report.contained[1].valueCodeableConcept.coding[0].code == json_body["label"]
    values = {c.code.coding[0].code: float(c.valueQuantity.value) for c in report.contained[1].component[:4]}
    for class_id in CLASS_IDS:
        assert values[f"probability-{class_id.replace('_', '-')}"] == pytest.approx(
            json_body["probabilities"][class_id], abs=1e-6)
    assert report.contained[0].identifier[0].value == json_body["model"]["sha256"]


@pytest.mark.parametrize(
    "how", [{"params": {"format": "hl7"}}, {"headers": {"Accept": "x-application/hl7-v2+er7"}}],
)
def test_predict_answers_hl7(lab_client, how: dict) -> None:
    json_body = post(lab_client).json()
    headers = {**how.get("headers", {}), "X-Patient-ID": "P|9", "X-Order-ID": "O-1"}
    response = post(lab_client, params=how.get("params"), headers=headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("x-application/hl7-v2+er7")
    message = parsed(response.text)
    assert message.unescape(str(message.segment("PID")[3])) == "P|9" and str(message.segment("OBR")[2]) == "O-1"
    obx = message.segments("OBX")
    assert str(obx[0][5]).split("^")[0] == json_body["label"]
    assert str(obx[0][18][0][0]) == json_body["model"]["version"]


def test_predict_fhir_with_explain_embeds_the_heatmap(lab_client) -> None:
    report = validated(post(lab_client, "/predict?format=fhir&explain=true").json())
    assert report.presentedForm[0].contentType == "image/png" and report.presentedForm[0].data


def test_predict_hl7_with_explain_carries_the_same_heatmap_as_json(lab_client) -> None:
    json_heatmap = post(lab_client, "/predict?explain=true").json()["explanation"]["png_base64"]
    message = parsed(post(lab_client, "/predict?format=hl7&explain=true").text)
    heatmap = message.segments("OBX")[-1]
    assert str(heatmap[2]) == "ED" and str(heatmap[5][0][4]) == json_heatmap
    assert base64.b64decode(json_heatmap).startswith(b"\x89PNG\r\n\x1a\n")


def test_the_query_parameter_wins_over_accept(lab_client) -> None:
    response = post(lab_client, params={"format": "json"}, headers={"Accept": "text/html"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"


def test_an_accept_we_cannot_produce_is_406_before_the_body_is_read(lab_client) -> None:
    response = post(lab_client, headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
    # Not multipart at all: still 406, because the format is settled before the upload is read.
    raw = lab_client.post("/predict", content=b"x", headers={"Accept": "text/html", "Content-Type": "text/plain"})
    assert raw.status_code == 406


@pytest.mark.parametrize(("path", "field", "accept", "media"), [
    ("/predict-batch", "images", "application/fhir+json", "application/json"),
    ("/predict-batch", "images", "text/html", "application/json"),
    ("/explain", "image", "application/json", "image/png"),
])
def test_the_one_type_endpoints_answer_406_when_accept_rules_it_out(lab_client, path: str, field: str,
                                                                    accept: str, media: str) -> None:
    # they answered 200 in their one type whatever Accept said, where /predict answers 406
    response = lab_client.post(path, files={field: ("smear.png", smear_png(), "image/png")}, headers={"Accept": accept})
    assert response.status_code == 406 and response.json()["error"]["code"] == "not_acceptable"
    assert response.json()["error"]["detail"].endswith(f"{path} answers {media} only")
    for welcome in (media, "*/*", f"{media.split('/')[0]}/*, text/html;q=0.5"):
        allowed = lab_client.post(path, files={field: ("smear.png", smear_png(), "image/png")},
                                  headers={"Accept": welcome})
        assert allowed.status_code == 200, (welcome, allowed.text)


def test_an_unknown_format_is_422(lab_client) -> None:
    response = post(lab_client, params={"format": "xml"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "format"


@pytest.mark.parametrize("value", ["x" * 65, "a\tb"])
def test_unsafe_lis_ids_are_422_and_not_echoed(lab_client, value: str) -> None:
    response = post(lab_client, params={"format": "hl7"}, headers={"X-Patient-ID": value})
    assert response.status_code == 422 and value not in response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_lis_id" and error["field"] == "x-patient-id"
    assert error["detail"].startswith("X-Patient-ID must be 1 to 64 printable ASCII characters")


def test_a_non_ascii_lis_id_is_422_not_echoed_garbled(lab_client) -> None:
    # HTTP headers arrive as Latin-1: UTF-8 "été" was accepted and echoed as "Ã©tÃ©" in PID-3
    response = post(lab_client, params={"format": "hl7"}, headers=[("X-Patient-ID", "été".encode())])
    assert response.status_code == 422 and response.json()["error"]["field"] == "x-patient-id"
    assert "Ã" not in response.text and "with characters outside ASCII" in response.json()["error"]["detail"]


@pytest.mark.parametrize("name", ["X-Patient-ID", "X-Order-ID"])
def test_a_lis_id_sent_twice_is_422_not_one_of_them_chosen(lab_client, name: str) -> None:
    response = post(lab_client, params={"format": "hl7"}, headers=[(name, "AAA"), (name, "BBB")])
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "repeated_header" and error["field"] == name.lower()
    assert error["detail"] == f"{name} is sent 2 times; send it once"
    assert "AAA" not in response.text and "BBB" not in response.text


def test_the_fhir_answer_is_plain_json(lab_client) -> None:
    body = json.loads(post(lab_client, params={"format": "fhir"}).content)
    assert body["resourceType"] == "DiagnosticReport"
