"""The resolution shift and its audit script (training.shifts.lower_resolution, training.resolution)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.labels import CLASS_IDS
from synthetic import make_dataset
from training.data import Sample, write_manifest
from training.resolution import main as resolution_main
from training.shifts import lower_resolution


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
