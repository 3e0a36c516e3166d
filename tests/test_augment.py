"""Training augmentation: the stain transfer matches the audit's Reinhard transfer; the stream's shape."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra is not installed")  # CI installs it

import tensorflow as tf  # noqa: E402

import helpers_smears as smears  # noqa: E402
from training.augment import _stain_transfer, training_dataset  # noqa: E402
from training.shifts import image_colour_statistics, reinhard_transfer  # noqa: E402


def test_stain_transfer_is_the_reinhard_transfer_to_a_training_image() -> None:
    source = np.stack([smears.smear(seed=s) for s in range(2)])
    tint = np.array([0.8, 0.9, 1.05])  # another session: bluer stain, dimmer lamp
    target = np.stack([np.clip(smears.smear(seed=9) * tint, 0, 255).astype(np.uint8)])
    means, stds = image_colour_statistics(target)
    moved = _stain_transfer(tf.constant(source, tf.float32), tf.constant(means, tf.float32),
                            tf.constant(stds, tf.float32), probability=1.0).numpy()
    expected = reinhard_transfer(source, means[0], stds[0])
    assert np.abs(moved - expected.astype(np.float32)).max() <= 1.0  # float32 vs float64, rounding
    moved_means, _ = image_colour_statistics(np.round(moved).astype(np.uint8))
    assert np.allclose(moved_means, means[0], atol=0.01)  # now in the target's colours
    assert not np.allclose(image_colour_statistics(source)[0], means[0], atol=0.01)


def test_stain_transfer_at_share_zero_changes_nothing() -> None:
    source = np.stack([smears.smear(seed=3)]).astype(np.float32)
    means, stds = image_colour_statistics(source.astype(np.uint8))
    kept = _stain_transfer(tf.constant(source), tf.constant(means, tf.float32), tf.constant(stds, tf.float32),
                           probability=0.0).numpy()
    assert np.array_equal(kept, source)


def test_training_stream_gives_float_pixel_batches_with_their_targets() -> None:
    images = np.stack([smears.smear(seed=s) for s in range(6)])
    targets = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    stream = training_dataset(images, targets, np.ones(6, np.float32), batch_size=4, seed=0, stain_transfer=0.5)
    x, y, w = next(iter(stream))
    assert x.shape == (4, 224, 224, 3) and x.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255.0
    assert y.shape == (4, 4) and w.shape == (4,)
