"""What a lab gets from /predict, /predict-batch and /explain: calibration, referral, warnings, heatmaps."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers_images as images
import helpers_smears as smears
from app.calibration import NO_THRESHOLD_REASON, apply_temperature
from app.labels import CLASS_IDS
from helpers_lab import calibration, client_for, model_with, smear_png
from synthetic import png_bytes


def post(client, data: bytes, path: str = "/predict", **kwargs):
    return client.post(path, files={"image": ("smear.png", data, "image/png")}, **kwargs)


def row(probabilities: dict[str, float]) -> np.ndarray:
    return np.array([[probabilities[c] for c in CLASS_IDS]])


def test_without_calibration_probabilities_are_raw_and_every_case_is_referred(tmp_path: Path) -> None:
    with client_for(model_with(tmp_path)) as client:
        body = post(client, smear_png()).json()
    assert body["probabilities"] == body["uncalibrated_probabilities"]
    assert body["refer_to_human"] is True and body["refer_reason"] == NO_THRESHOLD_REASON
    assert body["warnings"] == [] and body["explanation"] is None


def test_calibrated_probabilities_and_an_accepted_case(tmp_path: Path) -> None:
    with client_for(model_with(tmp_path, calibration(threshold=0.3, temperature=1.5))) as client:
        body = post(client, smear_png()).json()
    expected = apply_temperature(row(body["uncalibrated_probabilities"]), 1.5)
    np.testing.assert_allclose(row(body["probabilities"]), expected, atol=1e-12)
    assert not np.allclose(row(body["probabilities"]), row(body["uncalibrated_probabilities"]))
    assert body["label"] == max(body["uncalibrated_probabilities"], key=body["uncalibrated_probabilities"].get)
    assert body["probabilities"][body["label"]] >= 0.3
    assert body["refer_to_human"] is False and body["refer_reason"] is None and body["warnings"] == []


def test_a_low_confidence_case_is_referred_with_its_numbers(tmp_path: Path) -> None:
    with client_for(model_with(tmp_path, calibration(threshold=0.99))) as client:
        body = post(client, smear_png()).json()
    confidence = body["probabilities"][body["label"]]
    assert body["refer_to_human"] is True
    assert body["refer_reason"].startswith(f"calibrated confidence {confidence:.3f} is below the referral threshold 0.990")


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: smears.blurred(smears.smear()), "out_of_focus"),
        (lambda: smears.scaled(smears.smear(), 0.4), "under_exposed"),
        (lambda: smears.scaled(smears.smear(), 1.0, 80), "over_exposed"),
        (lambda: smears.greyscale(smears.smear()), "monochrome"),
        (smears.landscape, "not_smear_like"),
    ],
)
def test_a_quality_warning_is_reported_and_refers_the_case(tmp_path: Path, make, code: str) -> None:
    with client_for(model_with(tmp_path, calibration(threshold=0.0))) as client:
        body = post(client, png_bytes(make())).json()
    assert [w["code"] for w in body["warnings"]] == [code]
    assert body["warnings"][0]["detail"]
    assert body["refer_to_human"] is True and body["refer_reason"] == f"image quality warnings: {code}"


def test_batch_results_carry_the_same_fields(tmp_path: Path) -> None:
    files = [("images", ("a.png", smear_png(), "image/png")), ("images", ("b.png", png_bytes(smears.landscape()), "image/png")),
             ("images", ("c.txt", images.text_file(), "text/plain"))]
    with client_for(model_with(tmp_path, calibration(threshold=0.3))) as client:
        results = client.post("/predict-batch", files=files).json()["results"]
        single = post(client, smear_png()).json()
    assert results[0]["probabilities"] == single["probabilities"]
    assert results[0]["refer_to_human"] is False and results[0]["warnings"] == []
    assert results[1]["refer_to_human"] is True and results[1]["warnings"][0]["code"] == "not_smear_like"
    assert "refer_to_human" not in results[2] and results[2]["error"]["code"] == "unsupported_format"


def test_predict_with_explain_returns_a_deterministic_heatmap(tmp_path: Path) -> None:
    with client_for(model_with(tmp_path, calibration(threshold=0.3))) as client:
        first = post(client, smear_png(), path="/predict?explain=true").json()
        second = post(client, smear_png(), path="/predict?explain=true").json()
    explanation = first["explanation"]
    assert explanation["class_id"] == first["label"] and explanation["media_type"] == "image/png"
    assert explanation == second["explanation"]
    overlay = Image.open(io.BytesIO(base64.b64decode(explanation["png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (224, 224) and overlay.mode == "RGB"


def test_explain_returns_the_png_and_the_prediction_in_headers(tmp_path: Path) -> None:
    with client_for(model_with(tmp_path, calibration(threshold=0.3))) as client:
        response = post(client, smear_png(), path="/explain")
        again = post(client, smear_png(), path="/explain")
        body = post(client, smear_png(), path="/predict?explain=true").json()
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == again.content
    assert response.content == base64.b64decode(body["explanation"]["png_base64"])
    assert response.headers["x-dscnet-label"] == body["label"]
    assert float(response.headers["x-dscnet-confidence"]) == pytest.approx(body["probabilities"][body["label"]], abs=1e-6)
    assert response.headers["x-dscnet-refer-to-human"] == "false"
    assert "x-dscnet-refer-reason" not in response.headers and "x-dscnet-warnings" not in response.headers
    assert response.headers["x-dscnet-model"] == "dscnet/0.0.1-test"


def test_explain_headers_carry_referral_and_warnings(tmp_path: Path) -> None:
    with client_for(model_with(tmp_path)) as client:
        response = post(client, png_bytes(smears.blurred(smears.smear())), path="/explain")
    assert response.headers["x-dscnet-refer-to-human"] == "true"
    assert response.headers["x-dscnet-warnings"] == "out_of_focus"
    assert NO_THRESHOLD_REASON in response.headers["x-dscnet-refer-reason"]


def test_explain_the_tiny_model_highlights_the_coloured_patch(tmp_path: Path) -> None:
    pixels = np.zeros((224, 224, 3), dtype=np.uint8)
    pixels[110:214, 110:214] = (20, 20, 230)  # blue: the tiny model's evidence for pre_b
    with client_for(model_with(tmp_path)) as client:
        response = post(client, png_bytes(pixels), path="/explain")
    assert response.headers["x-dscnet-label"] == "pre_b"
    overlay = np.asarray(Image.open(io.BytesIO(response.content))).astype(int)
    changed = np.abs(overlay - pixels).sum(axis=-1) > 0
    assert changed[110:214, 110:214].mean() > 0.9 and changed[:100, :100].sum() == 0


@pytest.mark.parametrize("path", ["/explain", "/predict?explain=true"])
def test_explaining_with_a_model_without_class_activation_is_501(tmp_path: Path, path: str) -> None:
    with client_for(model_with(tmp_path, with_activation=False)) as client:
        response = post(client, smear_png(), path=path)
        plain = post(client, smear_png())
    assert response.status_code == 501
    assert response.json()["error"]["code"] == "explanation_unavailable"
    assert plain.status_code == 200


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [(images.text_file(), 415, "unsupported_format"), (images.truncated_jpeg(), 400, "corrupt_image"),
     (b"", 422, "empty_file")],
)
def test_explain_refuses_bad_images_with_the_common_body(tmp_path: Path, data: bytes, status: int, code: str) -> None:
    with client_for(model_with(tmp_path)) as client:
        response = post(client, data, path="/explain")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code and response.json()["error"]["field"] == "image"


def test_explain_is_documented_with_its_headers(tmp_path: Path) -> None:
    with client_for(model_with(tmp_path)) as client:
        spec = client.get("/openapi.json").json()
    answers = spec["paths"]["/explain"]["post"]["responses"]
    assert "image/png" in answers["200"]["content"] and "X-DSCNet-Label" in answers["200"]["headers"]
    assert {"400", "413", "415", "422", "501", "503"} <= set(answers)
    predict = spec["paths"]["/predict"]["post"]
    assert {"application/json", "application/fhir+json", "x-application/hl7-v2+er7"} <= set(
        predict["responses"]["200"]["content"])
    assert "406" in predict["responses"]
    assert {"format", "explain", "x-patient-id", "x-order-id"} <= {p["name"] for p in predict["parameters"]}
    patient = next(p for p in predict["parameters"] if p["name"] == "x-patient-id")
    assert "pattern" in str(patient["schema"]) and "64" in str(patient["schema"])  # documented, checked by answer_format


def test_the_lab_fields_are_counted_and_logged_without_patient_ids(tmp_path: Path, caplog) -> None:
    with client_for(model_with(tmp_path)) as client, caplog.at_level(logging.INFO, logger="dscnet.access"):
        response = post(client, smear_png(), path="/predict?format=fhir",
                        headers={"X-Patient-ID": "PATIENT-7731", "X-Order-ID": "ORDER-55"})
        metrics = client.get("/metrics").text
    assert response.status_code == 200
    assert "PATIENT-7731" not in caplog.text and "ORDER-55" not in caplog.text
    assert 'dscnet_predictions_total{label="' in metrics
