"""Temperature scaling and the "refer to a human" threshold, both fitted on the validation split.

Serving applies them as `calibrated = softmax(log(p) / T)` and flags a result for review when
the calibrated top probability is below the threshold. The threshold is the lowest one at
which the validation cases it accepts are at least `target` accurate.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

TARGET_ACCEPTED_ACCURACY = 0.995
#: how the card's calibration block says it was made (`fit_calibration`)
CALIBRATION_METHOD = "temperature scaling of the logits, fitted on the validation split (NLL)"
_EPS = 1e-12


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the same as dividing the logits by T."""
    logits = np.log(np.clip(probabilities, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood."""

    def nll(log_t: float) -> float:
        calibrated = apply_temperature(probabilities, float(np.exp(log_t)))
        return float(-np.log(np.clip(calibrated[np.arange(len(labels)), labels], _EPS, 1.0)).mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def refer_threshold(labels: np.ndarray, probabilities: np.ndarray, target: float = TARGET_ACCEPTED_ACCURACY) -> float:
    """Lowest confidence threshold whose accepted cases (confidence >= threshold) reach `target` accuracy.

    Candidates are the observed confidences; if no threshold reaches the target, 1.0 + tiny
    (refer everything) is returned, so the service never claims accuracy it did not show.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    order = np.argsort(-confidence)
    accepted_correct = np.cumsum(correct[order])
    accepted_accuracy = accepted_correct / np.arange(1, len(order) + 1)
    sorted_confidence = confidence[order]
    best = None
    for k in range(len(order)):
        # Accepting the top k+1 cases means threshold = their lowest confidence; ties must be whole.
        if k + 1 < len(order) and sorted_confidence[k + 1] == sorted_confidence[k]:
            continue
        if accepted_accuracy[k] >= target:
            best = float(sorted_confidence[k])
    return best if best is not None else float(np.nextafter(1.0, 2.0))


def fit_calibration(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """The temperature, then the referral threshold on the probabilities it calibrates: what `dscnet
    evaluate` fits on the validation split and writes to the card."""
    temperature = fit_temperature(labels, probabilities)
    return temperature, refer_threshold(labels, apply_temperature(probabilities, temperature))


def selective_report(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Coverage (share accepted) and accuracy on the accepted and on the referred cases."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    accepted = confidence >= threshold
    return {
        "threshold": threshold,
        "coverage": float(accepted.mean()),
        "accepted": int(accepted.sum()),
        "referred": int((~accepted).sum()),
        "selective_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "referred_accuracy": float(correct[~accepted].mean()) if (~accepted).any() else None,
    }
