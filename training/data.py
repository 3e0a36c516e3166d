"""Reading a class-folder dataset, removing duplicates, and splitting it without leakage.

The dataset carries no patient ids. Consecutive file numbers tend to come from the same
smear session, so the block-grouped split keeps whole runs of `block_size` consecutive
numbers together, and merges runs that hold a near-duplicate pair (the same field re-shot).
Exact duplicates (same sha256) are dropped, keeping the first file by name.

Exceptions:
    DatasetError   (a folder that is not a usable dataset; the message says what is wrong)
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from app.imaging import ImageDecodeError, decode_image
from app.labels import CLASS_IDS, class_of_folder

SPLITS = ("train", "val", "test")
NEAR_DUPLICATE_MAD = 5.0  # mean absolute difference on 0..255, see the dataset's SOURCE.md
NEAR_DUPLICATE_WINDOW = 3  # compare each file with this many following numbers
MANIFEST_FIELDS = ("file", "sha256", "class", "group", "split")


class DatasetError(ValueError):
    """The folder is not a usable dataset."""


@dataclass(frozen=True)
class Sample:
    """One image file of the dataset and where the split put it."""

    file: str  # relative to the dataset root, with forward slashes
    sha256: str
    label: int  # index into CLASS_IDS
    group: str
    split: str  # train, val, test, or duplicate (an exact copy, never used)

    @property
    def class_id(self) -> str:
        return CLASS_IDS[self.label]


@dataclass
class Dataset:
    """Decoded images of the kept (non-duplicate) samples, in manifest order."""

    samples: list[Sample]
    images: np.ndarray  # uint8 (N, 224, 224, 3), one row per kept sample

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
        index = [i for i, s in enumerate(self.samples) if s.split == split]
        labels = np.array([self.samples[i].label for i in index], dtype=np.int64)
        return self.images[index], labels, [self.samples[i] for i in index]


def find_class_folders(root: Path) -> dict[str, Path]:
    """Map each class id to its folder under `root`; fail naming what is missing."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        class_id = class_of_folder(child.name)
        if child.is_dir() and class_id is not None:
            if class_id in found:
                raise DatasetError(f"two folders for class {class_id}: {found[class_id].name}, {child.name}")
            found[class_id] = child
    missing = [c for c in CLASS_IDS if c not in found]
    if missing:
        raise DatasetError(
            f"{root} lacks class folders for {', '.join(missing)}; expected subfolders "
            "Benign/ Early/ Pre/ Pro/ (any case) or benign/ early_pre_b/ pre_b/ pro_b/"
        )
    return found


def split_seed(config: dict) -> int:
    """The seed a run's split was drawn with, from its recorded config (runs from before
    split_seed existed drew it with their one seed)."""
    value = config.get("split_seed")
    return config["seed"] if value is None else value


def load_dataset(root: Path, *, split: str = "blocks", block_size: int = 25, seed: int = 0,
                 fractions: tuple[float, float] = (0.15, 0.15)) -> Dataset:
    """Read, decode, deduplicate and split a class-folder dataset.

    Args:
        root: folder with one subfolder per class.
        split: "blocks" (groups of consecutive file numbers, near-duplicates merged) or
            "random" (each file on its own; for comparison only, it leaks sessions).
        block_size: how many consecutive file numbers form one group.
        seed: the split's random seed.
        fractions: the (validation, test) share of each class.
    """
    if split not in {"blocks", "random"}:
        raise DatasetError(f"unknown split {split!r}; use 'blocks' or 'random'")
    files, raw, images = _read_all(root)
    digests = [hashlib.sha256(data).hexdigest() for data in raw]
    first_by_hash: dict[str, int] = {}
    kept: list[int] = []
    samples: list[Sample] = []
    for i, (rel, label) in enumerate(files):
        original = first_by_hash.setdefault(digests[i], i)
        if original != i and files[original][1] != label:
            raise DatasetError(f"{rel} and {files[original][0]} are the same file in two classes")
        if original == i:
            kept.append(i)
        samples.append(Sample(rel, digests[i], label, _block_group(rel, label, block_size),
                              "duplicate" if original != i else ""))
    groups = _merge_near_duplicates([samples[i] for i in kept], images[kept])
    kept_samples = [replace(samples[i], group=groups[samples[i].file]) for i in kept]
    if split == "random":
        kept_samples = [replace(s, group=s.file) for s in kept_samples]
    assigned = _assign_splits(kept_samples, seed, fractions)
    by_file = {s.file: s for s in assigned}
    duplicates = [s for s in samples if s.split == "duplicate"]
    # Kept samples first, in the order of `images`; duplicates last (they have no image row).
    return Dataset(samples=[by_file[samples[i].file] for i in kept] + duplicates, images=images[kept])


def read_manifest(path: Path) -> list[Sample]:
    """The samples of a split manifest written by `write_manifest`."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or tuple(rows[0].keys()) != MANIFEST_FIELDS:
        raise DatasetError(f"{path} is not a split manifest (expected columns {', '.join(MANIFEST_FIELDS)})")
    unknown = sorted({r["class"] for r in rows} - set(CLASS_IDS))
    if unknown:
        raise DatasetError(f"{path} names unknown classes: {', '.join(unknown)}")
    return [Sample(r["file"], r["sha256"], CLASS_IDS.index(r["class"]), r["group"], r["split"]) for r in rows]


def load_manifest_dataset(root: Path, manifest: Path, splits: tuple[str, ...] = SPLITS) -> Dataset:
    """The images that `manifest` puts in `splits`, read from `root` and checked against their sha256.

    Only those files need to be there: a copy of the training and validation images is enough
    to train on a split drawn elsewhere.
    """
    samples = [s for s in read_manifest(manifest) if s.split in splits]
    problems: list[str] = []
    images: list[np.ndarray] = []
    for s in samples:
        path = root / s.file
        if not path.is_file():
            problems.append(f"{s.file} (missing)")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != s.sha256:
            problems.append(f"{s.file} (content differs from the manifest's sha256)")
            continue
        try:
            images.append(decode_image(data))
        except ImageDecodeError as err:
            problems.append(f"{s.file} ({err})")
    if problems:
        raise DatasetError(f"{len(problems)} file(s) of manifest {manifest} are not usable under {root}: "
                           + "; ".join(problems[:20]) + ("; ..." if len(problems) > 20 else ""))
    if not samples:
        raise DatasetError(f"manifest {manifest} has no samples in {', '.join(splits)}")
    return Dataset(samples=samples, images=np.stack(images))


def _read_all(root: Path) -> tuple[list[tuple[str, int]], list[bytes], np.ndarray]:
    folders = find_class_folders(root)
    files: list[tuple[str, int]] = []
    raw: list[bytes] = []
    decoded: list[np.ndarray] = []
    broken: list[str] = []
    for label, class_id in enumerate(CLASS_IDS):
        paths = sorted(p for p in folders[class_id].iterdir() if not p.name.startswith("."))
        for path in paths:
            rel = path.relative_to(root).as_posix()
            if path.is_dir():
                broken.append(f"{rel} (a folder inside a class folder)")
                continue
            data = path.read_bytes()
            try:
                decoded.append(decode_image(data))
            except ImageDecodeError as err:
                broken.append(f"{rel} ({err})")
                continue
            files.append((rel, label))
            raw.append(data)
    if broken:
        raise DatasetError(f"{len(broken)} file(s) in {root} do not decode as images: " + "; ".join(broken))
    empty = [c for i, c in enumerate(CLASS_IDS) if not any(label == i for _, label in files)]
    if empty:
        raise DatasetError(f"no images in the class folder(s) for {', '.join(empty)} under {root}")
    return files, raw, np.stack(decoded)


def file_number(name: str) -> int | None:
    """The last run of digits in a file's stem (WBC-Malignant-Pre-042.jpg -> 42)."""
    match = re.search(r"(\d+)\D*$", Path(name).stem)
    return int(match.group(1)) if match else None


def _block_group(rel: str, label: int, block_size: int) -> str:
    number = file_number(rel)
    if number is None:
        return f"{CLASS_IDS[label]}:{Path(rel).stem}"
    return f"{CLASS_IDS[label]}:{number // block_size:04d}"


def _merge_near_duplicates(samples: list[Sample], images: np.ndarray) -> dict[str, str]:
    """Union the groups of files whose small thumbnails differ by less than the threshold."""
    thumbs = images.reshape(len(images), 56, 4, 56, 4, 3).mean(axis=(2, 4))
    parent = {s.group: s.group for s in samples}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    order = sorted(range(len(samples)), key=lambda i: (samples[i].label, file_number(samples[i].file) or -1,
                                                      samples[i].file))
    for pos, i in enumerate(order):
        for j in order[pos + 1: pos + 1 + NEAR_DUPLICATE_WINDOW]:
            if samples[j].label != samples[i].label:
                break
            if float(np.abs(thumbs[i] - thumbs[j]).mean()) < NEAR_DUPLICATE_MAD:
                a, b = find(samples[i].group), find(samples[j].group)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {s.file: find(s.group) for s in samples}


def _assign_splits(samples: list[Sample], seed: int, fractions: tuple[float, float]) -> list[Sample]:
    """Per class, shuffle whole groups and fill test, then validation, the rest train."""
    rng = random.Random(seed)
    by_class: dict[int, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_class[s.label][s.group].append(s)
    out: list[Sample] = []
    for label in sorted(by_class):
        groups = sorted(by_class[label].items())
        rng.shuffle(groups)
        total = sum(len(members) for _, members in groups)
        targets = {"test": fractions[1] * total, "val": fractions[0] * total}
        filled = {"test": 0, "val": 0}
        for _, members in groups:
            split = next((k for k in ("test", "val") if filled[k] < targets[k]), "train")
            if split != "train":
                filled[split] += len(members)
            out.extend(replace(s, split=split) for s in members)
    return out


def manifest_csv(samples: list[Sample]) -> str:
    """The split as CSV text (file, sha256, class, group, split), sorted by file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for s in sorted(samples, key=lambda s: s.file):
        writer.writerow((s.file, s.sha256, s.class_id, s.group, s.split))
    return buffer.getvalue()


def manifest_sha256(samples: list[Sample]) -> str:
    return hashlib.sha256(manifest_csv(samples).encode("utf-8")).hexdigest()


def write_manifest(samples: list[Sample], path: Path) -> str:
    """Write the split manifest to `path`; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest_csv(samples), encoding="utf-8")
    return manifest_sha256(samples)
