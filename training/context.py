"""The white cells and their surroundings, apart: to measure and to train what a model reads.

In this dataset each class was photographed in sessions of its own, so the surroundings of the
white cells (the plasma, the red cells, the smear's thickness and light) tell the classes apart
as well as the cells do, and a model may learn them instead of the morphology. Here:

- `cell_mask`: where the stained white cells are, by colour (Romanowsky-stained nuclei and
  blast cytoplasm are purple: green is their lowest channel, well below red and blue), darker
  than the image's median, grown by a few pixels so that each cell's edge comes along;
- `background_plate`: the image with its white cells painted out by the colour of the
  surroundings (normalised convolution: a Gaussian average of the pixels outside the mask);
- `composite`: one image's cells, feathered, on another image's plate.

Training uses them to show a share of images with their cells on the plate of a random
training image of any class (`TrainingFeed(context_swap_share=...)`), so that the surroundings
carry no class; the audit (`context_audit`) measures how far a model's answers follow the cells
when the surroundings are another class's, and how often it still names the class with the
cells painted out. The mask is a colour rule, not a segmentation model: it misses faint cells and
takes in some dark purple debris; what matters here is that it holds the nucleated cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from training.shifts import corner_mask

GROW = 4  # pixels added around each masked cell
FEATHER = 1.5  # Gaussian sigma of the soft edge when cells are put on another plate
FILL_SIGMA = 8.0  # Gaussian sigma of the fill under painted-out cells


def cell_mask(image: np.ndarray) -> np.ndarray:
    """Boolean HxW mask of the stained white cells of a uint8 HxWx3 smear image."""
    rgb = image.astype(np.float32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    grey = 0.299 * red + 0.587 * green + 0.114 * blue
    chroma = np.maximum(red, blue) - green
    purple = (green < red) & (green < blue)
    mask = purple & (chroma > max(25.0, float(np.percentile(chroma, 85)))) & (grey < np.median(grey))
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_dilation(mask, iterations=GROW)
    mask = ndimage.binary_fill_holes(mask)
    mask &= corner_mask(*mask.shape)  # the scale bar is not a cell
    return mask


def background_plate(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the masked pixels replaced by a smooth average of the unmasked ones around them."""
    keep = (~mask).astype(np.float32)
    if keep.sum() == 0:
        return np.zeros_like(image)
    weight = ndimage.gaussian_filter(keep, FILL_SIGMA)
    plate = image.astype(np.float32)
    fallback = np.median(image[~mask], axis=0)
    for channel in range(image.shape[-1]):
        average = ndimage.gaussian_filter(plate[..., channel] * keep, FILL_SIGMA)
        filled = np.where(weight > 1e-3, average / np.maximum(weight, 1e-3), fallback[channel])
        plate[..., channel] = np.where(mask, filled, plate[..., channel])
    return np.clip(np.rint(plate), 0, 255).astype(np.uint8)


def soft_mask(mask: np.ndarray) -> np.ndarray:
    """The mask with a feathered edge, as uint8 0..255 (compact to keep for a whole training set)."""
    soft = ndimage.gaussian_filter(mask.astype(np.float32), FEATHER)
    return np.clip(np.rint(np.maximum(soft, mask) * 255.0), 0, 255).astype(np.uint8)


def composite(cells: np.ndarray, alpha: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """`cells` (uint8 HxWx3) where `alpha` (uint8 HxW, from `soft_mask`) is set, `plate` elsewhere."""
    weight = alpha.astype(np.float32)[..., None] / 255.0
    mixed = cells.astype(np.float32) * weight + plate.astype(np.float32) * (1.0 - weight)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


@dataclass
class Separated:
    """Per image of a set: the feathered cell mask (uint8) and the background plate (uint8)."""

    alphas: np.ndarray  # (N, H, W)
    plates: np.ndarray  # (N, H, W, 3)

    @classmethod
    def of(cls, images: np.ndarray) -> Separated:
        alphas = np.empty(images.shape[:3], dtype=np.uint8)
        plates = np.empty_like(images)
        for i, image in enumerate(images):
            mask = cell_mask(image)
            alphas[i] = soft_mask(mask)
            plates[i] = background_plate(image, mask)
        return cls(alphas, plates)


def context_audit(predictors: dict[str, Callable[[np.ndarray], np.ndarray]], images: np.ndarray,
                  labels: np.ndarray, train_images: np.ndarray, train_labels: np.ndarray, seed: int = 0) -> dict:
    """How far each predictor's answers follow the cells rather than their surroundings.

    The images are cut and pasted once; every predictor reads the same ones. Per predictor:

    - `cells_on_other_class`: accuracy (the cells' class) when each image's cells are put on the
      plate of a random training image of another class; a model that reads the cells keeps its
      accuracy, one that reads the surroundings falls towards the share of answers that follow
      the plate (`follows_plate`).
    - `cells_on_same_class`: the same on a plate of the cells' own class: the cost of the
      cut-and-paste itself, the reference for the row above.
    - `cells_removed`: share of images still called their class with the cells painted out (the
      image's own plate; chance is about 25 %), and the mean top probability there.
    """
    rng = np.random.default_rng(seed)
    own = Separated.of(images)
    rows: dict[str, dict] = {name: {} for name in predictors}
    for row, pick in (("cells_on_other_class", lambda c: (c + rng.integers(1, 4)) % 4),
                      ("cells_on_same_class", lambda c: c)):
        chosen = np.array([rng.choice(np.flatnonzero(train_labels == pick(c))) for c in labels])
        donors, slot = np.unique(chosen, return_inverse=True)  # plates of the chosen images only
        plates = Separated.of(train_images[donors]).plates
        mixed = np.stack([composite(image, own.alphas[i], plates[k])
                          for i, (image, k) in enumerate(zip(images, slot))])
        for name, predict in predictors.items():
            answers = predict(mixed).argmax(axis=1)
            rows[name][row] = {"accuracy": float(np.mean(answers == labels)),
                               "follows_plate": float(np.mean(answers == train_labels[chosen]))}
    for name, predict in predictors.items():
        removed = predict(own.plates)
        rows[name]["cells_removed"] = {"still_called_its_class": float(np.mean(removed.argmax(axis=1) == labels)),
                                       "mean_top_probability": float(removed.max(axis=1).mean())}
    return rows
