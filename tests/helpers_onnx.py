"""A tiny stand-in for DSCNet, built in code: same input/output contract, four parameters' worth of logic.

image [N,224,224,3] float 0..255 -> mean over H and W -> [N,3] -> MatMul W[3,4] + b -> Softmax
  -> "probabilities" [N,4]
image -> 4x4 average pooling -> [N,56,56,3] -> MatMul W -> "class_activation" [N,56,56,4]

As in the real model, the mean of the class activation map plus the bias is the logit (the
probabilities are computed from the plain mean, which keeps them identical at any batch size). The
weights make the label readable from the colour: red -> benign, green -> early_pre_b,
blue -> pre_b, black -> pro_b, so tests can assert labels, and the heatmap of a class
lights up where the image has that class's colour.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.imaging import IMAGE_SIZE, PREPROCESSING_VERSION
from app.labels import CLASS_IDS

OPSET = 17
SCALE = 8.0 / 255.0  # a pure colour gives a logit gap of 8: a confident but finite softmax
POOL = 4  # the class activation map's stride, as in DSCNet (224 -> 56)

#: A card's "calibration" block as training writes it (training.card.calibration_for_card).
CALIBRATION = {
    "method": "temperature scaling (validation NLL)",
    "temperature": 1.5,
    "refer_threshold": 0.9,
    "refer_rule": "refer_to_human when the calibrated top probability is below refer_threshold",
    "target_accepted_accuracy": 0.995,
    "ece_test_before": 0.05,
    "ece_test_after": 0.01,
    "test_coverage": 0.9,
    "test_selective_accuracy": 0.996,
}


#: A card's "familiarity" block for the tiny model's "unfamiliarity" output (training.familiarity):
#: grey and dataset-like images stay under it, a pure colour or black goes over.
FAMILIARITY = {"output": "unfamiliarity", "threshold": 2.5, "validation_quantile": 0.99}


def build_tiny_model(
    path: Path,
    *,
    input_name: str = "image",
    output_name: str = "probabilities",
    image_size: int = IMAGE_SIZE,
    with_activation: bool = True,
    with_unfamiliarity: bool = False,
) -> Path:
    """Write the tiny ONNX model to `path`; the names and size can be changed to test refusals.

    Args:
        with_activation: False leaves out the "class_activation" output, like models exported
            before explanations existed.
        with_unfamiliarity: add an "unfamiliarity" output [N] (training.familiarity's place): the
            squared distance of the image's mean colour from mid-grey over 10,000 (a grey image 0,
            a smear's colours about 1.4, a pure colour or black 4.9); pair it with FAMILIARITY.
    """
    weights = np.zeros((3, len(CLASS_IDS)), dtype=np.float32)
    weights[0, 0] = weights[1, 1] = weights[2, 2] = SCALE
    bias = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)  # all-dark images lean to pro_b
    side = image_size // POOL
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output_name], axis=-1),
    ]
    if with_activation:
        nodes += [
            helper.make_node("Transpose", [input_name], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
            helper.make_node("Transpose", ["pooled"], ["pooled_nhwc"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", ["pooled_nhwc", "weights"], ["class_activation"]),
        ]
    if with_unfamiliarity:
        nodes += [
            helper.make_node("Sub", ["mean", "grey"], ["off_grey"]),
            helper.make_node("ReduceSumSquare", ["off_grey"], ["off_grey_squared"], axes=[1], keepdims=0),
            helper.make_node("Mul", ["off_grey_squared", "per_hundred"], ["unfamiliarity"]),
        ]
    graph = helper.make_graph(
        nodes=nodes,
        name="tiny_dscnet",
        inputs=[helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", image_size, image_size, 3])],
        outputs=[helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", len(CLASS_IDS)])]
        + ([helper.make_tensor_value_info("class_activation", TensorProto.FLOAT, ["N", side, side, len(CLASS_IDS)])]
           if with_activation else [])
        + ([helper.make_tensor_value_info("unfamiliarity", TensorProto.FLOAT, ["N"])] if with_unfamiliarity else []),
        initializer=[numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")]
        + ([numpy_helper.from_array(np.full(3, 127.5, np.float32), "grey"),
            numpy_helper.from_array(np.array(1e-4, np.float32), "per_hundred")] if with_unfamiliarity else []),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dscnet-tests")
    model.ir_version = 9  # what onnxruntime >= 1.16 reads
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def card_for(model_path: Path, **overrides: Any) -> dict[str, Any]:
    """A model card matching the file at `model_path`, with `overrides` applied on top."""
    card: dict[str, Any] = {
        "name": "dscnet",
        "version": "0.0.1-test",
        "file": model_path.name,
        "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "classes": list(CLASS_IDS),
        "input": {"name": "image", "shape": [None, IMAGE_SIZE, IMAGE_SIZE, 3], "dtype": "float32",
                  "layout": "NHWC", "color": "RGB", "range": [0, 255]},
        "output": {"name": "probabilities", "shape": [None, len(CLASS_IDS)]},
        "preprocessing": {"version": PREPROCESSING_VERSION, "function": "app.imaging.decode_image"},
        "opset": OPSET,
        "intended_use": "tests only",
        "metrics": {"accuracy": None},
    }
    card.update(overrides)
    return card


def write_card(model_path: Path, **overrides: Any) -> Path:
    """Write the card next to the model (same name, .json) and return its path."""
    card_path = model_path.with_suffix(".json")
    card_path.write_text(json.dumps(card_for(model_path, **overrides), indent=2))
    return card_path
