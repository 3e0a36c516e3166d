"""The shipped model's heatmaps point at the stained cells, not at the scale bar or the background.

Needs models/dscnet.onnx (committed with its card): where it is missing this fails, never skips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.classifier import load_classifier
from app.explain import explain_image
from app.imaging import decode_image
from app.labels import CLASS_IDS

MODELS = Path(__file__).resolve().parent.parent / "models"
CLASS_FOLDERS = ("Benign", "Early", "Pre", "Pro")
PER_CLASS = 6
CORNER = (slice(224 - 36, 224), slice(224 - 40, 224))  # the scale bar: bottom-right 36x40 px


def masks(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stained (the most strongly coloured purple pixels, darker than the median: the white cells),
    background (the brightest half), and the scale-bar corner; stained and background exclude the corner."""
    rgb = pixels.astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    corner = np.zeros(grey.shape, dtype=bool)
    corner[CORNER] = True
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    chroma = np.maximum(red, blue) - green  # purple: green is the lowest channel
    purple = (green < red) & (green < blue)
    stained = purple & (chroma > max(30.0, np.percentile(chroma, 92))) & (grey < np.median(grey)) & ~corner
    background = (grey > np.percentile(grey, 50)) & ~corner
    return stained, background, corner


@pytest.mark.slow
def test_heatmaps_highlight_cells_more_than_the_corner_and_the_background(data_dir: Path) -> None:
    model = MODELS / "dscnet.onnx"
    if not model.is_file():
        pytest.fail(f"{model} is missing: the real model is committed with its card; this test needs it")
    classifier = load_classifier(model, model.with_suffix(".json"), threads=1)
    assert classifier.has_activation, "the shipped model must export the class_activation output"
    rows = []
    for folder in CLASS_FOLDERS:
        files = sorted((data_dir / folder).glob("*.jpg"))
        for path in files[:: max(1, len(files) // PER_CLASS)][:PER_CLASS]:
            pixels = decode_image(path.read_bytes())
            probabilities, activation = classifier.predict_with_activation(pixels[None])
            top = int(np.argmax(probabilities[0]))
            heat = explain_image(pixels, activation[0], top, CLASS_IDS[top]).heat
            stained, background, corner = masks(pixels)
            if stained.sum() < 200:  # too few stained pixels to measure (rare): not a fair test image
                continue
            rows.append((path.name, heat[stained].mean(), heat[background].mean(), heat[corner].mean()))
    assert len(rows) >= PER_CLASS * len(CLASS_FOLDERS) * 3 // 4
    names, cells, background, corner = zip(*rows, strict=True)
    cells, background, corner = np.array(cells), np.array(background), np.array(corner)
    table = "\n".join(f"{n}: cells {c:.3f} background {b:.3f} corner {k:.3f}" for n, c, b, k in rows)
    assert cells.mean() > 2 * corner.mean() and cells.mean() > 2 * background.mean(), table
    assert (cells > corner).mean() >= 0.9 and (cells > background).mean() >= 0.9, table
