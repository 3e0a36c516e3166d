"""Acquisition shifts for the robustness audit: pure NumPy/Pillow, deterministic.

Each function takes uint8 NHWC RGB images and returns new uint8 images of the same shape;
none changes its input. They model what differs between labs and days: illumination and
camera response, stain batches (HED jitter, Tellez et al. 2019; Reinhard colour transfer),
compression, focus, and (for information) the loss of colour and of resolution, and another
field of view (`wider_field`: more, smaller cells per image; `narrower_field`: larger ones).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

# The scale-bar corner that the model's filter masks, in rows and columns from the bottom-right.
# The burned-in labels start about 31 pixels from the right and from the bottom edge.
CORNER_HEIGHT = 36
CORNER_WIDTH = 40

# Stain vectors of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001), rows normalised.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = (_RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)).astype(np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)

# Reinhard et al. 2001: RGB -> LMS, and log-LMS -> l-alpha-beta.
LMS_FROM_RGB = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
LAB_FROM_LOGLMS = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]])


def corner_mask(height: int, width: int) -> np.ndarray:
    """Boolean (height, width) array, False in the scale-bar corner."""
    keep = np.ones((height, width), dtype=bool)
    keep[height - CORNER_HEIGHT:, width - CORNER_WIDTH:] = False
    return keep


def fill_corner(images: np.ndarray) -> np.ndarray:
    """Set the scale-bar corner to each image's mean colour (the mean of the rest of the image)."""
    out = images.copy()
    keep = corner_mask(*images.shape[1:3])
    means = images[:, keep].mean(axis=1).round().astype(np.uint8)
    out[:, ~keep] = means[:, None, :]
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def brightness_contrast(images: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    """Scale intensities by `brightness`, then stretch about each image's mean by `contrast`."""
    x = images.astype(np.float32) * brightness
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8((x - mean) * contrast + mean)


def gamma(images: np.ndarray, value: float) -> np.ndarray:
    """Camera response curve: out = 255 * (in / 255) ** value."""
    return _to_uint8(255.0 * (images.astype(np.float32) / 255.0) ** value)


def hed_stain(images: np.ndarray, scale: float = 0.2, shift: float = 0.05, seed: int = 0) -> np.ndarray:
    """Per image, scale each stain's optical density by U(1-scale, 1+scale) and add U(-shift, shift)."""
    rng = np.random.default_rng(seed)
    n = len(images)
    density = -np.log((images.astype(np.float32) + 1.0) / 256.0)
    stains = density @ HED_FROM_RGB
    stains = stains * rng.uniform(1 - scale, 1 + scale, (n, 1, 1, 3)) + rng.uniform(-shift, shift, (n, 1, 1, 3))
    return _to_uint8(256.0 * np.exp(-(stains @ RGB_FROM_HED)) - 1.0)


def rgb_to_lab(images: np.ndarray) -> np.ndarray:
    """Reinhard et al.'s l-alpha-beta (float64) of RGB pixels in 0..255."""
    rgb = np.maximum(images.astype(np.float64) / 255.0, 1.0 / 255.0)
    return np.log10(rgb @ LMS_FROM_RGB.T) @ LAB_FROM_LOGLMS.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """The inverse of `rgb_to_lab`: float RGB, neither rounded nor clipped."""
    lms = 10.0 ** (lab @ np.linalg.inv(LAB_FROM_LOGLMS).T)
    return 255.0 * (lms @ np.linalg.inv(LMS_FROM_RGB).T)


def image_colour_statistics(images: np.ndarray, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Each image's per-channel l-alpha-beta mean and standard deviation, two (N, 3) arrays."""
    means, stds = [], []
    for start in range(0, len(images), chunk):  # float64 l-alpha-beta of every image at once is GBs
        lab = rgb_to_lab(images[start:start + chunk])
        means.append(lab.mean(axis=(1, 2)))
        stds.append(lab.std(axis=(1, 2)))
    return np.concatenate(means), np.concatenate(stds)


def colour_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over images of each image's per-channel l-alpha-beta mean and standard deviation."""
    means, stds = image_colour_statistics(images)
    return means.mean(axis=0), stds.mean(axis=0)


def reinhard_transfer(images: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray) -> np.ndarray:
    """Give every image the target colour statistics in l-alpha-beta space (Reinhard et al. 2001)."""
    lab = rgb_to_lab(images)
    mean = lab.mean(axis=(1, 2), keepdims=True)
    std = lab.std(axis=(1, 2), keepdims=True) + 1e-6
    return _to_uint8(lab_to_rgb((lab - mean) / std * target_std + target_mean))


def _per_image(images: np.ndarray, transform) -> np.ndarray:
    return np.stack([np.asarray(transform(Image.fromarray(image)).convert("RGB")) for image in images])


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Re-compress each image as JPEG at `quality` (Pillow, 4:2:0 subsampling)."""

    def recompress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    return _per_image(images, recompress)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (slight defocus)."""
    return _per_image(images, lambda image: image.filter(ImageFilter.GaussianBlur(sigma)))


def grayscale(images: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601) in all three channels."""
    return _per_image(images, lambda image: image.convert("L"))


def lower_resolution(images: np.ndarray, side: int) -> np.ndarray:
    """Each image as a camera of `side` x `side` pixels would give it, then brought back to the
    input size the way `decode_image` does (antialiased bilinear): fewer pixels per cell."""
    size = images.shape[2], images.shape[1]
    return _per_image(images, lambda image: image.resize((side, side), Image.Resampling.BILINEAR)
                      .resize(size, Image.Resampling.BILINEAR))


def narrower_field(images: np.ndarray, factor: float) -> np.ndarray:
    """The centred square of 1/`factor` of the side, enlarged back (`enlarge_square`): the
    cells `factor` times larger, with the detail of the smaller crop."""
    height, width = images.shape[1:3]
    side = int(round(min(height, width) / factor))
    top, left = (height - side) // 2, (width - side) // 2
    return np.stack([enlarge_square(image, side, top, left) for image in images])


def enlarge_square(image: np.ndarray, side: int, top: int, left: int) -> np.ndarray:
    """The square of `side` pixels at (`top`, `left`) of a uint8 (H, W, 3) image, enlarged back to
    (H, W) with Pillow's antialiased bilinear resize: one image of a field H/`side` times as narrow,
    as `narrower_field` makes the audit's and the training feed's narrow-field share its own."""
    height, width = image.shape[:2]
    square = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return np.asarray(square.resize((width, height), Image.Resampling.BILINEAR))


def widen(tiles: np.ndarray, factor: float, top: int = 0, left: int = 0) -> np.ndarray:
    """One image of a field `factor` times as wide as the dataset's, as `decode_image` gives it.

    `tiles` are n x n uint8 (H, W, 3) images of one smear session (4 for a 2x2 mosaic, 9 for
    3x3), laid out row by row (the first at the top left): a square of `factor` times the side
    (1 to n) is cut from the mosaic at (`top`, `left`) and resized to the input size the way
    `decode_image` resizes a large photograph (Pillow's antialiased bilinear), so each cell
    covers 1/`factor` as many pixels across.
    The mosaic's seams are harmless: crops across them at the dataset's own scale read as
    the uncut images do (92.56% against 92.36% for 2.2.0 on the test split); so are the other
    tiles' scale bars (filling every tile's corner first moves 2.2.0's and round v12's W's
    accuracies in 1.5x and 2x wider fields by under 1.1 points).
    """
    height, width = tiles.shape[1:3]
    count = int(round(np.sqrt(len(tiles))))
    if count < 2 or count * count != len(tiles):
        raise ValueError(f"the tiles must fill a square mosaic of 4, 9, ... images, not {len(tiles)}")
    if not 1.0 <= factor <= count:
        raise ValueError(f"a {count}x{count} mosaic widens the field by 1 to {count} times, not {factor}")
    mosaic = np.concatenate([np.concatenate(tiles[row * count:(row + 1) * count], axis=1) for row in range(count)],
                            axis=0)
    side = int(round(factor * min(height, width)))
    crop = Image.fromarray(np.ascontiguousarray(mosaic[top:top + side, left:left + side]))
    return np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))


def session_neighbours(groups: list[str], count: int = 3) -> np.ndarray:
    """For each image, the indices of the next `count` images of its group (smear session), in
    order and wrapping round within the group; an image alone in its group neighbours itself."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    neighbours = np.empty((len(groups), count), dtype=np.int64)
    for indices in members.values():
        for position, index in enumerate(indices):
            neighbours[index] = [indices[(position + step) % len(indices)] for step in range(1, count + 1)]
    return neighbours


def wider_field(images: np.ndarray, groups: list[str], factor: float) -> np.ndarray:
    """Each image at the top left of a field `factor` times as wide (1 or more), the rest of the
    field filled by the next images of its smear session (`widen`, `session_neighbours`): a 2x2
    mosaic up to twice as wide, 3x3 up to three times, and so on."""
    count = max(2, int(np.ceil(factor)))
    neighbours = session_neighbours(groups, count=count * count - 1)
    return np.stack([widen(images[[index, *neighbours[index]]], factor) for index in range(len(images))])
