"""Export a trained Keras DSCNet to ONNX and prove the two agree on real images."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from training.familiarity import FeatureStatistics, with_unfamiliarity
from training.model import (  # noqa: F401  (SmearFilter: registers the layer)
    SmearFilter,
    ensemble_members,
    is_dscnet,
    load_keras_model,
    with_heatmaps,
)

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-5  # probabilities, absolute
# Heatmap maps and the unfamiliarity, relative to their largest magnitude: onnxruntime's bilinear
# Resize differs from TensorFlow's by a few 1e-4 at map edges, invisible in a heatmap, irrelevant to
# probabilities; the unfamiliarity's float32 sums differed by at most 0.018 exporting 2.4.1 (values
# in the hundreds).
MAP_TOLERANCE = 1e-3
PARITY_BATCH_SIZES = (1, 7, 32)


class ExportParityError(RuntimeError):
    """The ONNX model's outputs differ from the Keras model's beyond the tolerance."""


def export_onnx(model: keras.Model, onnx_path: Path, check_images: np.ndarray, opset: int = OPSET,
                tolerance: float = PARITY_TOLERANCE, familiarity: FeatureStatistics | None = None) -> dict:
    """Convert with tf2onnx (input "image": float32 NHWC, dynamic batch) and verify parity.

    A DSCNet's ONNX model has two outputs: "probabilities" and "class_activation" (the
    heatmap maps of `with_class_activation`), and with `familiarity` (a single DSCNet's training
    feature statistics, `training.familiarity`) a third, "unfamiliarity"; serving asks only for
    what it needs. The comparison architectures export "probabilities" alone.

    Args:
        model: the trained Keras model.
        onnx_path: where to write the .onnx file.
        check_images: uint8 or float NHWC images (at least the largest parity batch) used to
            compare Keras and ONNX outputs at several batch sizes.
        opset: ONNX opset (tf2onnx 1.17 accepts at most 18).
        tolerance: largest absolute difference of probabilities allowed (the shipped model: 1e-5).

    Returns the parity record: max absolute difference per batch size.
    """
    size = model.input_shape[1]
    signature = [tf.TensorSpec((None, size, size, 3), tf.float32, name="image")]
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    if familiarity is not None and not is_dscnet(model):
        raise ValueError("the unfamiliarity output needs a single DSCNet (its skip_features)")
    if is_dscnet(model) or ensemble_members(model):  # DSCNet or an ensemble of them: add the heatmap output
        exported = with_heatmaps(model)
        model = exported if familiarity is None else with_unfamiliarity(model, exported, familiarity)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(onnx_path))
    parity = verify_parity(model, onnx_path, check_images, tolerance)
    log.info("exported %s (opset %d); max |keras - onnx| %s", onnx_path, opset, parity)
    return {"opset": opset, "tolerance": tolerance, "max_abs_difference": parity}


def verify_parity(model: keras.Model, onnx_path: Path, images: np.ndarray,
                  tolerance: float = PARITY_TOLERANCE) -> dict[str, float]:
    """Run both models on the same images at several batch sizes; raise beyond the tolerance."""
    if len(images) < max(PARITY_BATCH_SIZES):
        raise ValueError(f"parity needs at least {max(PARITY_BATCH_SIZES)} images, got {len(images)}")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [output.name for output in session.get_outputs()]
    keras_call = tf.function(lambda x: model(x, training=False))
    record: dict[str, float] = {}
    for batch in PARITY_BATCH_SIZES:
        x = images[:batch].astype(np.float32)
        expected = keras_call(tf.constant(x))
        expected = expected if isinstance(expected, (list, tuple)) else [expected]
        actual = session.run(None, {input_name: x})
        if len(actual) != len(expected):
            raise ExportParityError(f"ONNX has outputs {output_names}; Keras has {len(expected)}")
        for name, want, got in zip(output_names, expected, actual):
            want = np.asarray(want)
            difference = float(np.max(np.abs(want - got)))
            record[f"{name}@{batch}"] = difference
            limit = tolerance if name == "probabilities" else MAP_TOLERANCE * float(np.abs(want).max())
            if not difference <= limit:
                raise ExportParityError(f"ONNX and Keras {name} differ by {difference:.3g} at batch {batch} "
                                        f"(tolerance {limit:.3g})")
    return record
