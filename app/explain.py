"""Class activation heatmaps: where in the image the model found evidence for a class.

    class_activation (h, w, 4) from the ONNX model -> evidence for class c -> keep the positive
      part, divide by its maximum -> bilinear upsampling to 224x224 -> colour map -> blended over
      the decoded 224x224 input -> PNG

The model's "class_activation" output holds, for every place and class, that place's
contribution to the class's logit (the map's mean plus the logit bias is the logit). Softmax
ignores what raises all four logits alike, so the evidence for class c at a place is its
map minus the mean of the four maps there: what pushes c above the average class. Only the
positive part is drawn, scaled by its maximum in this image, like Grad-CAM: colours compare
places within one image, not across images. Map pixel (i, j) covers input pixels 4i..4i+3,
4j..4j+3; Pillow's bilinear resize keeps those centres aligned.

The colour map is jet-like (dark blue, blue, green, yellow, red), and the overlay's opacity
grows with the evidence, so places without evidence show the smear unchanged. Everything is
deterministic: the same image bytes give the same PNG bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.imaging import IMAGE_SIZE

# (position, (r, g, b)): the colour map's anchors, linearly interpolated between.
COLORMAP_ANCHORS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.00, (30, 30, 120)),
    (0.25, (30, 140, 230)),
    (0.50, (40, 200, 120)),
    (0.75, (250, 200, 30)),
    (1.00, (220, 30, 30)),
)
MAX_OPACITY = 0.6
# zlib level 1: a 224x224 overlay in ~20 ms instead of ~80 ms at level 6, for ~15% more bytes.
PNG_COMPRESS_LEVEL = 1


class ExplanationUnavailableError(RuntimeError):
    """The model being served has no "class_activation" output (exported before explanations)."""

    reason = "explanation_unavailable"


@dataclass(frozen=True)
class Explanation:
    class_id: str
    #: (224, 224) float32 evidence in [0, 1], what the colours show
    heat: np.ndarray
    png: bytes


def class_evidence(activation: np.ndarray, class_index: int) -> np.ndarray:
    """Evidence for one class at each place: its map minus the mean of all the class maps.

    Args:
        activation: (h, w, classes) class activation maps of one image.
        class_index: the class, in the model's output order.
    """
    maps = activation.astype(np.float64)
    return maps[..., class_index] - maps.mean(axis=-1)


def heat_map(evidence: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """The positive evidence scaled to [0, 1] by its maximum, upsampled bilinearly to size x size."""
    positive = np.maximum(evidence, 0.0)
    peak = positive.max()
    scaled = (positive / peak if peak > 0 else positive).astype(np.float32)
    upsampled = Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(upsampled, dtype=np.float32), 0.0, 1.0)


def _colour_table() -> np.ndarray:
    """The colour map sampled at 256 levels: (256, 3) uint8."""
    levels = np.linspace(0.0, 1.0, 256)
    positions = [p for p, _ in COLORMAP_ANCHORS]
    channels = [np.interp(levels, positions, [colour[c] for _, colour in COLORMAP_ANCHORS]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


_COLOUR_TABLE = _colour_table()


def colorize(heat: np.ndarray) -> np.ndarray:
    """Heat in [0, 1] to uint8 RGB through the jet-like anchors (256 levels)."""
    return _COLOUR_TABLE[np.rint(np.clip(heat, 0.0, 1.0) * 255).astype(np.intp)]


def blend(pixels: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heat's colours over the image, opacity MAX_OPACITY * heat."""
    alpha = (MAX_OPACITY * heat)[..., None]
    mixed = (1.0 - alpha) * pixels.astype(np.float32) + alpha * colorize(heat).astype(np.float32)
    return np.rint(mixed).clip(0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def explain_image(pixels: np.ndarray, activation: np.ndarray, class_index: int, class_id: str) -> Explanation:
    """The heatmap overlay for one image and one class.

    Args:
        pixels: the decoded uint8 (224, 224, 3) input the model saw.
        activation: its (h, w, classes) class activation maps.
        class_index: the class to explain, in output order.
        class_id: that class's id, kept with the result.
    """
    heat = heat_map(class_evidence(activation, class_index), size=pixels.shape[0])
    return Explanation(class_id=class_id, heat=heat, png=encode_png(blend(pixels, heat)))
