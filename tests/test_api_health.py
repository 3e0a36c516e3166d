"""Health, model card, metrics, request logs and the OpenAPI document."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import helpers_images as images
from app.logs import JsonFormatter
from app.main import create_app
from app.settings import Settings


def test_live_is_200_even_without_a_model(tiny_model: Path) -> None:
    client = TestClient(create_app(Settings(model_path=tiny_model)))
    assert client.get("/health/live").json() == {"status": "alive"}


def test_ready_is_503_before_the_lifespan_and_200_after(tiny_model: Path) -> None:
    app = create_app(Settings(model_path=tiny_model, ort_threads=1))
    before = TestClient(app).get("/health/ready")
    assert before.status_code == 503
    assert before.json()["status"] == "not_ready"
    with TestClient(app) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready" and "warm-up" in body["detail"]
        assert body["model"]["sha256"] == json.loads(tiny_model.with_suffix(".json").read_text())["sha256"]
    after = TestClient(app).get("/health/ready")
    assert after.status_code == 503
    assert "shutting down" in after.json()["detail"]


def test_model_returns_the_card_with_its_extra_keys(client: TestClient, tiny_model: Path) -> None:
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    response = client.get("/model")
    assert response.status_code == 200
    assert response.json() == card
    assert response.json()["intended_use"] == "tests only"


def test_model_is_503_before_the_lifespan(tiny_model: Path) -> None:
    response = TestClient(create_app(Settings(model_path=tiny_model))).get("/model")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_ready"


def scrape(client: TestClient) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def sample(families: dict[str, list], metric: str, /, **labels: str) -> float:
    for family_samples in families.values():
        for s in family_samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {metric} {labels}")


def test_metrics_cover_requests_stages_batches_classes_rejections_and_model(client: TestClient, tiny_model: Path) -> None:
    client.post("/predict", files={"image": ("a.png", images.solid((255, 0, 0)))})
    client.post("/predict", files={"image": ("a.txt", images.text_file())})
    client.post("/predict-batch", files=[("images", ("b.png", images.solid((0, 255, 0)))),
                                         ("images", ("c.png", images.png_bomb()))])
    client.post("/predict", files={"wrong": ("a.png", b"x")})
    m = scrape(client)
    assert sample(m, "dscnet_requests_total", endpoint="/predict", status="200") == 1
    assert sample(m, "dscnet_requests_total", endpoint="/predict", status="415") == 1
    assert sample(m, "dscnet_requests_total", endpoint="/predict", status="422") == 1
    assert sample(m, "dscnet_requests_total", endpoint="/predict-batch", status="200") == 1
    for stage in ("decode", "inference", "total"):
        assert sample(m, "dscnet_stage_duration_seconds_count", endpoint="/predict", stage=stage) >= 1
    assert sample(m, "dscnet_batch_size_count") == 2  # one single run, one batch run
    assert sample(m, "dscnet_batch_size_sum") == 2  # each run held one decodable image
    assert sample(m, "dscnet_predictions_total", label="benign") == 1
    assert sample(m, "dscnet_predictions_total", label="early_pre_b") == 1
    assert sample(m, "dscnet_images_rejected_total", reason="unsupported_format") == 1
    assert sample(m, "dscnet_images_rejected_total", reason="too_many_pixels") == 1
    assert sample(m, "dscnet_images_rejected_total", reason="unexpected_field") == 1
    # both classified images referred (the test card has no threshold), both plain colours: no smear
    assert sample(m, "dscnet_referrals_total", cause="no_threshold") == 2
    assert sample(m, "dscnet_referrals_total", cause="quality_warning") == 2
    assert sample(m, "dscnet_quality_warnings_total", code="not_smear_like") == 2
    sha = json.loads(tiny_model.with_suffix(".json").read_text())["sha256"]
    assert sample(m, "dscnet_model_info", name="dscnet", version="0.0.1-test", sha256=sha) == 1
    assert sample(m, "dscnet_requests_in_flight") == 1  # the scrape itself
    assert sample(m, "dscnet_ready") == 1


def test_unknown_paths_share_one_metric_label(client: TestClient) -> None:
    client.get("/a-random-path")
    client.get("/another/random/path")
    assert sample(scrape(client), "dscnet_requests_total", endpoint="unmatched", status="404") == 2


def test_one_log_line_per_request_without_image_content_or_file_names(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dscnet.access")
    secret_name = "patient-jane-doe.png"
    response = client.post("/predict", files={"image": (secret_name, images.solid((0, 0, 255)))},
                           headers={"X-Request-ID": "req-1"})
    records = [r for r in caplog.records if r.name == "dscnet.access"]
    assert len(records) == 1
    fields = records[0].fields
    assert fields["request_id"] == "req-1"
    assert fields["endpoint"] == "/predict" and fields["method"] == "POST" and fields["status"] == 200
    assert fields["request_bytes"] > 0 and fields["response_bytes"] == len(response.content)
    assert fields["labels"] == {"pre_b": 1} and fields["images"] == 1
    assert {"duration_ms", "decode_ms", "inference_ms"} <= set(fields)
    line = JsonFormatter().format(records[0])
    assert "\n" not in line and json.loads(line)["request_id"] == "req-1"
    assert "jane" not in line and "PNG" not in line


def test_openapi_documents_uploads_and_every_error(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    single = spec["paths"]["/predict"]["post"]
    schema = single["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["image"] and schema["properties"]["image"]["format"] == "binary"
    assert {"200", "400", "408", "413", "415", "422", "503"} <= set(single["responses"])
    for status in ("400", "408", "413", "415", "422"):
        assert single["responses"][status]["content"]["application/json"]["examples"]
    assert {"unexpected_field", "unexpected_parameter", "image_too_small"} <= set(
        single["responses"]["422"]["content"]["application/json"]["examples"])
    assert single["responses"]["200"]["content"]["application/json"]["example"]["label"] == "early_pre_b"
    batch = spec["paths"]["/predict-batch"]["post"]
    assert batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["images"]["type"] == "array"
    assert "too_many_files" in batch["responses"]["413"]["content"]["application/json"]["examples"]
    assert spec["paths"]["/health/ready"]["get"]["responses"]["503"]
    assert client.get("/docs").status_code == 200
