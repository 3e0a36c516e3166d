"""The cells and their surroundings apart (training/context.py): the mask, the plate, the audit, the feed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy", reason="the [train] extra is not installed")  # CI installs it

from training.context import (  # noqa: E402
    GROW,
    Separated,
    background_plate,
    cell_mask,
    composite,
    context_audit,
    soft_mask,
)

SIZE = 224
PURPLE = (110, 60, 160)
# one pale background per class, none of them purple enough to pass for a cell
BACKGROUNDS = ((240, 230, 220), (215, 232, 240), (236, 236, 200), (240, 222, 232))
RADIUS = 14


def _disc(centre: tuple[int, int], radius: float = RADIUS) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 < radius ** 2


def smear(cls: int, background: int | None = None, seed: int = 0) -> np.ndarray:
    """A pale field of class `background`'s tint, pinkish red cells, and cls + 1 purple white cells."""
    rng = np.random.default_rng(seed)
    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    image[:] = BACKGROUNDS[cls if background is None else background]
    for _ in range(25):  # red cells: pale, low chroma
        image[_disc((int(rng.integers(10, 214)), int(rng.integers(10, 214))), 10)] = (214, 200, 206)
    for k in range(cls + 1):  # white cells where the red ones may lie: cells are drawn last
        image[_disc((40 + 45 * k, 60 + 30 * (k % 2)))] = PURPLE
    image += rng.normal(0, 1.5, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _purple(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.int16)
    return (rgb[..., 1] < rgb[..., 0] - 30) & (rgb[..., 1] < rgb[..., 2] - 60)


def test_the_mask_holds_the_white_cells_with_a_margin_and_nothing_far_from_them() -> None:
    image = smear(2)
    mask = cell_mask(image)
    cells = _disc((40, 60)) | _disc((85, 90)) | _disc((130, 60))
    assert mask[cells].all()
    near = np.zeros_like(cells)
    for centre in ((40, 60), (85, 90), (130, 60)):
        near |= _disc(centre, RADIUS + GROW + 2)
    assert not mask[~near].any()  # no red cell, no background, no corner
    assert mask[_disc((40, 60), RADIUS + 2)].all()  # the edge comes along, 2 pixels all round at least


def test_the_plate_paints_the_cells_out_and_keeps_every_other_pixel() -> None:
    image = smear(3, seed=1)
    mask = cell_mask(image)
    plate = background_plate(image, mask)
    assert np.array_equal(plate[~mask], image[~mask])
    assert not _purple(plate).any()
    # the fill takes the colour of what surrounds the cells: here the pale background and red cells
    assert np.abs(plate[mask].astype(float).mean(axis=0) - np.array(BACKGROUNDS[3])).max() < 25


def test_composite_takes_the_cells_inside_the_soft_mask_and_the_plate_outside() -> None:
    cells, other = smear(1), smear(0, background=2, seed=5)
    mask = cell_mask(cells)
    alpha = soft_mask(mask)
    assert (alpha[mask] == 255).all() and alpha[~mask].max() < 255
    plate = background_plate(other, cell_mask(other))
    mixed = composite(cells, alpha, plate)
    assert np.array_equal(mixed[alpha == 255], cells[alpha == 255])
    assert np.array_equal(mixed[alpha == 0], plate[alpha == 0])
    assert _purple(mixed).sum() == pytest.approx(_purple(cells).sum(), rel=0.05)


def _reads_cells(images: np.ndarray) -> np.ndarray:
    """A model of the cells: the class is the number of white cells less one (from the purple area)."""
    counts = np.array([_purple(image).sum() for image in images]) / (np.pi * RADIUS ** 2)
    return np.eye(4)[np.clip(np.rint(counts) - 1, 0, 3).astype(int)]


def _reads_surroundings(images: np.ndarray) -> np.ndarray:
    """A model of the surroundings: the class whose background tint is nearest the median colour."""
    medians = np.median(images.reshape(len(images), -1, 3), axis=1)
    distances = np.linalg.norm(medians[:, None, :] - np.array(BACKGROUNDS)[None], axis=2)
    return np.eye(4)[distances.argmin(axis=1)]


def test_the_audit_tells_a_model_of_the_cells_from_a_model_of_the_surroundings() -> None:
    labels = np.repeat(np.arange(4), 3)
    images = np.stack([smear(c, seed=10 + i) for i, c in enumerate(labels)])
    train_labels = np.repeat(np.arange(4), 2)
    train_images = np.stack([smear(c, seed=100 + i) for i, c in enumerate(train_labels)])
    assert (_reads_cells(images).argmax(1) == labels).all()
    assert (_reads_surroundings(images).argmax(1) == labels).all()

    found = context_audit({"cells": _reads_cells, "surroundings": _reads_surroundings},
                          images, labels, train_images, train_labels)
    cells = found["cells"]
    assert cells["cells_on_other_class"] == {"accuracy": 1.0, "follows_plate": 0.0}
    assert cells["cells_on_same_class"]["accuracy"] == 1.0
    assert cells["cells_removed"]["still_called_its_class"] == 0.25  # all read as class 0

    surroundings = found["surroundings"]
    assert surroundings["cells_on_other_class"] == {"accuracy": 0.0, "follows_plate": 1.0}
    assert surroundings["cells_on_same_class"]["accuracy"] == 1.0
    assert surroundings["cells_removed"] == {"still_called_its_class": 1.0, "mean_top_probability": 1.0}


def test_separated_keeps_each_images_mask_and_plate() -> None:
    images = np.stack([smear(c, seed=c) for c in range(3)])
    separated = Separated.of(images)
    assert separated.alphas.shape == (3, SIZE, SIZE) and separated.plates.shape == images.shape
    for image, alpha, plate in zip(images, separated.alphas, separated.plates):
        assert np.array_equal(alpha, soft_mask(cell_mask(image)))
        assert np.array_equal(plate, background_plate(image, cell_mask(image)))


def test_the_feed_shows_its_share_of_cells_on_other_images_surroundings() -> None:
    pytest.importorskip("keras", reason="the [train] extra is not installed")  # CI installs it
    from training.augment import TrainingFeed
    from training.shifts import fill_corner

    images = np.stack([smear(i % 4, background=i % 4, seed=i) for i in range(8)])
    targets, weights = np.eye(4, dtype=np.float32)[np.arange(8) % 4], np.arange(8, dtype=np.float32)
    plain = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.0)
    unused = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.0, context_swap_share=0.0)
    swapped = TrainingFeed(images, targets, weights, 8, seed=0, jpeg_share=0.0, context_swap_share=1.0)
    assert np.array_equal(plain[0][0], unused[0][0])
    x, _, w = swapped[0]
    assert np.array_equal(w, plain[0][2])  # the same images in the same order
    filled = fill_corner(images)
    separated = Separated.of(filled)
    moved = 0
    for image, row in zip(x.astype(np.uint8), w.astype(int)):
        alpha = separated.alphas[row]
        assert np.array_equal(image[alpha == 255], filled[row][alpha == 255])  # its own cells
        outside = image[alpha == 0]
        donors = [j for j in range(8) if np.array_equal(outside, separated.plates[j][alpha == 0])]
        assert donors and row not in donors  # another image's surroundings, its cells painted out
        assert not _purple(np.where(alpha[..., None] == 0, image, 0)).any()
        tint = np.linalg.norm(np.array(BACKGROUNDS) - np.median(outside, axis=0), axis=1).argmin()
        moved += int(tint != row % 4)
    assert moved >= 5  # the surroundings of another class, mostly (1 of an image's 7 donors shares its tint)
