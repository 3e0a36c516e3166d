"""Training augmentation: the feed's batches, the augmentation layer, and the stain transfer."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras", reason="the [train] extra is not installed")  # CI installs it

import keras  # noqa: E402

import helpers_smears as smears  # noqa: E402
from synthetic import disks  # noqa: E402
from training.augment import (  # noqa: E402
    SmearAugment,
    TrainingFeed,
    _resample,
    augmenter,
    recompress_jpeg,
    stain_transfer,
)
from training.shifts import (  # noqa: E402
    CORNER_HEIGHT,
    CORNER_WIDTH,
    HED_FROM_RGB,
    RGB_FROM_HED,
    image_colour_statistics,
    reinhard_transfer,
)


def _smears(count: int) -> np.ndarray:
    return np.stack([smears.smear(seed=s) for s in range(count)])


def test_stain_transfer_is_the_reinhard_transfer_to_a_training_image() -> None:
    source = _smears(2)
    tint = np.array([0.8, 0.9, 1.05])  # another session: bluer stain, dimmer lamp
    target = np.stack([np.clip(smears.smear(seed=9) * tint, 0, 255).astype(np.uint8)])
    means, stds = image_colour_statistics(target)
    moved = keras.ops.convert_to_numpy(stain_transfer(source.astype(np.float32), means.astype(np.float32),
                                                      stds.astype(np.float32), probability=1.0, seed=0))
    expected = reinhard_transfer(source, means[0], stds[0])
    assert np.abs(moved - expected.astype(np.float32)).max() <= 1.0  # float32 vs float64, rounding
    moved_means, _ = image_colour_statistics(np.round(moved).astype(np.uint8))
    assert np.allclose(moved_means, means[0], atol=0.01)  # now in the target's colours
    assert not np.allclose(image_colour_statistics(source)[0], means[0], atol=0.01)


def test_stain_transfer_at_share_zero_changes_nothing() -> None:
    source = _smears(1).astype(np.float32)
    means, stds = image_colour_statistics(source.astype(np.uint8))
    kept = keras.ops.convert_to_numpy(stain_transfer(source, means.astype(np.float32), stds.astype(np.float32),
                                                     probability=0.0, seed=0))
    assert np.array_equal(kept, source)


def test_feed_gives_shuffled_float_batches_with_their_targets_and_drops_the_remainder() -> None:
    images = _smears(10)
    targets = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]]
    weights = np.arange(10, dtype=np.float32)
    feed = TrainingFeed(images, targets, weights, batch_size=4, seed=0, jpeg_share=0.0)
    assert len(feed) == 2
    x, y, w = feed[0]
    assert x.shape == (4, 224, 224, 3) and x.dtype == np.float32
    rows = w.astype(int)  # the weights name the rows the batch came from
    assert np.array_equal(y, targets[rows])
    assert np.array_equal(x[:, :100, :100], images[rows, :100, :100].astype(np.float32))
    # the scale-bar corner is filled with each image's mean colour before any augmentation
    corner = x[:, -CORNER_HEIGHT:, -CORNER_WIDTH:]
    assert np.all(corner == corner[:, :1, :1])
    first = np.concatenate([feed[i][2] for i in range(len(feed))])
    feed.on_epoch_end()
    second = np.concatenate([feed[i][2] for i in range(len(feed))])
    assert len(set(first)) == 8 and not np.array_equal(first, second)  # no repeats; reshuffled


def test_feed_batches_depend_only_on_seed_epoch_and_index() -> None:
    images, targets, weights = _smears(8), np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 2], np.ones(8, np.float32)
    a = TrainingFeed(images, targets, weights, batch_size=4, seed=3, jpeg_share=0.5)
    b = TrainingFeed(images, targets, weights, batch_size=4, seed=3, jpeg_share=0.5)
    assert np.array_equal(a[1][0], b[1][0]) and np.array_equal(a[0][0], b[0][0])  # any order of reads
    c = TrainingFeed(images, targets, weights, batch_size=4, seed=4, jpeg_share=0.5)
    assert not np.array_equal(a[0][0], c[0][0])


def test_feed_recompresses_its_share_of_images_as_jpeg() -> None:
    images = _smears(4)
    feed = TrainingFeed(images, np.eye(4, dtype=np.float32), np.arange(4, dtype=np.float32), 4, seed=0,
                        jpeg_share=1.0)
    x, _, w = feed[0]
    filled = feed.images[w.astype(int)].astype(np.float32)
    changed = np.abs(x - filled).mean(axis=(1, 2, 3))
    assert np.all(changed > 0.1)  # every image re-compressed
    assert np.all(changed < 12.0)  # and still the same picture
    assert recompress_jpeg(images[0], 90).shape == images[0].shape


def _longest_run(mask: np.ndarray) -> int:
    """The longest horizontal run of True in a 2-D mask: a disk's diameter in pixels."""
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    return int((ends[1] - starts[1]).max()) if starts[1].size else 0


def test_feed_widens_the_field_of_its_share_with_images_of_the_same_session_only() -> None:
    centres = [(60 + 20 * i, 100) for i in range(4)]
    images = np.concatenate([disks(centres, (200, 0, 0)), disks(centres, (0, 0, 200))])
    groups = ["red"] * 4 + ["blue"] * 4
    targets, weights = np.eye(4, dtype=np.float32)[[0] * 4 + [1] * 4], np.arange(8, dtype=np.float32)
    plain = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.0)
    unused = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.0, wide_field_share=0.0, groups=groups)
    wide = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.0, wide_field_share=1.0, groups=groups)
    assert np.array_equal(plain[0][0], unused[0][0])  # the share's draws do not move the others
    x, _, w = wide[0]
    assert np.array_equal(w, plain[0][2])  # the same images in the same order
    diameters = []
    for image, row in zip(x, w.astype(int)):
        red = (image[..., 0] > 100) & (image[..., 2] < 60)
        blue = (image[..., 2] > 100) & (image[..., 0] < 60)
        own, other = (red, blue) if groups[row] == "red" else (blue, red)
        assert not other.any()  # never a cell of another session
        diameters.append(_longest_run(own))
    # the disks are 79 pixels across; in a field 1 to 2 times as wide, 79/factor
    assert _longest_run((images[0, ..., 0] > 100) & (images[0, ..., 2] < 60)) == 79
    assert max(diameters) <= 79 and 40 <= np.mean(diameters) < 70
    with pytest.raises(ValueError, match="smear session"):
        TrainingFeed(images, targets, weights, 8, seed=0, wide_field_share=0.3)


def test_augmentation_is_the_identity_outside_training() -> None:
    x = _smears(2).astype(np.float32)
    layer = SmearAugment(seed=0)
    assert np.array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_augmentation_changes_each_image_within_the_pixel_range() -> None:
    x = _smears(4).astype(np.float32)
    for share in (0.0, 1.0):
        layer = augmenter(x.astype(np.uint8), share, seed=0)
        out = keras.ops.convert_to_numpy(layer(x, training=True))
        assert out.shape == x.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 255.0
        assert np.all(np.abs(out - x).mean(axis=(1, 2, 3)) > 1.0)
        again = keras.ops.convert_to_numpy(layer(x, training=True))
        assert not np.array_equal(out, again)  # a new draw each call


class StepByStep(SmearAugment):
    """The augmentation as first written, one op per step, drawing the same random numbers in the
    same order: the reference that the layer's rearranged arithmetic must reproduce."""

    def call(self, x, training=False):
        x = self.zoom_shift(self.turn(keras.ops.cast(x, "float32")))
        return keras.ops.clip(self.blur_and_noise(self.illumination(self.stain_jitter(x))), 0.0, 255.0)

    def turn(self, x):
        ops = keras.ops
        x = ops.where(self._chance(x, 0.5), ops.transpose(x, (0, 2, 1, 3)), x)
        x = ops.where(self._chance(x, 0.5), ops.flip(x, axis=1), x)
        return ops.where(self._chance(x, 0.5), ops.flip(x, axis=2), x)

    def zoom_shift(self, x):
        ops = keras.ops
        batch, side = ops.shape(x)[0], float(ops.shape(x)[1] - 1)
        size = keras.random.uniform((batch, 1), 0.8, 1.0, seed=self.generator)
        top = keras.random.uniform((batch, 1), 0.0, 1.0, seed=self.generator) * (1.0 - size)
        left = keras.random.uniform((batch, 1), 0.0, 1.0, seed=self.generator) * (1.0 - size)
        zero = ops.zeros_like(size)
        transform = ops.concatenate([size, zero, left * side, zero, size, top * side, zero, zero], axis=1)
        return ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="nearest")

    def stain_jitter(self, x):
        ops = keras.ops
        stains = ops.einsum("bhwc,cs->bhws", -ops.log((x + 1.0) / 256.0), HED_FROM_RGB)
        stains = stains * self._uniform(x, 0.7, 1.3, 3) + self._uniform(x, -0.08, 0.08, 3)
        return 256.0 * ops.exp(-ops.einsum("bhws,sc->bhwc", stains, RGB_FROM_HED)) - 1.0

    def illumination(self, x):
        ops = keras.ops
        x = x * self._uniform(x, 0.88, 1.12, 3) * self._uniform(x, 0.7, 1.3)
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * self._uniform(x, 0.7, 1.3) + mean
        x = 255.0 * ops.power(ops.clip(x, 0.0, 255.0) / 255.0, self._uniform(x, 0.67, 1.5))
        grey = ops.mean(x, axis=3, keepdims=True)
        return grey + (x - grey) * ops.where(self._chance(x, 0.1), 0.0, self._uniform(x, 0.6, 1.4))

    def blur_and_noise(self, x):
        ops = keras.ops
        sigma = keras.random.uniform((), 0.5, self.blur_sigma_max, seed=self.generator)
        taps = ops.arange(-6, 7, dtype="float32")  # the kernel for sigma up to 2.0
        kernel = ops.exp(-0.5 * ops.square(taps / sigma))
        kernel = kernel / ops.sum(kernel)
        rows = ops.tile(ops.reshape(kernel, (13, 1, 1, 1)), (1, 1, 3, 1))
        blurred = ops.depthwise_conv(ops.depthwise_conv(x, rows, padding="same"),
                                     ops.reshape(rows, (1, 13, 3, 1)), padding="same")
        x = ops.where(self._chance(x, self.blur_share), blurred, x)
        return x + keras.random.normal(ops.shape(x), seed=self.generator) * self._uniform(x, 0.0, 4.0)


def test_augmentation_draws_and_computes_what_the_step_by_step_form_does() -> None:
    # a whole batch, so that every per-image choice (turn, flip, blur, grayscale) is taken both ways
    x = (np.stack([smears.smear(seed=s) for s in range(24)])).astype(np.float32)
    fast, reference = SmearAugment(seed=7), StepByStep(seed=7)
    for _ in range(3):  # the generators advance alike from call to call
        got = keras.ops.convert_to_numpy(fast(x, training=True))
        want = keras.ops.convert_to_numpy(reference(x, training=True))
        # the same image to within float rounding (0.05 of a grey level), not merely alike
        assert np.abs(got - want).max() < 0.05
        assert np.abs(got - x).mean() > 1.0


def test_orientation_gives_the_eight_turns_and_flips_of_the_square() -> None:
    image = np.arange(4 * 4 * 3, dtype=np.float32).reshape(1, 4, 4, 3)
    layer = SmearAugment(seed=1)
    whole, corner = np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32)  # framing: the whole field

    def turned() -> np.ndarray:
        return keras.ops.convert_to_numpy(_resample(image, *layer._orientation(image), size=whole, top=corner,
                                                    left=corner))

    seen = {turned()[0].tobytes() for _ in range(200)}
    square = image[0]
    expected = {np.ascontiguousarray(t).tobytes()
                for k in range(4) for t in (np.rot90(square, k), np.rot90(square[:, ::-1], k))}
    assert seen == expected


def test_feed_narrows_the_field_of_its_share_so_its_cells_are_larger() -> None:
    images = disks([(112, 112)], (200, 0, 0)).repeat(8, axis=0)  # one disk, 79 pixels across
    targets, weights = np.eye(4, dtype=np.float32)[[0] * 8], np.arange(8, dtype=np.float32)
    plain = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.5)
    unused = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.5, narrow_field_share=0.0)
    narrow = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.0, narrow_field_share=1.0)
    assert np.array_equal(plain[0][0], unused[0][0])  # share 0 changes no batch, nor the JPEG draws
    x, _, w = narrow[0]
    assert np.array_equal(w, plain[0][2])  # the same images in the same order
    # a square of 1/factor of the side (factor 1..2) enlarged: the disk up to twice as wide, cut where
    # the square does not hold all of it, so measure the widest run of each image
    runs = [_longest_run((image[..., 0] > 100) & (image[..., 2] < 60)) for image in x]
    assert min(runs) >= 79 and max(runs) <= 2 * 79 + 2 and np.mean(runs) > 95
    with pytest.raises(ValueError, match="narrow_field_max"):
        TrainingFeed(images, targets, weights, 8, seed=0, narrow_field_share=0.3, narrow_field_max=0.5)
