"""Synthetic images made in code, one per decoding case the service must handle."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (256, 256), fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", size, colour), fmt)


def png_with_alpha() -> bytes:
    rgba = np.zeros((200, 300, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.linspace(0, 255, 300, dtype=np.uint8)[None, :]
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def png_16bit_grey() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 256, dtype=np.uint16), (256, 1))
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    return encode(image, "PNG")


def grey_jpeg() -> bytes:
    return encode(Image.new("L", (240, 320), 90), "JPEG", quality=90)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (256, 256), (0, 255, 255, 0)), "JPEG", quality=90)


def exif_rotated_jpeg() -> bytes:
    """A 300x200 frame whose EXIF says 'rotate 90 degrees' (orientation 6)."""
    image = Image.new("RGB", (300, 200), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes(), quality=90)


def tiff() -> bytes:
    return encode(Image.new("RGB", (256, 256), (0, 255, 0)), "TIFF")


def bmp() -> bytes:
    return encode(Image.new("RGB", (230, 230), (255, 0, 0)), "BMP")


def gif() -> bytes:
    return encode(Image.new("RGB", (64, 64), (255, 0, 0)), "GIF")


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise, "RGB"), "JPEG", quality=95)
    return data[: len(data) // 2]


def text_file() -> bytes:
    return b"patient notes, not an image\n" * 10


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few dozen bytes whose PNG header declares width x height RGB pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
