"""Training-time augmentation for smear photographs, as a tf.data pipeline.

What a model must not rely on, it is shown varied: orientation (flips, 90-degree turns),
framing (zoom 1.0-1.25x with shift), stain (Tellez et al. 2019: jitter of each stain in
HED optical-density space), illumination and camera response (brightness, contrast, gamma,
colour cast, saturation), focus (Gaussian blur), sensor noise, JPEG re-compression, and now
and then no colour at all (grayscale). With `stain_transfer` > 0, that share of images first
takes the colour statistics of another training image, of any class (Reinhard transfer in
l-alpha-beta space to per-image statistics, as RandStainNA, Shen et al. 2022, does): each
class is then seen in every session's colours, so colour stops telling the classes apart. Before any geometric change the scale-bar corner is
filled with the image's mean colour (`fill_corner`), so that no turn or flip can move the
bar to where the model's filter does not mask it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

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


def _per_image(image: tf.Tensor, target: tf.Tensor, weight: tf.Tensor):
    image = tf.image.rot90(image, tf.random.uniform([], 0, 4, dtype=tf.int32))
    image = tf.image.random_flip_left_right(image)
    image = tf.cond(
        tf.random.uniform([]) < 0.3,
        lambda: tf.image.random_jpeg_quality(image, 30, 95),
        lambda: image,
    )
    return tf.cast(image, tf.float32), target, weight


def _uniform(batch: tf.Tensor, low: float, high: float, channels: int = 1) -> tf.Tensor:
    return tf.random.uniform([batch, 1, 1, channels], low, high)


def _zoom_shift(x: tf.Tensor) -> tf.Tensor:
    batch = tf.shape(x)[0]
    size = tf.random.uniform([batch, 1], 0.8, 1.0)
    top = tf.random.uniform([batch, 1]) * (1.0 - size)
    left = tf.random.uniform([batch, 1]) * (1.0 - size)
    boxes = tf.concat([top, left, top + size, left + size], axis=1)
    return tf.image.crop_and_resize(x, boxes, tf.range(batch), tf.shape(x)[1:3])


def _stain_jitter(x: tf.Tensor) -> tf.Tensor:
    batch = tf.shape(x)[0]
    density = -tf.math.log((x + 1.0) / 256.0)
    stains = tf.einsum("bhwc,cs->bhws", density, HED_FROM_RGB)
    stains = stains * _uniform(batch, 0.7, 1.3, 3) + _uniform(batch, -0.08, 0.08, 3)
    density = tf.einsum("bhws,sc->bhwc", stains, RGB_FROM_HED)
    return 256.0 * tf.exp(-density) - 1.0


def _stain_transfer(x: tf.Tensor, means: tf.Tensor, stds: tf.Tensor, probability: float) -> tf.Tensor:
    """Give a `probability` share of the batch the l-alpha-beta statistics of random training images."""
    batch = tf.shape(x)[0]
    rgb = tf.maximum(x / 255.0, 1.0 / 255.0)
    lab = tf.einsum("bhwc,dc->bhwd", tf.math.log(tf.einsum("bhwc,dc->bhwd", rgb, _LMS)) / np.log(10.0), _LAB)
    mean = tf.reduce_mean(lab, axis=[1, 2], keepdims=True)
    std = tf.math.reduce_std(lab, axis=[1, 2], keepdims=True) + 1e-6
    pick = tf.random.uniform([batch], 0, tf.shape(means)[0], dtype=tf.int32)
    target_mean = tf.reshape(tf.gather(means, pick), [batch, 1, 1, 3])
    target_std = tf.reshape(tf.gather(stds, pick), [batch, 1, 1, 3])
    lab = (lab - mean) / std * target_std + target_mean
    lms = tf.pow(10.0, tf.einsum("bhwc,dc->bhwd", lab, _LAB_INV))
    moved = tf.clip_by_value(255.0 * tf.einsum("bhwc,dc->bhwd", lms, _LMS_INV), 0.0, 255.0)
    return tf.where(tf.random.uniform([batch, 1, 1, 1]) < probability, moved, x)


def _illumination(x: tf.Tensor) -> tf.Tensor:
    batch = tf.shape(x)[0]
    x = x * _uniform(batch, 0.88, 1.12, 3)  # colour cast / white balance
    x = x * _uniform(batch, 0.7, 1.3)  # brightness
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * _uniform(batch, 0.7, 1.3) + mean  # contrast
    x = 255.0 * tf.pow(tf.clip_by_value(x, 0.0, 255.0) / 255.0, _uniform(batch, 0.67, 1.5))
    grey = tf.reduce_mean(x, axis=3, keepdims=True)
    saturation = _uniform(batch, 0.6, 1.4)
    saturation = tf.where(tf.random.uniform([batch, 1, 1, 1]) < 0.1, 0.0, saturation)  # grayscale
    return grey + (x - grey) * saturation


def _blur_and_noise(x: tf.Tensor) -> tf.Tensor:
    batch = tf.shape(x)[0]
    sigma = tf.random.uniform([], 0.5, 1.5)
    taps = tf.range(-3, 4, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    rows = tf.tile(tf.reshape(kernel, [7, 1, 1, 1]), [1, 1, 3, 1])
    cols = tf.tile(tf.reshape(kernel, [1, 7, 1, 1]), [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(x, rows, [1, 1, 1, 1], "SAME")
    blurred = tf.nn.depthwise_conv2d(blurred, cols, [1, 1, 1, 1], "SAME")
    x = tf.where(tf.random.uniform([batch, 1, 1, 1]) < 0.25, blurred, x)
    noise = tf.random.normal(tf.shape(x)) * _uniform(batch, 0.0, 4.0)
    return x + noise


def training_dataset(images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch_size: int,
                     seed: int, stain_transfer: float = 0.0) -> tf.data.Dataset:
    """An endless, shuffled, augmented stream of (float32 pixels 0..255, target, weight) batches.

    Args:
        images: uint8 NHWC images, scale-bar corner not yet filled.
        targets: (N, classes) target distributions (smoothed one-hot).
        weights: (N,) per-sample loss weights (class balance).
        batch_size: images per batch; the last incomplete batch of an epoch is dropped.
        seed: shuffle seed.
        stain_transfer: share of images given another training image's colour statistics (0: none).
    """
    filled = fill_corner(images)
    if stain_transfer > 0:
        means, stds = (tf.constant(a, tf.float32) for a in image_colour_statistics(filled))

    def per_batch(x: tf.Tensor, target: tf.Tensor, weight: tf.Tensor):
        x = _zoom_shift(x)
        if stain_transfer > 0:
            x = _stain_transfer(x, means, stds, stain_transfer)
        x = _stain_jitter(x)
        x = _illumination(x)
        x = _blur_and_noise(x)
        return tf.clip_by_value(x, 0.0, 255.0), target, weight

    data = tf.data.Dataset.from_tensor_slices((filled, targets.astype(np.float32),
                                               weights.astype(np.float32)))
    data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    data = data.map(_per_image, num_parallel_calls=tf.data.AUTOTUNE)
    data = data.batch(batch_size, drop_remainder=True)
    data = data.map(per_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(2)
