"""Images made in code for the quality checks: a stained smear and the ways a photo of one goes wrong."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

SIZE = 224


def smear(seed: int = 0) -> np.ndarray:
    """A stained-smear look-alike: cream background, pink-grey red cells, purple-nucleated white cells."""
    rng = np.random.default_rng(seed)
    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    image[:] = (236, 232, 238)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    for _ in range(40):  # red cells: discs with a paler centre
        cy, cx, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(9, 13)
        d2 = (y - cy) ** 2 + (x - cx) ** 2
        image[d2 < r * r] = (200, 170, 195)
        image[d2 < (0.45 * r) ** 2] = (220, 200, 215)
    for _ in range(3):  # white cells: large purple nuclei
        cy, cx, r = rng.uniform(30, SIZE - 30), rng.uniform(30, SIZE - 30), rng.uniform(14, 20)
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = (110, 60, 160)
    image += rng.normal(0, 2.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def blurred(pixels: np.ndarray, radius: float = 2.0) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))


def scaled(pixels: np.ndarray, gain: float, offset: float = 0.0) -> np.ndarray:
    """Exposure changes: grey levels times `gain` plus `offset`, clipped like a camera sensor."""
    return np.clip(pixels.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def greyscale(pixels: np.ndarray) -> np.ndarray:
    """The green channel in all three: a grey image sent as RGB."""
    return np.repeat(pixels[..., 1:2], 3, axis=-1)


def plain(colour: tuple[int, int, int]) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), colour, dtype=np.uint8)


def landscape(seed: int = 0) -> np.ndarray:
    """A photo-like scene: blue sky, green hills with texture, a brown tree trunk."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    sky = y < 90 + 15 * np.sin(x / 30)
    image[sky] = np.stack([90 + 0.5 * y[sky], 150 + 0.5 * y[sky], np.full(sky.sum(), 235.0)], axis=-1)
    image[~sky] = (70, 140, 50)
    trunk = (np.abs(x - 150) < 8) & (y > 80)
    image[trunk] = (110, 75, 40)
    image += rng.normal(0, 12, image.shape) * (~sky)[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)
