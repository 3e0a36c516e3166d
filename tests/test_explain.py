"""Heatmaps from the class activation output: the arithmetic, the overlay, determinism (tiny model)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.classifier import ModelOutputError, load_classifier
from app.explain import COLORMAP_ANCHORS, blend, class_evidence, colorize, explain_image, heat_map
from app.labels import CLASS_IDS
from helpers_onnx import build_tiny_model, write_card


def red_corner_image() -> np.ndarray:
    """Black (no evidence for any class in the tiny model), with a red 64x64 square at the top left."""
    pixels = np.zeros((224, 224, 3), dtype=np.uint8)
    pixels[:64, :64] = (230, 20, 20)
    return pixels


def test_evidence_is_the_class_map_minus_the_mean_map() -> None:
    activation = np.zeros((2, 2, 4), dtype=np.float32)
    activation[0, 0] = (4, 0, 0, 0)
    activation[1, 1] = (1, 1, 1, 1)  # raises every class alike: no evidence for any
    evidence = class_evidence(activation, 0)
    np.testing.assert_allclose(evidence, [[3, 0], [0, 0]])


def test_heat_is_in_0_1_peaks_where_the_evidence_does_and_ignores_negative_evidence() -> None:
    evidence = np.full((56, 56), -2.0)
    evidence[10:14, 40:44] = 5.0
    heat = heat_map(evidence)
    assert heat.shape == (224, 224) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert 40 <= row < 56 and 160 <= col < 176  # map pixel (i, j) covers input pixels 4i..4i+3
    assert heat[:, :100].max() == 0.0


def test_no_positive_evidence_gives_a_blank_heat() -> None:
    assert heat_map(np.full((56, 56), -1.0)).max() == 0.0


def test_colour_map_ends_at_its_anchors() -> None:
    colours = colorize(np.array([[0.0, 1.0]], dtype=np.float32))
    assert tuple(colours[0, 0]) == COLORMAP_ANCHORS[0][1]
    assert tuple(colours[0, 1]) == COLORMAP_ANCHORS[-1][1]


def test_no_heat_leaves_the_image_unchanged() -> None:
    pixels = red_corner_image()
    np.testing.assert_array_equal(blend(pixels, np.zeros((224, 224), dtype=np.float32)), pixels)


def test_tiny_model_heatmap_lights_up_the_class_colour(tiny_model: Path) -> None:
    classifier = load_classifier(tiny_model, tiny_model.with_suffix(".json"), threads=1)
    assert classifier.has_activation
    pixels = red_corner_image()
    probabilities, activation = classifier.predict_with_activation(pixels[None])
    assert activation.shape == (1, 56, 56, 4)
    np.testing.assert_allclose(probabilities, classifier.predict_batch(pixels[None]), atol=1e-6)
    result = explain_image(pixels, activation[0], CLASS_IDS.index("benign"), "benign")
    assert result.heat[:60, :60].mean() > 0.9 and result.heat[80:, 80:].max() == 0.0
    overlay = np.asarray(Image.open(io.BytesIO(result.png)))
    assert overlay.shape == (224, 224, 3)
    np.testing.assert_array_equal(overlay[100:, 100:], pixels[100:, 100:])  # no evidence: the input shows


def test_the_same_input_gives_the_same_png(tiny_model: Path) -> None:
    classifier = load_classifier(tiny_model, tiny_model.with_suffix(".json"), threads=1)
    pixels = red_corner_image()
    first = explain_image(pixels, classifier.predict_with_activation(pixels[None])[1][0], 0, "benign").png
    second = explain_image(pixels, classifier.predict_with_activation(pixels[None])[1][0], 0, "benign").png
    assert first == second and first.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_model_without_the_activation_output_cannot_explain(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "dscnet.onnx", with_activation=False)
    write_card(model)
    classifier = load_classifier(model, model.with_suffix(".json"), threads=1)
    assert not classifier.has_activation
    with pytest.raises(ModelOutputError, match="class_activation"):
        classifier.predict_with_activation(red_corner_image()[None])
