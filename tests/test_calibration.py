"""Temperature scaling and the refer-to-a-human rule as served, and the card's calibration block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.calibration import NO_THRESHOLD_REASON, CardCalibration, Calibration, apply_temperature, refer
from app.classifier import ModelLoadError, load_classifier
from helpers_onnx import CALIBRATION, write_card

ROWS = np.array([[0.7, 0.2, 0.05, 0.05], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])


def test_temperature_one_changes_nothing() -> None:
    np.testing.assert_allclose(apply_temperature(ROWS[:2], 1.0), ROWS[:2], atol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.7, 3.0])
def test_temperature_keeps_the_ranking_and_rows_sum_to_one(temperature: float) -> None:
    calibrated = apply_temperature(ROWS, temperature)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-12)
    assert (calibrated.argmax(axis=1) == ROWS.argmax(axis=1)).all()
    # T > 1 softens a confident answer, T < 1 sharpens it.
    assert (calibrated[0, 0] < ROWS[0, 0]) == (temperature > 1)


def test_serving_matches_the_training_implementation() -> None:
    training_calibrate = pytest.importorskip("training.calibrate", reason="needs the [train] extra (scipy)")
    rng = np.random.default_rng(0)
    rows = rng.dirichlet(np.ones(4) * 0.3, size=200)
    for temperature in (0.3, 1.0, 2.4):
        np.testing.assert_allclose(
            apply_temperature(rows, temperature), training_calibrate.apply_temperature(rows, temperature), atol=1e-12
        )


def test_confident_answer_above_the_threshold_is_accepted() -> None:
    referral = refer(0.95, Calibration(1.2, 0.9, 0.995))
    assert referral.refer_to_human is False and referral.reason is None


def test_answer_below_the_threshold_is_referred_with_the_numbers() -> None:
    referral = refer(0.81, Calibration(1.2, 0.9, 0.995))
    assert referral.refer_to_human is True
    assert "0.810" in referral.reason and "0.900" in referral.reason and "99.5%" in referral.reason


def test_without_calibration_every_case_is_referred() -> None:
    referral = refer(0.999, Calibration.from_card(None))
    assert referral.refer_to_human is True and referral.reason == NO_THRESHOLD_REASON


def test_threshold_above_one_refers_every_case() -> None:
    referral = refer(1.0, Calibration(1.0, float(np.nextafter(1.0, 2.0))))
    assert referral.refer_to_human is True and "no confidence threshold" in referral.reason


def test_quality_warnings_refer_a_confident_answer() -> None:
    referral = refer(0.99, Calibration(1.0, 0.9), ["out_of_focus", "under_exposed"])
    assert referral.refer_to_human is True
    assert referral.reason == "image quality warnings: out_of_focus, under_exposed"


def test_card_block_as_training_writes_it_is_read() -> None:
    block = CardCalibration.model_validate(CALIBRATION)
    assert Calibration.from_card(block) == Calibration(1.5, 0.9, 0.995)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"temperature": 0}, "calibration.temperature"),
        ({"temperature": "nan"}, "calibration.temperature"),
        ({"refer_threshold": 1.5}, "calibration.refer_threshold"),
        ({"refer_threshold": None}, "calibration.refer_threshold"),
    ],
)
def test_a_broken_calibration_block_stops_start_up(tiny_model: Path, change: dict, words: str) -> None:
    write_card(tiny_model, calibration={**CALIBRATION, **change})
    with pytest.raises(ModelLoadError, match=words):
        load_classifier(tiny_model, tiny_model.with_suffix(".json"), threads=1)


def test_card_without_calibration_loads(tiny_model: Path) -> None:
    classifier = load_classifier(tiny_model, tiny_model.with_suffix(".json"), threads=1)
    assert classifier.card.calibration is None
