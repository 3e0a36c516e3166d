"""The service refuses to start with a model it cannot verify, and with unsafe settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.classifier import ModelLoadError
from app.main import create_app
from app.settings import Settings, describe_settings_error
from helpers_images import solid
from helpers_onnx import build_tiny_model, card_for, write_card


def start(model_path: Path, **settings: object) -> None:
    with TestClient(create_app(Settings(model_path=model_path, ort_threads=1, **settings))):
        pass


def refusal(model_path: Path, **settings: object) -> str:
    with pytest.raises(ModelLoadError) as caught:
        start(model_path, **settings)
    return str(caught.value)


def rewrite_card(model_path: Path, **overrides: object) -> None:
    card_path = model_path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(overrides)
    card_path.write_text(json.dumps(card))


def test_the_tiny_model_starts(tiny_model: Path) -> None:
    start(tiny_model)


def test_missing_model_file(tiny_model: Path) -> None:
    tiny_model.unlink()
    assert "does not exist" in refusal(tiny_model)


def test_missing_card(tiny_model: Path) -> None:
    tiny_model.with_suffix(".json").unlink()
    assert "model card" in refusal(tiny_model) and "does not exist" in refusal(tiny_model)


def test_card_path_setting_is_used(tiny_model: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.json"
    tiny_model.with_suffix(".json").rename(moved)
    start(tiny_model, model_card_path=moved)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "", "\xff"])
def test_unreadable_card(tiny_model: Path, text: str) -> None:
    tiny_model.with_suffix(".json").write_text(text, encoding="latin-1")
    assert "model card" in refusal(tiny_model)


def test_changed_model_file_fails_the_checksum(tiny_model: Path) -> None:
    tiny_model.write_bytes(tiny_model.read_bytes() + b"\0")
    message = refusal(tiny_model)
    assert "sha256" in message and "corrupt" in message


def test_corrupt_model_with_a_matching_card_is_refused_by_onnxruntime(tiny_model: Path) -> None:
    tiny_model.write_bytes(b"not an onnx model")
    write_card(tiny_model)
    assert "onnxruntime cannot load" in refusal(tiny_model)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"classes": ["benign", "pre_b", "early_pre_b", "pro_b"]}, "classes"),
        ({"classes": ["benign", "early_pre_b", "pre_b"]}, "classes"),
        ({"preprocessing": {"version": "0", "function": "app.imaging.decode_image"}}, "preprocessing version"),
        ({"file": "other.onnx"}, "describes 'other.onnx'"),
        ({"sha256": "abc"}, "sha256"),
        ({"input": {"name": "image", "shape": [None, 128, 128, 3], "dtype": "float32", "layout": "NHWC",
                    "color": "RGB", "range": [0, 255]}}, "input shape"),
        ({"input": {"name": "image", "shape": [None, 224, 224, 3], "dtype": "uint8", "layout": "NHWC",
                    "color": "RGB", "range": [0, 255]}}, "input.dtype"),
        ({"output": {"name": "probabilities", "shape": [None, 5]}}, "output shape"),
        ({"name": ""}, "name"),
    ],
)
def test_card_that_does_not_fit_this_service(tiny_model: Path, overrides: dict, words: str) -> None:
    rewrite_card(tiny_model, **overrides)
    assert words in refusal(tiny_model)


def test_card_without_required_keys(tiny_model: Path) -> None:
    card = card_for(tiny_model)
    del card["input"], card["opset"]
    tiny_model.with_suffix(".json").write_text(json.dumps(card))
    message = refusal(tiny_model)
    assert "input" in message and "opset" in message


def test_input_name_must_match_the_card(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "dscnet.onnx", input_name="pixels")
    write_card(model)
    assert "takes inputs ['pixels']" in refusal(model)


def test_output_name_must_match_the_card(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "dscnet.onnx", output_name="softmax", with_activation=False)
    write_card(model)
    assert "has outputs ['softmax']" in refusal(model)


def test_input_size_must_be_224(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "dscnet.onnx", image_size=128)
    write_card(model)
    assert "expected float [N, 224, 224, 3]" in refusal(model)


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        ("DSCNET_MAX_UPLOAD_BYTES", "0", "greater than or equal to 1024"),
        ("DSCNET_MAX_UPLOAD_BYTES", "lots", "valid integer"),
        ("DSCNET_MAX_BATCH_IMAGES", "0", "greater than or equal to 1"),
        ("DSCNET_MAX_BATCH_IMAGES", "100000", "less than or equal to 512"),
        ("DSCNET_MAX_PIXELS", "100", "greater than or equal to 50176"),
        ("DSCNET_ORT_THREADS", "0", "greater than or equal to 1"),
        ("DSCNET_PORT", "70000", "less than or equal to 65535"),
        ("DSCNET_LOG_LEVEL", "chatty", "'debug'"),
        ("DSCNET_MODEL_PATH", "models/dscnet.h5", ".onnx file"),
        ("DSCNET_MAX_BATCH_BYTES", "2048", "no batch could hold one image"),
    ],
)
def test_unsafe_settings_are_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, words: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_settings_error(caught.value)
    assert words in message
    if env != "DSCNET_MAX_BATCH_BYTES":  # a cross-field rule names no single variable
        assert env in message


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSCNET_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("DSCNET_ORT_THREADS", "3")
    monkeypatch.setenv("DSCNET_MODEL_PATH", "/srv/m/dscnet.onnx")
    settings = Settings()
    assert settings.log_level == "warning" and settings.intra_op_threads == 3
    assert settings.card_path == Path("/srv/m/dscnet.json")


def test_settings_from_the_environment_are_read_at_start_up(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    from app import settings as settings_module

    monkeypatch.setenv("DSCNET_MODEL_PATH", str(tiny_model))
    monkeypatch.setenv("DSCNET_ORT_THREADS", "1")
    settings_module.get_settings.cache_clear()
    try:
        with TestClient(create_app()) as client:
            assert client.get("/health/ready").status_code == 200
    finally:
        settings_module.get_settings.cache_clear()


def test_invalid_environment_stops_the_lifespan(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import settings as settings_module

    monkeypatch.setenv("DSCNET_MAX_PIXELS", "-1")
    settings_module.get_settings.cache_clear()
    app = create_app()
    try:
        with pytest.raises(ValidationError), TestClient(app):
            pass
    finally:
        settings_module.get_settings.cache_clear()
    assert "DSCNET_MAX_PIXELS" in app.state.service.load_error


@pytest.mark.parametrize(("cpus", "lanes", "wide"), [(2, 2, True), (1, 1, False)])
def test_the_service_lays_its_runs_out_on_its_cpus(tiny_model: Path, cpus: int, lanes: int, wide: bool) -> None:
    """Two CPUs: two single-thread lanes and a two-thread session for lone runs; one CPU: one run."""
    with TestClient(create_app(Settings(model_path=tiny_model, cpus=cpus))) as client:
        classifier = client.app.state.service.classifier
        assert classifier.lanes.runs == lanes and (classifier.wide_session is not None) == wide
        image = {"image": ("a.png", solid((200, 120, 180)))}
        assert client.post("/predict", files=image).status_code == 200
