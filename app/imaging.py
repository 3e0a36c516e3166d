"""The single definition of how image bytes become a model input.

Serving calls `decode_image` on every upload; training calls the same function on every
dataset file, so the two cannot drift apart. Bump `PREPROCESSING_VERSION` whenever the
output of `decode_image` changes for any input: the model card records the version the
model was trained with and the service refuses a model trained with another one.

Contract of `decode_image(data)`:
  1. the bytes must be a single-frame JPEG, PNG, TIFF, BMP or WebP image, otherwise
     `UnsupportedImageError`; bytes that claim a format (its signature, or a header Pillow
     reads) but do not decode fully raise `CorruptImageError`; more than `max_pixels` pixels
     raise `ImageTooLargeError`, checked from the header before any pixel is decoded
     (decompression bombs); a shorter side under `MIN_IMAGE_SIDE` pixels raises
     `ImageTooSmallError` (such a thumbnail cannot show a cell at the scale the model reads;
     resizing it up to 224 would only invent pixels);
  2. the EXIF orientation tag is applied;
  3. the mode is converted to 8-bit RGB: transparency is composited over white (a smear's
     background is bright), 16-bit and 32-bit grey is scaled to 0..255 by its bit depth,
     CMYK goes through Pillow's conversion;
  4. a non-square image is centre-cropped to its largest centred square (resizing a
     rectangle to a square would stretch the cells, and cell shape is what the model reads);
  5. the square is resized to 224x224 with Pillow's antialiased bilinear filter. Large JPEGs
     are first decoded at a reduced DCT scale (Pillow's draft mode) to a size still at least
     twice the target, which keeps the antialiasing and saves most of the decode time.
  Returns a C-contiguous uint8 array of shape (224, 224, 3), RGB.

Exceptions:
    ImageDecodeError
      +-- UnsupportedImageError  (not an image we accept: 415)
      +-- CorruptImageError      (truncated or damaged: 400)
      +-- ImageTooLargeError     (too many pixels: 413)
      +-- ImageTooSmallError     (a side under MIN_IMAGE_SIDE pixels: 422)
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PREPROCESSING_VERSION = "1"
IMAGE_SIZE = 224
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "BMP", "WEBP"})
#: file name suffixes of those formats (folders of images are read by them)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
DEFAULT_MAX_PIXELS = 40_000_000  # a 7,000 x 5,700 camera frame; far above any smear photo
# Decoding costs memory in proportion to the pixels (up to about 8 bytes a pixel at the peak, for
# RGBA), and concurrent requests each under every limit add up: eight 6300 x 6300 RGBA PNGs of 170 KB
# sent at once took 2.6 GB. Images of more pixels than this (JPEGs counted at their reduced decoding
# scale) are decoded at most LARGE_DECODES at a time (eight such: +665 MB, was +2.6 GB), while 32 just
# under the threshold, decoded at once, took +353 MB.
LARGE_DECODE_PIXELS = 2_000_000
LARGE_DECODES = 2
_LARGE_DECODES = threading.BoundedSemaphore(LARGE_DECODES)
# In the training images (224 x 224) a lymphocyte spans about 30-60 pixels: an image with a
# shorter side under 32 pixels is an icon or thumbnail, not a field of cells. (A refusal, not a
# change of the output for any accepted input: PREPROCESSING_VERSION stays.)
MIN_IMAGE_SIDE = 32

# We enforce our own pixel limit before decoding; Pillow's own check would only warn.
Image.MAX_IMAGE_PIXELS = None
# Pillow's parsers answer malformed bytes with many exception types besides OSError: fuzzing
# found TypeError and KeyError from damaged TIFF frame headers. Whatever the type, bytes that
# make the parser fail are a client's bad file (400), never a server fault (500).
_PARSE_FAILURE = Exception


class ImageDecodeError(ValueError):
    """Bytes that cannot become a model input; `reason` is a stable machine-readable code."""

    reason = "invalid_image"


class UnsupportedImageError(ImageDecodeError):
    reason = "unsupported_format"


class CorruptImageError(ImageDecodeError):
    reason = "corrupt_image"


class ImageTooLargeError(ImageDecodeError):
    reason = "too_many_pixels"


class ImageTooSmallError(ImageDecodeError):
    reason = "image_too_small"


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to the model's uint8 RGB input of shape (224, 224, 3).

    Args:
        data: the encoded file, as received.
        max_pixels: refuse images whose header declares more pixels than this.
    """
    if not data:
        raise CorruptImageError("the file is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns on odd EXIF and TIFF tags, from opening on; real failures raise, and a
        # warning must not escape as an error where warnings are errors (found by fuzzing).
        warnings.simplefilter("ignore")
        image = _open(data, max_pixels)
        large = image.width * image.height > LARGE_DECODE_PIXELS  # after JPEG's reduced-scale draft
        with _LARGE_DECODES if large else contextlib.nullcontext():
            _load(image)
            try:
                image = _apply_orientation(image)
                rgb = _to_rgb(image)
                return _square_resize(rgb)
            except ImageDecodeError:
                raise
            except Exception as err:  # see _PARSE_FAILURE
                raise CorruptImageError(f"the {image.format or 'image'} data is damaged or truncated: {err}") from err


def claimed_format(data: bytes) -> str | None:
    """The accepted format whose signature the bytes begin with, if any (whether or not they decode)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM") and data[6:10] == b"\x00\x00\x00\x00":  # the header's reserved bytes
        return "BMP"
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        claimed = claimed_format(data)
        if claimed is not None:
            # Pillow no longer recognises e.g. a PNG whose header checksum is wrong; telling the
            # sender to "send PNG" would be wrong, the file is a damaged one.
            raise CorruptImageError(
                f"the file starts like a {claimed} image but its header cannot be read: it is damaged or truncated"
            ) from err
        raise UnsupportedImageError(
            "the file is not a recognised image; send JPEG, PNG, TIFF, BMP or WebP"
        ) from err
    except _PARSE_FAILURE as err:
        raise CorruptImageError(f"the image header is damaged: {err}") from err
    if image.format == "MPO":  # Pillow's name for a JPEG that holds several pictures
        raise UnsupportedImageError(
            f"the JPEG holds {getattr(image, 'n_frames', 'several')} pictures (a multi-picture file, as some "
            "cameras write); send one picture per file"
        )
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedImageError(
            f"{image.format} images are not accepted; send JPEG, PNG, TIFF, BMP or WebP"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImageError(f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image has {width}x{height} = {width * height:,} pixels, "
            f"more than the limit of {max_pixels:,}"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageTooSmallError(
            f"the image is {width}x{height} pixels; its shorter side must be at least {MIN_IMAGE_SIDE} "
            f"(it is centre-cropped to a square and resized to {IMAGE_SIZE}x{IMAGE_SIZE}); send the full "
            "microscope field, not a thumbnail"
        )
    try:
        frames = getattr(image, "n_frames", 1)  # reads every frame header of a TIFF
    except _PARSE_FAILURE as err:
        raise CorruptImageError(f"the {image.format} frame headers are damaged: {err}") from err
    if frames > 1:
        raise UnsupportedImageError(
            f"the image has {frames} frames (animated or multi-page); send one frame per file"
        )
    if image.format == "JPEG":
        # Decode at a reduced DCT scale, keeping at least twice the target size.
        image.draft(image.mode, (2 * IMAGE_SIZE, 2 * IMAGE_SIZE))
    return image


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except _PARSE_FAILURE as err:
        raise CorruptImageError(f"the {image.format} data is damaged or truncated: {err}") from err


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (KeyError, TypeError, ValueError, OSError, SyntaxError):
        # An unreadable EXIF block: the pixels are still fine, keep them as stored.
        return image


# Rows converted at a time where a conversion needs wide copies (alpha over white, 16-bit or float
# grey): a 40-megapixel field then costs its 8-bit result plus a band, not 1.4 GB of float64 copies
# (measured before: 6300 x 6300 16-bit grey PNG, 77 KB sent, server RSS 160 -> 1,439 MB).
_BAND_ROWS = 256


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, or 8-bit grey ("L", made RGB after the resize, which gives the same pixels)."""
    mode = image.mode
    if mode in {"RGB", "L"}:
        return image
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (mode == "P" and "transparency" in image.info):
        return _by_bands(image, "RGB", _over_white)
    if mode.startswith("I;16") or mode in {"I", "F"}:
        return _wide_grey_to_grey(image)
    return image.convert("RGB")


def _row_bands(image: Image.Image):
    """(top, bottom, the image's rows top..bottom) for `_BAND_ROWS` rows at a time."""
    for top in range(0, image.height, _BAND_ROWS):
        bottom = min(top + _BAND_ROWS, image.height)
        yield top, bottom, image.crop((0, top, image.width, bottom))


def _by_bands(image: Image.Image, mode: str, convert) -> Image.Image:
    """`convert` (a pointwise conversion) applied to `_BAND_ROWS` rows at a time."""
    result = Image.new(mode, image.size)
    for top, _, band in _row_bands(image):
        result.paste(convert(band), (0, top))
    return result


def _over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_grey_to_grey(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer or float grey to 8 bits by its bit depth, not by clipping."""
    peaks = []  # per band: the highest value not NaN, and the highest (NaN where any is)
    for _, _, band in _row_bands(image):
        values = np.asarray(band, dtype=np.float64)
        peaks.append((np.nanmax(values), values.max()))
    peaks = np.array(peaks)
    highest = np.nanmax(peaks[:, 0])  # NaN only where every value is
    maximum = peaks[:, 1].max()  # NaN where any value is
    if image.mode == "F" and float(highest) <= 1.0:
        times, over = 255.0, 1.0  # float images in 0..1
    elif image.mode.startswith("I;16") or float(maximum) <= 65535:
        times, over = 1.0, 257.0  # 65535 -> 255
    else:
        times, over = 1.0, 16843009.0  # 2**32 - 1 -> 255
    grey = np.empty((image.height, image.width), dtype=np.uint8)
    for top, bottom, band in _row_bands(image):
        values = np.asarray(band, dtype=np.float64)
        grey[top:bottom] = np.clip(np.nan_to_num(values * times / over), 0, 255).round()
    return Image.fromarray(grey, mode="L")


def _square_resize(image: Image.Image) -> np.ndarray:
    width, height = image.size
    side = min(width, height)
    if width != height:
        left = (width - side) // 2
        top = (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != IMAGE_SIZE:
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    if image.mode == "L":
        image = image.convert("RGB")  # after the resize: the same pixels, a third of the work
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
