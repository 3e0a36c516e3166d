"""Dataset reading, deduplication and leakage-free splitting, on folders made in code."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from synthetic import make_dataset, png_bytes
from training.data import DatasetError, file_number, load_dataset, write_manifest

def test_file_number_reads_the_last_digits():
    assert file_number("WBC-Malignant-Pre-042.jpg") == 42
    assert file_number("Benign/img_7_copy.png") == 7
    assert file_number("nodigits.png") is None


def test_exact_duplicates_are_dropped_and_listed(tmp_path):
    root = make_dataset(tmp_path)
    original = root / "Pro" / "WBC-Malignant-Pro-003.png"
    (root / "Pro" / "WBC-Malignant-Pro-031.png").write_bytes(original.read_bytes())
    dataset = load_dataset(root, block_size=5)
    duplicates = [s for s in dataset.samples if s.split == "duplicate"]
    assert [s.file for s in duplicates] == ["Pro/WBC-Malignant-Pro-031.png"]
    assert len(dataset.images) == 4 * 30  # one row per kept file
    assert dataset.subset("train")[0].shape[1:] == (224, 224, 3)


def test_duplicate_across_classes_is_an_error(tmp_path):
    root = make_dataset(tmp_path)
    (root / "Pre" / "WBC-Malignant-Pre-099.png").write_bytes((root / "Early" / "WBC-Malignant-Early-001.png").read_bytes())
    with pytest.raises(DatasetError, match="same file in two classes"):
        load_dataset(root)


def test_no_group_crosses_a_split_and_near_duplicates_stay_together(tmp_path):
    root = make_dataset(tmp_path, per_class=40)
    # 009 and 010 fall in different blocks of 5 (1 and 2); make 010 a re-shot of 009.
    near = np.asarray(Image.open(root / "Early" / "WBC-Malignant-Early-009.png")).astype(int) + 2
    (root / "Early" / "WBC-Malignant-Early-010.png").write_bytes(png_bytes(np.clip(near, 0, 255).astype(np.uint8)))
    dataset = load_dataset(root, block_size=5, seed=3)
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for s in dataset.samples:
        splits_of_group[s.group].add(s.split)
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    by_file = {s.file: s for s in dataset.samples}
    assert by_file["Early/WBC-Malignant-Early-009.png"].group == by_file["Early/WBC-Malignant-Early-010.png"].group
    assert by_file["Early/WBC-Malignant-Early-011.png"].group != by_file["Early/WBC-Malignant-Early-016.png"].group
    assert {s.split for s in dataset.samples} == {"train", "val", "test"}


def test_random_split_puts_files_not_blocks(tmp_path):
    dataset = load_dataset(make_dataset(tmp_path), split="random", block_size=10)
    assert len({s.group for s in dataset.samples}) == len(dataset.samples)


def test_split_is_reproducible_and_written_as_a_manifest(tmp_path):
    root = make_dataset(tmp_path / "data")
    first = load_dataset(root, block_size=5, seed=1)
    digest = write_manifest(first.samples, tmp_path / "split.csv")
    assert write_manifest(load_dataset(root, block_size=5, seed=1).samples, tmp_path / "again.csv") == digest
    assert write_manifest(load_dataset(root, block_size=5, seed=2).samples, tmp_path / "other.csv") != digest
    with (tmp_path / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120
    assert set(rows[0]) == {"file", "sha256", "class", "group", "split"}
    assert {r["class"] for r in rows} == {"benign", "early_pre_b", "pre_b", "pro_b"}


def test_folder_names_are_case_insensitive(tmp_path):
    root = make_dataset(tmp_path, per_class=8)
    (root / "Benign").rename(root / "BENIGN")
    (root / "Pre").rename(root / "pre_b")
    assert len(load_dataset(root, block_size=2).images) == 32


def test_missing_class_folder_is_named(tmp_path):
    root = make_dataset(tmp_path, per_class=4)
    (root / "Pro").rename(root / "Other")
    with pytest.raises(DatasetError, match="lacks class folders for pro_b"):
        load_dataset(root)


def test_missing_root_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_empty_class_is_reported(tmp_path):
    root = make_dataset(tmp_path, per_class=4)
    for path in (root / "Early").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="no images .* early_pre_b"):
        load_dataset(root)


def test_undecodable_files_are_listed_by_name(tmp_path):
    root = make_dataset(tmp_path, per_class=4)
    (root / "Pre" / "notes.txt").write_text("not an image")
    good = (root / "Benign" / "WBC-Benign-001.png").read_bytes()
    (root / "Benign" / "WBC-Benign-002.png").write_bytes(good[:100])
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    message = str(caught.value)
    assert "2 file(s)" in message
    assert "Pre/notes.txt" in message and "Benign/WBC-Benign-002.png" in message


def test_a_manifest_split_loads_from_a_folder_with_only_its_files(tmp_path):
    from training.data import load_manifest_dataset, read_manifest

    data = make_dataset(tmp_path / "data", per_class=8)
    dataset = load_dataset(data, block_size=3, seed=0)
    manifest = tmp_path / "split.csv"
    write_manifest(dataset.samples, manifest)
    assert read_manifest(manifest) == sorted(dataset.samples, key=lambda s: s.file)
    # a copy holding only the training and validation images is enough to train on the split
    copy = tmp_path / "copy"
    for s in dataset.samples:
        if s.split in ("train", "val"):
            (copy / s.file).parent.mkdir(parents=True, exist_ok=True)
            (copy / s.file).write_bytes((data / s.file).read_bytes())
    loaded = load_manifest_dataset(copy, manifest, splits=("train", "val"))
    assert [s.split for s in loaded.samples] and {s.split for s in loaded.samples} == {"train", "val"}
    for split in ("train", "val"):
        images, labels, _ = loaded.subset(split)
        want_images, want_labels, _ = dataset.subset(split)
        order = np.argsort([s.file for s in dataset.subset(split)[2]])
        assert np.array_equal(labels, want_labels[order]) and np.array_equal(images, want_images[order])


def test_a_manifest_file_missing_or_changed_is_named(tmp_path):
    from training.data import load_manifest_dataset

    data = make_dataset(tmp_path / "data", per_class=6)
    dataset = load_dataset(data, block_size=3, seed=0)
    manifest = tmp_path / "split.csv"
    write_manifest(dataset.samples, manifest)
    train = [s for s in dataset.samples if s.split == "train"]
    (data / train[0].file).unlink()
    (data / train[1].file).write_bytes(png_bytes(np.zeros((224, 224, 3), np.uint8)))
    with pytest.raises(DatasetError) as err:
        load_manifest_dataset(data, manifest, splits=("train",))
    assert f"{train[0].file} (missing)" in str(err.value)
    assert f"{train[1].file} (content differs from the manifest's sha256)" in str(err.value)


def test_a_file_that_is_not_a_manifest_is_refused(tmp_path):
    from training.data import read_manifest

    bad = tmp_path / "split.csv"
    bad.write_text("name,label\na.png,benign\n")
    with pytest.raises(DatasetError, match="is not a split manifest"):
        read_manifest(bad)
