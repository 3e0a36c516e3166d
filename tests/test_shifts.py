"""The resolution and field-of-view shifts and their audit scripts (training.shifts, training.resolution,
training.magnification)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.labels import CLASS_IDS
from synthetic import disks, make_dataset
from training.data import Sample, write_manifest
from training.magnification import main as magnification_main
from training.resolution import main as resolution_main
from training.shifts import lower_resolution, narrower_field, session_neighbours, widen, wider_field


def fine_stripes(n: int = 2) -> np.ndarray:
    cells = (np.indices((224, 224)).sum(axis=0) // 2) % 2  # 2-pixel diagonal stripes: detail a small camera loses
    return np.repeat((cells * 255).astype(np.uint8)[None, :, :, None], 3, axis=3).repeat(n, axis=0)


def test_fewer_pixels_keep_the_shape_and_lose_the_detail() -> None:
    images = fine_stripes()
    before = images.copy()
    full = lower_resolution(images, 224)
    small = lower_resolution(images, 32)
    assert np.array_equal(images, before)  # the input is not changed
    assert full.shape == small.shape == images.shape and small.dtype == np.uint8
    assert np.array_equal(full, images)
    assert small.std() < 0.2 * images.std()  # the stripes are averaged away


def test_the_audit_prints_one_row_per_side(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_dataset(tmp_path / "data", per_class=2)
    manifest = tmp_path / "split.csv"
    write_manifest([Sample(f"{folder}/{path.name}", "0" * 64, CLASS_IDS.index(label), "g", "test")
                    for folder, label in (("Benign", "benign"), ("Pro", "pro_b"))
                    for path in sorted((data / folder).iterdir())], manifest)
    resolution_main(["--model", str(tiny_model), "--manifest", str(manifest), "--data-dir", str(data),
                     "--sides", "224", "64"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("4 test images")
    assert [line.split("|")[1].strip() for line in lines[3:]] == ["224", "64"]


def dark_area(image: np.ndarray) -> int:
    return int(np.count_nonzero(image.max(axis=-1) < 128))


def test_a_wider_field_shows_the_same_cells_smaller() -> None:
    tiles = disks([(112, 112), (60, 60), (150, 150), (100, 100)])
    assert np.array_equal(widen(tiles, 1.0), tiles[0])
    twice = widen(tiles, 2.0)  # the whole mosaic, halved: four disks of half the diameter
    assert twice.shape == tiles[0].shape and twice.dtype == np.uint8
    assert abs(dark_area(twice) - dark_area(tiles[0])) < 0.05 * dark_area(tiles[0])
    # the first tile's disk now sits at (56, 56), a quarter of its area
    assert abs(dark_area(twice[:112, :112]) - dark_area(tiles[0]) / 4) < 0.05 * dark_area(tiles[0])
    half = widen(tiles, 1.5, top=10, left=20)
    assert np.array_equal(half, widen(tiles, 1.5, top=10, left=20))  # deterministic
    for factor in (0.9, 2.5):
        with pytest.raises(ValueError, match="1 to 2 times"):
            widen(tiles, factor)
    with pytest.raises(ValueError, match="square mosaic"):
        widen(tiles[:3], 1.5)


def test_a_field_three_times_as_wide_is_cut_from_a_3x3_mosaic() -> None:
    tiles = disks([(112, 112)] * 9)
    thrice = widen(tiles, 3.0)  # nine disks of a third of the diameter, one per 75-pixel cell
    assert thrice.shape == tiles[0].shape
    assert abs(dark_area(thrice) - dark_area(tiles[0])) < 0.08 * dark_area(tiles[0])
    assert abs(dark_area(thrice[:75, :75]) - dark_area(tiles[0]) / 9) < 0.08 * dark_area(tiles[0]) / 9 + 20


def test_a_field_is_widened_with_the_next_images_of_its_session() -> None:
    assert session_neighbours(["a", "a", "b", "a"]).tolist() == [[1, 3, 0], [3, 0, 1], [2, 2, 2], [0, 1, 3]]
    images = disks([(40, 40), (80, 80), (120, 120), (160, 160)])
    before = images.copy()
    assert np.array_equal(wider_field(images, ["a"] * 4, 1.0), images)
    wide = wider_field(images, ["a", "a", "b", "b"], 2.0)
    assert np.array_equal(images, before)  # the input is not changed
    # image 0's field holds its own disk and image 1's (twice), none of the other session's
    assert np.array_equal(wide[0], widen(images[[0, 1, 0, 1]], 2.0))
    assert np.array_equal(wide[2], widen(images[[2, 3, 2, 3]], 2.0))
    # beyond twice as wide the field is a 3x3 mosaic, still of the image's own session only
    wider = wider_field(images, ["a", "a", "b", "b"], 3.0)
    assert np.array_equal(wider[0], widen(images[[0, 1, 0, 1, 0, 1, 0, 1, 0]], 3.0))
    assert np.array_equal(wider[3], widen(images[[3, 2, 3, 2, 3, 2, 3, 2, 3]], 3.0))


def test_a_narrower_field_shows_the_centre_larger() -> None:
    images = disks([(112, 112)])
    assert np.array_equal(narrower_field(images, 1.0), images)
    doubled = narrower_field(images, 2.0)
    assert abs(dark_area(doubled[0]) - 4 * dark_area(images[0])) < 0.05 * 4 * dark_area(images[0])


def test_the_field_audit_prints_one_row_per_field(tiny_model: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    data = make_dataset(tmp_path / "data", per_class=2)
    manifest = tmp_path / "split.csv"
    write_manifest([Sample(f"{folder}/{path.name}", "0" * 64, CLASS_IDS.index(label), f"{label}:0", "val")
                    for folder, label in (("Benign", "benign"), ("Pro", "pro_b"))
                    for path in sorted((data / folder).iterdir())], manifest)
    magnification_main(["--model", str(tiny_model), "--manifest", str(manifest), "--data-dir", str(data),
                        "--split", "val", "--wider", "1.5", "--narrower", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("4 val images")
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[3:]]
    assert [row[:2] for row in rows] == [["as the dataset's", "1.00x"], ["1.5x wider", "0.67x"],
                                         ["2x narrower", "2.00x"]]
    # the tiny model's card has no referral threshold, so the service accepts nothing
    assert all(row[3] == "0 of 4" and row[4] == "0" for row in rows)
