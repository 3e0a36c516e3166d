"""Static int8 quantisation (training.quantize) on the tiny model: it runs, it agrees, the service loads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.classifier import load_classifier
from training.quantize import int8_card, quantize


def test_the_int8_model_agrees_and_its_card_passes_the_service_checks(tiny_model: Path) -> None:
    rng = np.random.default_rng(0)
    # Plain colours: the tiny model reads the mean colour, so these span its input range.
    calibration = np.broadcast_to(rng.integers(0, 256, (32, 1, 1, 3), dtype=np.uint8), (32, 224, 224, 3)).copy()
    int8_path = tiny_model.with_name("dscnet-int8.onnx")
    quantize(tiny_model, int8_path, calibration)
    report = {"accuracy_int8": 1.0, "test_images": 4}
    int8_path.with_suffix(".json").write_text(json.dumps(int8_card(tiny_model, int8_path, report)))

    float_model = load_classifier(tiny_model, tiny_model.with_suffix(".json"), 1)
    int8_model = load_classifier(int8_path, int8_path.with_suffix(".json"), 1)
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)], dtype=np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (4, 224, 224, 3)).copy()
    expected, got = float_model.predict_batch(images), int8_model.predict_batch(images)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 0.05
    card = json.loads(int8_path.with_suffix(".json").read_text())
    assert card["quantization"]["source_sha256"] == float_model.identity.sha256
    assert card["metrics"]["accuracy"] == 1.0
