"""The floor to beat: logistic regression on colour histograms, scale-bar corner excluded.

On this dataset each class was photographed in its own sessions, so colour alone separates
the classes well on the original images, and fails as soon as the stain or light changes.
A model that reads morphology must beat it on the test split and stay up under the shifts.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.shifts import corner_mask

BINS = 32


def histogram_features(images: np.ndarray, colour: bool = True) -> np.ndarray:
    """Normalised per-channel (or grey-level) intensity histograms of the non-corner pixels."""
    pixels = images[:, corner_mask(*images.shape[1:3])].astype(np.float32)  # (N, P, 3)
    if not colour:
        pixels = pixels.mean(axis=2, keepdims=True)
    edges = np.linspace(0, 256, BINS + 1)
    features = [
        np.stack([np.histogram(image[:, c], bins=edges)[0] for c in range(pixels.shape[2])]).ravel()
        for image in pixels
    ]
    return np.asarray(features, dtype=np.float32) / pixels.shape[1]


class HistogramBaseline:
    """Logistic regression on colour (or grey) histograms; `predict_proba` takes uint8 NHWC images."""

    def __init__(self, colour: bool = True, seed: int = 0) -> None:
        self.colour = colour
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0, random_state=seed))

    def fit(self, images: np.ndarray, labels: np.ndarray) -> "HistogramBaseline":
        self.pipeline.fit(histogram_features(images, self.colour), labels)
        return self

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(histogram_features(images, self.colour))
