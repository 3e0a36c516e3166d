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

from training.recipe import BLUR_SHARE, BLUR_SIGMA_MAX
from training.shifts import (
    HED_FROM_RGB,
    LAB_FROM_LOGLMS,
    LMS_FROM_RGB,
    RGB_FROM_HED,
    fill_corner,
    image_colour_statistics,
)

_LMS = LMS_FROM_RGB.astype(np.float32)
_LAB = LAB_FROM_LOGLMS.astype(np.float32)
_LMS_INV = np.linalg.inv(LMS_FROM_RGB).astype(np.float32)
_LAB_INV = np.linalg.inv(LAB_FROM_LOGLMS).astype(np.float32)
JPEG_SHARE = 0.3  # share of training images re-compressed, at a quality drawn from JPEG_QUALITY
JPEG_QUALITY = (30, 95)


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
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch_size: int,
                 seed: int, *, jpeg_share: float = JPEG_SHARE, workers: int = 1) -> None:
        super().__init__(workers=workers, use_multiprocessing=False)
        if len(images) < batch_size:
            raise ValueError(f"{len(images)} training images are fewer than one batch of {batch_size}")
        self.images = fill_corner(images)
        self.targets = targets.astype(np.float32)
        self.weights = weights.astype(np.float32)
        self.batch_size = batch_size
        self.seed = seed
        self.jpeg_share = jpeg_share
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
        for i in np.flatnonzero(rng.random(len(rows)) < self.jpeg_share):
            batch[i] = recompress_jpeg(batch[i], rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        return batch.astype(np.float32), self.targets[rows], self.weights[rows]

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
        x = self.orient(x)
        x = self.zoom_shift(x)
        if self.stain_transfer > 0:
            x = stain_transfer(x, self.colour_means, self.colour_stds, self.stain_transfer, self.generator)
        x = self.stain_jitter(x)
        x = self.illumination(x)
        x = self.blur_and_noise(x)
        return ops.clip(x, 0.0, 255.0)

    def _uniform(self, x, low: float, high: float, channels: int = 1):
        return keras.random.uniform((ops.shape(x)[0], 1, 1, channels), low, high, seed=self.generator)

    def _chance(self, x, probability: float):
        return self._uniform(x, 0.0, 1.0) < probability

    def orient(self, x):
        """One of the 8 turns and flips of the square, uniformly: transpose, then flip each axis at will."""
        x = ops.where(self._chance(x, 0.5), ops.transpose(x, (0, 2, 1, 3)), x)
        x = ops.where(self._chance(x, 0.5), ops.flip(x, axis=1), x)
        return ops.where(self._chance(x, 0.5), ops.flip(x, axis=2), x)

    def zoom_shift(self, x):
        """Crop a random square of 80-100% of the side anywhere in the field, resized back."""
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        size = keras.random.uniform((batch, 1), 0.8, 1.0, seed=self.generator)
        top = keras.random.uniform((batch, 1), 0.0, 1.0, seed=self.generator) * (1.0 - size)
        left = keras.random.uniform((batch, 1), 0.0, 1.0, seed=self.generator) * (1.0 - size)
        zero = ops.zeros_like(size)
        # each output pixel (col, row) reads input (size*col + left*width, size*row + top*height)
        transform = ops.concatenate([size, zero, left * ops.cast(width - 1, "float32"),
                                     zero, size, top * ops.cast(height - 1, "float32"), zero, zero], axis=1)
        return ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="nearest")

    def stain_jitter(self, x):
        density = -ops.log((x + 1.0) / 256.0)
        stains = ops.einsum("bhwc,cs->bhws", density, HED_FROM_RGB)
        stains = stains * self._uniform(x, 0.7, 1.3, 3) + self._uniform(x, -0.08, 0.08, 3)
        density = ops.einsum("bhws,sc->bhwc", stains, RGB_FROM_HED)
        return 256.0 * ops.exp(-density) - 1.0

    def illumination(self, x):
        x = x * self._uniform(x, 0.88, 1.12, 3)  # colour cast / white balance
        x = x * self._uniform(x, 0.7, 1.3)  # brightness
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * self._uniform(x, 0.7, 1.3) + mean  # contrast
        x = 255.0 * ops.power(ops.clip(x, 0.0, 255.0) / 255.0, self._uniform(x, 0.67, 1.5))
        grey = ops.mean(x, axis=3, keepdims=True)
        saturation = ops.where(self._chance(x, 0.1), 0.0, self._uniform(x, 0.6, 1.4))  # 10%: grayscale
        return grey + (x - grey) * saturation

    def blur_and_noise(self, x):
        sigma = keras.random.uniform((), 0.5, self.blur_sigma_max, seed=self.generator)
        reach = int(np.ceil(3 * self.blur_sigma_max))  # kernel half-width: 3 sigma
        taps = ops.arange(-reach, reach + 1, dtype="float32")
        kernel = ops.exp(-0.5 * ops.square(taps / sigma))
        kernel = kernel / ops.sum(kernel)
        rows = ops.tile(ops.reshape(kernel, (2 * reach + 1, 1, 1, 1)), (1, 1, 3, 1))
        cols = ops.tile(ops.reshape(kernel, (1, 2 * reach + 1, 1, 1)), (1, 1, 3, 1))
        blurred = ops.depthwise_conv(ops.depthwise_conv(x, rows, padding="same"), cols, padding="same")
        x = ops.where(self._chance(x, self.blur_share), blurred, x)
        noise = keras.random.normal(ops.shape(x), seed=self.generator) * self._uniform(x, 0.0, 4.0)
        return x + noise

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
