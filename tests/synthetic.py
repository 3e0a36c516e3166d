"""Images and dataset folders made in code, for the tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from helpers_images import encode  # one encoder for every test image; re-exported for test_imaging


def gradient(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
                    axis=-1).astype(np.uint8)


def disks(centres: list[tuple[int, int]], colour: tuple[int, int, int] = (0, 0, 0), radius: int = 40) -> np.ndarray:
    """224x224 white fields, each with one disk of `colour` centred at its (row, column): cells whose size is known."""
    rows, cols = np.indices((224, 224))
    images = np.full((len(centres), 224, 224, 3), 255, dtype=np.uint8)
    for image, (row, col) in zip(images, centres):
        image[(rows - row) ** 2 + (cols - col) ** 2 < radius ** 2] = colour
    return images


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header is rewritten to declare width x height (a decompression bomb)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


FOLDERS = {"Benign": "WBC-Benign", "Early": "WBC-Malignant-Early", "Pre": "WBC-Malignant-Pre",
           "Pro": "WBC-Malignant-Pro"}


def png_bytes(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels), "PNG")


def make_dataset(root: Path, per_class: int = 30, seed: int = 0) -> Path:
    """Class folders named as in the real dataset, with numbered noise images (no two alike)."""
    rng = np.random.default_rng(seed)
    for folder, prefix in FOLDERS.items():
        (root / folder).mkdir(parents=True)
        for number in range(1, per_class + 1):
            pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
            (root / folder / f"{prefix}-{number:03d}.png").write_bytes(png_bytes(pixels))
    return root


def smear_like(n: int, seed: int = 0) -> np.ndarray:
    """Bright background with darker purple discs, like cells on a smear."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 224, 224, 3), (235, 225, 240), dtype=np.float32)
    y, x = np.mgrid[0:224, 0:224]
    for image in images:
        for _ in range(6):
            cy, cx, r = rng.integers(20, 200), rng.integers(20, 200), rng.integers(8, 25)
            image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(60, 160, 3)
    return np.clip(images + rng.normal(0, 3, images.shape), 0, 255).astype(np.uint8)
