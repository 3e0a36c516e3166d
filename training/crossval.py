"""Grouped cross-validation over the training and validation blocks of a split manifest.

One test split of 20 blocks ranks single runs poorly on this dataset (seeds differ by 3
points). Cross-validation gives every non-test block its turn as held-out data: in fold k the
blocks of fold k are the test split, those of fold k+1 pick the best epoch, the rest train.
The manifest's own test split is left out of every fold, so it stays unseen.

Folds are made per class: each class's groups, shuffled with the seed, go one by one to the
fold that holds fewest of that class's images so far.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.data import Sample, load_manifest_dataset, read_manifest, write_manifest
from training.shifts import fill_corner


def fold_manifests(samples: list[Sample], folds: int, seed: int = 0) -> list[list[Sample]]:
    """`folds` manifests over the samples in train/val: fold k is test, fold k+1 validation."""
    if folds < 3:
        raise ValueError("cross-validation needs at least 3 folds (test, validation, training)")
    pool = [s for s in samples if s.split in ("train", "val")]
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    by_class: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in pool:
        by_class[s.label][s.group] += 1
    for label in sorted(by_class):
        groups = sorted(by_class[label].items())
        rng.shuffle(groups)
        filled = [0] * folds
        for group, count in groups:
            target = min(range(folds), key=lambda f: (filled[f], f))
            fold_of[group] = target
            filled[target] += count
    manifests = []
    for k in range(folds):
        role = {k: "test", (k + 1) % folds: "val"}
        manifests.append([replace(s, split=role.get(fold_of[s.group], "train")) for s in pool])
    return manifests


def write_folds(manifest: Path, folds: int, out: Path, seed: int = 0) -> list[Path]:
    """Write fold-<k>.csv manifests for `manifest`'s train/val samples into `out`."""
    paths = []
    for k, samples in enumerate(fold_manifests(read_manifest(manifest), folds, seed)):
        path = out / f"fold-{k}.csv"
        write_manifest(samples, path)
        paths.append(path)
    return paths


# the turns and flips `held_out_accuracy` can average over, by how many are asked for
VIEW_SETS: dict[int, tuple[str, ...]] = {
    1: ("as is",),
    2: ("as is", "transposed"),
    4: ("as is", "turned 90", "turned 180", "turned 270"),
    8: ("as is", "turned 90", "turned 180", "turned 270", "transposed", "rows flipped", "columns flipped",
        "anti-transposed"),
}
_VIEWS = {
    "as is": lambda x: x,
    "turned 90": lambda x: np.rot90(x, 1, axes=(1, 2)),
    "turned 180": lambda x: x[:, ::-1, ::-1],
    "turned 270": lambda x: np.rot90(x, 3, axes=(1, 2)),
    "transposed": lambda x: x.transpose(0, 2, 1, 3),
    "rows flipped": lambda x: x[:, ::-1],
    "columns flipped": lambda x: x[:, :, ::-1],
    "anti-transposed": lambda x: x[:, ::-1, ::-1].transpose(0, 2, 1, 3),
}


def dihedral_views(images: np.ndarray, count: int) -> list[np.ndarray]:
    """NHWC `images` under `count` of their 8 turns and flips (VIEW_SETS). For more than one view the
    scale-bar corner is filled first, as training fills it before any turn, so that no turn moves the
    bar to where the model's filter does not mask it."""
    if count not in VIEW_SETS:
        raise ValueError(f"views must be one of {sorted(VIEW_SETS)}, not {count}")
    if count == 1:
        return [images]
    filled = fill_corner(images)
    return [np.ascontiguousarray(_VIEWS[name](filled)) for name in VIEW_SETS[count]]


def held_out_accuracy(members: list[Path], data_dir: Path, views: int = 1) -> dict:
    """Accuracy on a fold's test blocks (run/split.csv) of a trained model (run/model.keras) or,
    given several runs of that fold, of their mean probability: the fold as a seed ensemble. With
    `views` above 1, each image's probability is also averaged over that many of its turns and flips
    (test-time augmentation, `dihedral_views`)."""
    from training.model import load_keras_model, predict_probabilities  # imports Keras

    manifests = {(run / "split.csv").read_bytes() for run in members}
    if len(manifests) > 1:
        raise ValueError(f"runs of different folds cannot be averaged: {' + '.join(map(str, members))}")
    dataset = load_manifest_dataset(data_dir, members[0] / "split.csv", splits=("test",))
    turned = dihedral_views(dataset.images, views)
    probabilities = np.mean([predict_probabilities(model, view)
                             for model in (load_keras_model(run / "model.keras") for run in members)
                             for view in turned], axis=0)
    labels = np.array([s.label for s in dataset.samples])
    right = probabilities.argmax(axis=1) == labels
    groups = sorted({s.group for s in dataset.samples})
    return {"run": "+".join(run.name for run in members), "members": len(members), "views": views,
            "images": int(len(labels)), "blocks": len(groups), "accuracy": float(right.mean()),
            "per_class": {c: float(right[labels == c].mean()) for c in sorted(set(labels.tolist()))}}
