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


def held_out_accuracy(members: list[Path], data_dir: Path) -> dict:
    """Accuracy on a fold's test blocks (run/split.csv) of a trained model (run/model.keras) or,
    given several runs of that fold, of their mean probability: the fold as a seed ensemble."""
    from training.model import load_keras_model, predict_probabilities  # imports Keras

    manifests = {(run / "split.csv").read_bytes() for run in members}
    if len(manifests) > 1:
        raise ValueError(f"runs of different folds cannot be averaged: {' + '.join(map(str, members))}")
    dataset = load_manifest_dataset(data_dir, members[0] / "split.csv", splits=("test",))
    probabilities = np.mean([predict_probabilities(load_keras_model(run / "model.keras"), dataset.images)
                             for run in members], axis=0)
    labels = np.array([s.label for s in dataset.samples])
    right = probabilities.argmax(axis=1) == labels
    groups = sorted({s.group for s in dataset.samples})
    return {"run": "+".join(run.name for run in members), "members": len(members), "images": int(len(labels)),
            "blocks": len(groups), "accuracy": float(right.mean()),
            "per_class": {c: float(right[labels == c].mean()) for c in sorted(set(labels.tolist()))}}
