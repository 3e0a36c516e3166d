"""Training-time augmentation for smear photographs, as a tf.data pipeline.

What a model must not rely on, it is shown varied: orientation (flips, 90-degree turns),
framing (zoom 1.0-1.25x with shift), stain (Tellez et al. 2019: jitter of each stain in
HED optical-density space), illumination and camera response (brightness, contrast, gamma,
colour cast, saturation), focus (Gaussian blur), sensor noise, JPEG re-compression, and now
and then no colour at all (grayscale). Before any geometric change the scale-bar corner is
filled with the image's mean colour (`fill_corner`), so that no turn or flip can move the
bar to where the model's filter does not mask it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.shifts import HED_FROM_RGB, RGB_FROM_HED, fill_corner


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


def _per_batch(x: tf.Tensor, target: tf.Tensor, weight: tf.Tensor):
    x = _zoom_shift(x)
    x = _stain_jitter(x)
    x = _illumination(x)
    x = _blur_and_noise(x)
    return tf.clip_by_value(x, 0.0, 255.0), target, weight


def training_dataset(images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch_size: int,
                     seed: int) -> tf.data.Dataset:
    """An endless, shuffled, augmented stream of (float32 pixels 0..255, target, weight) batches.

    Args:
        images: uint8 NHWC images, scale-bar corner not yet filled.
        targets: (N, classes) target distributions (smoothed one-hot).
        weights: (N,) per-sample loss weights (class balance).
        batch_size: images per batch; the last incomplete batch of an epoch is dropped.
        seed: shuffle seed.
    """
    data = tf.data.Dataset.from_tensor_slices((fill_corner(images), targets.astype(np.float32),
                                               weights.astype(np.float32)))
    data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    data = data.map(_per_image, num_parallel_calls=tf.data.AUTOTUNE)
    data = data.batch(batch_size, drop_remainder=True)
    data = data.map(_per_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(2)
