"""How unlike the training images an image is, to the model's own eyes: an "unfamiliarity" output.

The classifier reads the concatenated block features (`skip_features`, before dropout). Fitted
on the training split: each class's mean feature vector and one covariance shared by the classes
(shrunk towards its mean variance, so it stays invertible with fewer images than features). An
image's unfamiliarity is its smallest squared Mahalanobis distance to a class mean (Lee et al.
2018, "A simple unified framework for detecting out-of-distribution samples"). The threshold is
a quantile of the validation split's unfamiliarity: images of sessions the model never saw, so
at the 0.99 quantile one such image in a hundred is flagged, and an image beyond it is one the
model has little ground to read. Serving refers those to a person (`app.calibration.refer`).

It is computed inside the exported graph, from fixed constants: a `FeatureDistance` layer,
no weights trained. Measured on 2.4.0 before this existed (a scratch script, the test split):
flagged 1.2% of the test images as they are, 26% in fields twice as wide as the dataset's, 82% at
2.5x and 96% at 3x (where 2.4.0 reads 66% and 55% right, most wrong answers confident), every
grey and every pre-segmented image.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

from training.model import predict_probabilities

FEATURES_LAYER = "skip_features"
OUTPUT_NAME = "unfamiliarity"
VALIDATION_QUANTILE = 0.99
SHRINKAGE = 1e-3  # of the mean variance, added to the covariance's diagonal


@dataclass(frozen=True)
class FeatureStatistics:
    """Class means (C, D) and the shared precision matrix (D, D) of the training features."""

    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, classes: int) -> FeatureStatistics:
        features = np.asarray(features, dtype=np.float64)
        missing = [c for c in range(classes) if not np.any(labels == c)]
        if missing:
            raise ValueError(f"no training images of classes {missing}: cannot fit their feature means")
        means = np.stack([features[labels == c].mean(axis=0) for c in range(classes)])
        centred = features - means[labels]
        covariance = centred.T @ centred / len(features)
        covariance += SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        return cls(means.astype(np.float32), np.linalg.inv(covariance).astype(np.float32))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """The smallest squared Mahalanobis distance to a class mean, per row (NumPy reference)."""
        differences = np.asarray(features, np.float64)[:, None, :] - self.means[None].astype(np.float64)
        return np.einsum("ncd,de,nce->nc", differences, self.precision.astype(np.float64), differences).min(axis=1)


@keras.saving.register_keras_serializable(package="dscnet")
class FeatureDistance(layers.Layer):
    """Smallest squared Mahalanobis distance of (N, D) features to fixed class means: (N,)."""

    def __init__(self, means, precision, **kwargs):
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        self.means = np.asarray(means, np.float32)
        self.precision = np.asarray(precision, np.float32)

    def call(self, features):
        differences = ops.expand_dims(features, 1) - ops.convert_to_tensor(self.means)  # (N, C, D)
        projected = ops.matmul(differences, ops.convert_to_tensor(self.precision))  # (N, C, D)
        return ops.min(ops.sum(projected * differences, axis=-1), axis=-1)

    def get_config(self):
        return {**super().get_config(), "means": self.means.tolist(), "precision": self.precision.tolist()}


def feature_model(model: keras.Model) -> keras.Model:
    """The trained DSCNet's input -> its `skip_features` (what the classifier reads)."""
    return keras.Model(model.input, model.get_layer(FEATURES_LAYER).output)


def features_of(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The trained DSCNet's `skip_features` for uint8 or float NHWC images, in inference mode."""
    return predict_probabilities(feature_model(model), images)  # any single-output model, in batches


def with_unfamiliarity(model: keras.Model, outputs: keras.Model, statistics: FeatureStatistics) -> keras.Model:
    """`outputs` (a model built on `model`'s own input tensor, e.g. DSCNet with its heatmap output)
    with an "unfamiliarity" output added, computed from `model`'s features in the same graph (the
    network runs once; a nested call of a feature model would run it twice)."""
    if outputs.inputs[0] is not model.inputs[0]:
        raise ValueError("the outputs must be built on the model's own input tensor")
    distance = FeatureDistance(statistics.means, statistics.precision, name=OUTPUT_NAME)(
        model.get_layer(FEATURES_LAYER).output)
    existing = outputs.outputs
    return keras.Model(model.inputs[0], [*existing, distance], name=outputs.name)


def fit_familiarity(model: keras.Model, train: tuple[np.ndarray, np.ndarray], validation: np.ndarray,
                    classes: int) -> tuple[FeatureStatistics, dict]:
    """Statistics from the training images, the threshold from the validation images' quantile.

    Returns the statistics and the card's `familiarity` block.
    """
    images, labels = train
    statistics = FeatureStatistics.fit(features_of(model, images), labels, classes)
    validation_distance = statistics.distance(features_of(model, validation))
    threshold = float(np.quantile(validation_distance, VALIDATION_QUANTILE))
    block = {
        "output": OUTPUT_NAME,
        "method": "smallest squared Mahalanobis distance of the classifier's features (skip_features) to the "
                  "training classes' means, one shared covariance (Lee et al. 2018)",
        "threshold": threshold,
        "validation_quantile": VALIDATION_QUANTILE,
        "refer_rule": "refer_to_human when unfamiliarity is above threshold",
        "fitted_on": {"train_images": int(len(images)), "validation_images": int(len(validation))},
        "validation_median": float(np.median(validation_distance)),
    }
    return statistics, block
