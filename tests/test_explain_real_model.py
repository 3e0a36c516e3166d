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
@pytest.mark.xfail(
    strict=True,
    reason="known limitation of the shipped model (models/README.md): for benign images its evidence lies "
    "in the background, not in the cells (2.6.0: hotter cells than background in none of the benign "
    "images, in 71% of all; on average the cells are hotter). Strict: a model that fixes this makes the "
    "test pass, and this mark must then go.",
)
def test_heatmaps_highlight_cells_more_than_the_corner_and_the_background(data_dir: Path) -> None:
    """On average and in at least 3 images of 4, the heat on the stained cells is above the heat on
    the scale-bar corner and above the heat on the background.

    The heatmap is faithful to the model (its map means are the logits), so a failure here is a
    finding about the model, e.g. a class told apart by the background or the scale bar.
    """
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
            rows.append((folder, heat[stained].mean(), heat[background].mean(), heat[corner].mean()))
    assert len(rows) >= PER_CLASS * len(CLASS_FOLDERS) * 3 // 4
    folders = np.array([row[0] for row in rows])
    cells, background, corner = (np.array([row[i] for row in rows]) for i in (1, 2, 3))
    report = "\n".join(
        f"{folder}: mean heat cells {cells[folders == folder].mean():.3f}, background "
        f"{background[folders == folder].mean():.3f}, corner {corner[folders == folder].mean():.3f}; "
        f"cells hotter than background in {(cells > background)[folders == folder].mean():.0%}, "
        f"than the corner in {(cells > corner)[folders == folder].mean():.0%}"
        for folder in CLASS_FOLDERS
    )
    assert cells.mean() > corner.mean() and cells.mean() > background.mean(), report
    assert (cells > corner).mean() >= 0.75 and (cells > background).mean() >= 0.75, report
