"""Training-time augmentation for smear photographs, in Keras ops (any Keras backend).

What a model must not rely on, it is shown varied: orientation (flips, 90-degree turns),
framing (zoom 1.0-1.25x with shift), stain (Tellez et al. 2019: jitter of each stain in
HED optical-density space), illumination and camera response (brightness, contrast, gamma,
colour cast, saturation), focus (Gaussian blur), sensor noise, JPEG re-compression, and now
and then no colour at all (grayscale). With `stain_transfer` > 0, that share of images first
takes the colour statistics of another training image, of any class (Reinhard transfer in
l-alpha-beta space to per-image statistics, as RandStainNA, Shen et al. 2022, does): each
class is then seen in every session's colours, so colour stops telling the classes apart.
Before any geometric change the scale-bar corner is filled with the image's mean colour
(`fill_corner`), so that no turn or flip can move the bar to where the model's filter does
not mask it.

Two parts, so that one recipe trains on TensorFlow on a CPU and on JAX on an accelerator:
`TrainingFeed` (NumPy and Pillow, in data-loader workers) shuffles, fills the corner once and
re-compresses a share of images as JPEG with Pillow, the serving decoder's library; `SmearAugment`
(a Keras layer, active only in training) does everything else on the batch, inside the
compiled training step. Every random draw of both is seeded.
"""

from __future__ import annotations

import io

import keras
import numpy as np
from keras import ops
from PIL import Image

from training.context import Separated, composite
from training.recipe import BLUR_SHARE, BLUR_SIGMA_MAX, NARROW_FIELD_MAX
from training.shifts import (
    HED_FROM_RGB,
    LAB_FROM_LOGLMS,
    LMS_FROM_RGB,
    RGB_FROM_HED,
    enlarge_square,
    fill_corner,
    image_colour_statistics,
    session_neighbours,
    widen,
)

_LMS = LMS_FROM_RGB.astype(np.float32)
_LAB = LAB_FROM_LOGLMS.astype(np.float32)
_LMS_INV = np.linalg.inv(LMS_FROM_RGB).astype(np.float32)
_LAB_INV = np.linalg.inv(LAB_FROM_LOGLMS).astype(np.float32)
JPEG_SHARE = 0.3  # share of training images re-compressed, at a quality drawn from JPEG_QUALITY
JPEG_QUALITY = (30, 95)
WIDE_FIELD_MAX = 2.0  # widest field shown when wide_field_share > 0, times the dataset's


def recompress_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode a uint8 HxWx3 image as JPEG at `quality` with Pillow and decode it again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"))


class TrainingFeed(keras.utils.PyDataset):
    """Shuffled batches (float32 pixels 0..255, target, weight) for `model.fit`, one epoch per pass.

    The order of each epoch and each image's JPEG draw depend only on (seed, epoch, batch), so
    any number of loader workers gives the same batches. The last incomplete batch is dropped.

    With `wide_field_share` > 0 (it needs `groups`, each image's smear session), that share of
    images is first shown in a field 1 to `wide_field_max` times as wide, its cells that much
    smaller: a square cut anywhere from a 2x2 mosaic of the image and three others of its
    session, resized as `decode_image` resizes a large photograph (`shifts.widen`). These draws
    have a random stream of their own, so the JPEG draws do not change with the share.

    With `context_swap_share` > 0, that share of images first shows its white cells on the
    surroundings of a random other training image, of any class (`training.context`: the cells by
    a colour mask, feathered, on the other image's background plate with its own cells painted
    out), so that the surroundings carry no class for those images. A stream of its own too.

    With `narrow_field_share` > 0, that share of images is then shown in a field 1 to
    `narrow_field_max` times as narrow, its cells that much larger: a square of 1/factor of the side,
    anywhere in the image, enlarged back by `shifts.enlarge_square`, as `shifts.narrower_field`
    makes the audit's narrower fields (there centred). A stream of its own as well.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch_size: int,
                 seed: int, *, jpeg_share: float = JPEG_SHARE, workers: int = 1,
                 wide_field_share: float = 0.0, wide_field_max: float = WIDE_FIELD_MAX,
                 groups: list[str] | None = None, context_swap_share: float = 0.0,
                 narrow_field_share: float = 0.0, narrow_field_max: float = NARROW_FIELD_MAX) -> None:
        super().__init__(workers=workers, use_multiprocessing=False)
        if len(images) < batch_size:
            raise ValueError(f"{len(images)} training images are fewer than one batch of {batch_size}")
        self.images = fill_corner(images)
        self.targets = targets.astype(np.float32)
        self.weights = weights.astype(np.float32)
        self.batch_size = batch_size
        self.seed = seed
        self.jpeg_share = jpeg_share
        if wide_field_share > 0 and groups is None:
            raise ValueError("wide-field augmentation needs each training image's smear session (groups)")
        self.wide_field_share = wide_field_share
        self.wide_field_max = wide_field_max
        # each image's next 8 of its session, of which _widen draws 3; only when a share uses them
        self._partners = session_neighbours(groups, count=8) if wide_field_share > 0 else None
        self.context_swap_share = context_swap_share
        if narrow_field_max < 1.0:
            raise ValueError(f"a field is at most 1/narrow_field_max as wide; {narrow_field_max} is below 1")
        self.narrow_field_share = narrow_field_share
        self.narrow_field_max = narrow_field_max
        # each image's feathered cell mask and cell-free plate (about 15 ms per image, once)
        self._separated = Separated.of(self.images) if context_swap_share > 0 else None
        self.epoch = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.images))

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self.epoch, index, 1))
        batch = self.images[rows].copy()
        if self.context_swap_share > 0:
            self._swap_context(batch, rows, np.random.default_rng((self.seed, self.epoch, index, 3)))
        if self.wide_field_share > 0:
            self._widen(batch, rows, np.random.default_rng((self.seed, self.epoch, index, 2)))
        if self.narrow_field_share > 0:
            self._narrow(batch, rows, np.random.default_rng((self.seed, self.epoch, index, 4)))
        for i in np.flatnonzero(rng.random(len(rows)) < self.jpeg_share):
            batch[i] = recompress_jpeg(batch[i], rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        return batch.astype(np.float32), self.targets[rows], self.weights[rows]

    def _widen(self, batch: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> None:
        """Show a share of the batch in a wider field, in place (see the class's docstring)."""
        side = batch.shape[1]
        for i in np.flatnonzero(rng.random(len(rows)) < self.wide_field_share):
            partners = rng.choice(self._partners[rows[i]], size=3, replace=False)
            tiles = self.images[[rows[i], *partners]][rng.permutation(4)]
            factor = rng.uniform(1.0, self.wide_field_max)
            room = 2 * side - int(round(factor * side))
            batch[i] = widen(tiles, factor, top=int(rng.integers(0, room + 1)), left=int(rng.integers(0, room + 1)))

    def _narrow(self, batch: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> None:
        """Show a share of the batch in a narrower field, in place (see the class's docstring)."""
        height, width = batch.shape[1:3]
        for i in np.flatnonzero(rng.random(len(rows)) < self.narrow_field_share):
            crop = int(round(min(height, width) / rng.uniform(1.0, self.narrow_field_max)))
            top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
            batch[i] = enlarge_square(batch[i], crop, top, left)

    def _swap_context(self, batch: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> None:
        """Put a share of the batch's cells on other training images' plates, in place."""
        separated = self._separated
        for i in np.flatnonzero(rng.random(len(rows)) < self.context_swap_share):
            donor = (rows[i] + rng.integers(1, len(self.images))) % len(self.images)  # any image but its own
            batch[i] = composite(batch[i], separated.alphas[rows[i]], separated.plates[donor])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffled(self.epoch)


@keras.saving.register_keras_serializable(package="dscnet")
class SmearAugment(keras.layers.Layer):
    """Random orientation, framing, stain, illumination, focus and noise of a pixel batch (0..255).

    Identity unless called with training=True. `colour_means`/`colour_stds` are the training
    images' per-image l-alpha-beta statistics (`image_colour_statistics`), needed when
    `stain_transfer` > 0.
    """

    def __init__(self, stain_transfer: float = 0.0, colour_means: np.ndarray | None = None,
                 colour_stds: np.ndarray | None = None, seed: int | None = None,
                 blur_share: float = BLUR_SHARE, blur_sigma_max: float = BLUR_SIGMA_MAX, **kwargs) -> None:
        super().__init__(**kwargs)
        self.blur_share = float(blur_share)
        self.blur_sigma_max = float(blur_sigma_max)
        if stain_transfer > 0 and (colour_means is None or colour_stds is None):
            raise ValueError("stain transfer needs the training images' colour statistics")
        self.stain_transfer = float(stain_transfer)
        self.colour_means = None if colour_means is None else np.asarray(colour_means, np.float32)
        self.colour_stds = None if colour_stds is None else np.asarray(colour_stds, np.float32)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training:
            return x
        x = ops.cast(x, "float32")
        x = self.frame(x)
        if self.stain_transfer > 0:
            x = stain_transfer(x, self.colour_means, self.colour_stds, self.stain_transfer, self.generator)
        x = self.stain_jitter(x)
        x = self.illumination(x)
        x = self.blur_and_noise(x)
        return ops.clip(x, 0.0, 255.0)

    # Every step draws its random numbers in the order of the recipe as first written (turns,
    # framing, stain, illumination, focus, noise), so a seed gives the same augmentation as it
    # always did; the arithmetic is arranged for a CPU, where TensorFlow runs each op as its own
    # pass over the batch and broadcasts a per-image factor slowly: a turn and a crop are one
    # resampling, per-image colour changes are one 3x3 matrix per image, and per-image choices
    # select whole rows of a (batch, pixels) view. tests/test_augment.py holds the step-by-step
    # form and checks that both agree.

    def _uniform(self, x, low: float, high: float, channels: int = 1):
        return keras.random.uniform((ops.shape(x)[0], 1, 1, channels), low, high, seed=self.generator)

    def _chance(self, x, probability: float):
        return self._uniform(x, 0.0, 1.0) < probability

    def _orientation(self, x):
        """Transpose, flip the rows, flip the columns: one chance in two each (the 8 turns and flips)."""
        return [ops.reshape(ops.cast(self._chance(x, 0.5), "float32"), (-1, 1)) for _ in range(3)]

    def frame(self, x):
        """A turn or flip, then a crop of a random square of 80-100% of the side anywhere in the
        field, resized back: one bilinear resampling."""
        turn = self._orientation(x)
        batch = ops.shape(x)[0]
        size = keras.random.uniform((batch, 1), 0.8, 1.0, seed=self.generator)
        top = keras.random.uniform((batch, 1), 0.0, 1.0, seed=self.generator) * (1.0 - size)
        left = keras.random.uniform((batch, 1), 0.0, 1.0, seed=self.generator) * (1.0 - size)
        return _resample(x, *turn, size=size, top=top, left=left)

    def stain_jitter(self, x):
        """Scale and shift each stain's optical density in HED space (Tellez et al. 2019)."""
        scale = ops.reshape(self._uniform(x, 0.7, 1.3, 3), (-1, 1, 3))
        shift = ops.reshape(self._uniform(x, -0.08, 0.08, 3), (-1, 1, 3))
        # (density @ HED * scale + shift) @ RGB == density @ (HED diag(scale) RGB) + shift @ RGB
        matrix = ops.matmul(HED_FROM_RGB[None] * scale, RGB_FROM_HED)
        density = np.log(256.0) - ops.log(_pixel_rows(x) + 1.0)
        density = ops.matmul(density, matrix) + ops.matmul(shift, RGB_FROM_HED)
        return ops.reshape(256.0 * ops.exp(-density) - 1.0, ops.shape(x))

    def illumination(self, x):
        """Colour cast, brightness, contrast about the image's mean, gamma, saturation (10%: grayscale)."""
        cast = self._uniform(x, 0.88, 1.12, 3)  # white balance
        brightness = self._uniform(x, 0.7, 1.3)
        contrast = self._uniform(x, 0.7, 1.3)
        gamma = ops.reshape(self._uniform(x, 0.67, 1.5), (-1, 1, 1))
        saturation = ops.where(self._chance(x, 0.1), 0.0, self._uniform(x, 0.6, 1.4))
        gain = cast * brightness  # per image and channel
        mean = ops.mean(gain * ops.mean(x, axis=(1, 2), keepdims=True), axis=3, keepdims=True)
        # (x * gain - mean) * contrast + mean, as one 3x3 (diagonal) matrix and an offset per image
        scale = ops.reshape(gain * contrast, (-1, 3))
        offset = ops.reshape(mean * (1.0 - contrast), (-1, 1, 1))
        rows = ops.matmul(_pixel_rows(x), scale[:, :, None] * ops.eye(3)) + offset
        rows = 255.0 * ops.exp(gamma * ops.log(ops.clip(rows, 0.0, 255.0) / 255.0))  # 0 stays 0
        grey = ops.mean(rows, axis=2, keepdims=True)
        rows = grey + (rows - grey) * ops.reshape(saturation, (-1, 1, 1))
        return ops.reshape(rows, ops.shape(x))

    def blur_and_noise(self, x):
        """Gaussian blur of a share of the images (one sigma per batch), then sensor noise."""
        sigma = keras.random.uniform((), 0.5, self.blur_sigma_max, seed=self.generator)
        reach = int(np.ceil(3 * self.blur_sigma_max))  # kernel half-width: 3 sigma
        taps = ops.arange(-reach, reach + 1, dtype="float32")
        kernel = ops.exp(-0.5 * ops.square(taps / sigma))
        kernel = kernel / ops.sum(kernel)
        rows = ops.tile(ops.reshape(kernel, (2 * reach + 1, 1, 1, 1)), (1, 1, 3, 1))
        cols = ops.tile(ops.reshape(kernel, (1, 2 * reach + 1, 1, 1)), (1, 1, 3, 1))
        blurred = ops.depthwise_conv(ops.depthwise_conv(x, rows, padding="same"), cols, padding="same")
        x = _select_images(self._chance(x, self.blur_share), blurred, x)
        noise = keras.random.normal(ops.shape(x), seed=self.generator)
        strength = ops.reshape(self._uniform(x, 0.0, 4.0), (-1, 1))
        return ops.reshape(_flat(x) + _flat(noise) * strength, ops.shape(x))

    def get_config(self) -> dict:
        # the colour statistics are training data, not configuration: not saved
        return {**super().get_config(), "stain_transfer": 0.0, "seed": self.seed, "blur_share": self.blur_share,
                "blur_sigma_max": self.blur_sigma_max}


def stain_transfer(x, means, stds, probability: float, seed=None):
    """Give a `probability` share of the batch the l-alpha-beta statistics of random training images.

    Args:
        x: float32 pixels 0..255, NHWC.
        means, stds: (N, 3) per-image l-alpha-beta statistics to draw targets from.
        probability: share of the batch that is transferred (0: none, 1: all).
        seed: a keras.random seed (int or SeedGenerator).
    """
    batch = ops.shape(x)[0]
    rgb = ops.maximum(x / 255.0, 1.0 / 255.0)
    lab = ops.einsum("bhwc,dc->bhwd", ops.log(ops.einsum("bhwc,dc->bhwd", rgb, _LMS)) / np.log(10.0), _LAB)
    mean = ops.mean(lab, axis=(1, 2), keepdims=True)
    std = ops.std(lab, axis=(1, 2), keepdims=True) + 1e-6
    pick = keras.random.randint((batch,), 0, len(means), seed=seed)
    target_mean = ops.reshape(ops.take(ops.convert_to_tensor(means), pick, axis=0), (batch, 1, 1, 3))
    target_std = ops.reshape(ops.take(ops.convert_to_tensor(stds), pick, axis=0), (batch, 1, 1, 3))
    lab = (lab - mean) / std * target_std + target_mean
    lms = ops.power(10.0, ops.einsum("bhwc,dc->bhwd", lab, _LAB_INV))
    moved = ops.clip(255.0 * ops.einsum("bhwc,dc->bhwd", lms, _LMS_INV), 0.0, 255.0)
    chosen = keras.random.uniform((batch, 1, 1, 1), 0.0, 1.0, seed=seed) < probability
    return ops.where(chosen, moved, x)


def augmenter(images: np.ndarray, stain_transfer_share: float, seed: int, **focus) -> SmearAugment:
    """The SmearAugment layer for these (uint8, corner not yet filled) training images;
    `focus`: blur_share, blur_sigma_max."""
    if stain_transfer_share <= 0:
        return SmearAugment(seed=seed, name="augment", **focus)
    means, stds = image_colour_statistics(fill_corner(images))
    return SmearAugment(stain_transfer_share, means, stds, seed=seed, name="augment", **focus)


def _pixel_rows(x):
    """NHWC as (batch, pixels, channels)."""
    return ops.reshape(x, (ops.shape(x)[0], -1, ops.shape(x)[3]))


def _flat(x):
    """NHWC as (batch, values)."""
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _select_images(chosen, a, b):
    """Per image: `a` where `chosen` (batch, 1, 1, 1), else `b`."""
    return ops.reshape(ops.where(ops.reshape(chosen, (-1, 1)), _flat(a), _flat(b)), ops.shape(a))


def _resample(x, transposed, flip_rows, flip_cols, *, size, top, left):
    """Transpose and flip each image at will (floats 0/1, (batch, 1)), then crop the square of
    side `size` (a share of the side) at `top`, `left` (shares of the side) and resize it back
    with bilinear interpolation: one projective transform per image."""
    height, width = ops.cast(ops.shape(x)[1] - 1, "float32"), ops.cast(ops.shape(x)[2] - 1, "float32")
    # in the turned image, output pixel (col, row) reads (size*col + left*width, size*row + top*height);
    # a flip mirrors that coordinate (c -> width - c), a transpose swaps the two
    col_sign, row_sign = 1.0 - 2.0 * flip_cols, 1.0 - 2.0 * flip_rows
    col_offset = flip_cols * width + col_sign * left * width
    row_offset = flip_rows * height + row_sign * top * height
    straight = 1.0 - transposed
    zero = ops.zeros_like(size)
    transform = ops.concatenate([
        straight * col_sign * size, transposed * row_sign * size, straight * col_offset + transposed * row_offset,
        transposed * col_sign * size, straight * row_sign * size, straight * row_offset + transposed * col_offset,
        zero, zero], axis=1)
    return ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="nearest")
