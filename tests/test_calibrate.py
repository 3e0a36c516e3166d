"""Temperature scaling and the refer-to-a-human threshold."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy", reason="the [train] extra is not installed")  # CI installs it

from training.calibrate import apply_temperature, fit_temperature, refer_threshold, selective_report  # noqa: E402


def test_temperature_one_is_identity_and_higher_flattens():
    p = np.array([[0.7, 0.2, 0.05, 0.05]])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    flatter = apply_temperature(p, 3.0)
    assert flatter[0, 0] < 0.7 and flatter.argmax() == 0
    np.testing.assert_allclose(flatter.sum(), 1.0)


def _confident(n: int, accuracy: float, confidence: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    predicted = np.where(rng.random(n) < accuracy, labels, (labels + 1) % 4)
    p = np.full((n, 4), (1 - confidence) / 3)
    p[np.arange(n), predicted] = confidence
    return labels, p


def test_overconfident_model_gets_a_temperature_above_one():
    labels, p = _confident(2000, accuracy=0.8, confidence=0.99)
    assert fit_temperature(labels, p) > 1.5


def test_underconfident_model_gets_a_temperature_below_one():
    labels, p = _confident(2000, accuracy=0.99, confidence=0.6)
    assert fit_temperature(labels, p) < 0.7


def test_threshold_is_the_lowest_that_keeps_accepted_cases_accurate():
    labels = np.array([0, 1, 2, 3])
    p = np.array([[0.99, 0.01, 0, 0], [0, 0.98, 0.02, 0], [0.9, 0, 0.1, 0], [0, 0, 0.4, 0.6]])  # third is wrong
    threshold = refer_threshold(labels, p, target=0.995)
    assert threshold == pytest.approx(0.98)
    report = selective_report(labels, p, threshold)
    assert report["coverage"] == 0.5 and report["selective_accuracy"] == 1.0 and report["referred"] == 2


def test_ties_are_accepted_or_referred_together():
    labels = np.array([0, 1])
    p = np.array([[0.9, 0.1, 0, 0], [0.9, 0.1, 0, 0]])  # same confidence, second wrong
    assert refer_threshold(labels, p, target=0.995) > 1.0


def test_refers_everything_when_no_threshold_reaches_the_target():
    labels = np.array([1, 1])
    p = np.array([[0.9, 0.1, 0, 0], [0.8, 0.2, 0, 0]])
    threshold = refer_threshold(labels, p)
    assert threshold > 1.0
    assert selective_report(labels, p, threshold)["coverage"] == 0.0
