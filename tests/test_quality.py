"""Input-quality warnings: none on real smears, the right one on each kind of bad image made in code."""

from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import helpers_smears as smears
from app.imaging import decode_image
from app.quality import (
    FOCUS_MIN_LAPLACIAN_VAR,
    OFF_STAIN_HUES,
    OFF_STAIN_SATURATION,
    SCALE_LEVEL,
    assess_quality,
    measure,
    structure_scale,
)
from training.quantize import split_rows
from training.shifts import widen, wider_field

MODELS = Path(__file__).resolve().parents[1] / "models"


def codes(pixels: np.ndarray) -> list[str]:
    return [warning.code for warning in assess_quality(pixels)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_smear_made_in_code_draws_no_warning(seed: int) -> None:
    assert codes(smears.smear(seed)) == []


def test_a_greyscale_smear_is_monochrome() -> None:
    grey = smears.greyscale(smears.smear())
    (warning,) = assess_quality(grey)
    assert warning.code == "monochrome" and "send the camera's colour image" in warning.detail


def test_a_grey_photograph_sent_as_colour_jpeg_is_monochrome(real_images: dict[str, Path]) -> None:
    grey = Image.open(real_images["Pre"]).convert("L").convert("RGB")  # three equal channels, as RGB
    buffer = io.BytesIO()
    grey.save(buffer, format="JPEG", quality=75)
    assert codes(decode_image(buffer.getvalue())) == ["monochrome"]
    assert codes(decode_image(real_images["Pre"].read_bytes())) == []  # the colour original: no warning


def test_a_faintly_tinted_smear_is_not_monochrome() -> None:
    """Coloured means channels 6 levels apart or more; a smear whose cells differ that much is not grey."""
    tinted = smears.greyscale(smears.smear()).astype(np.int16)
    tinted[..., 2] = np.clip(tinted[..., 2] + 6, 0, 255)  # every pixel but the white ones gains blue
    share = measure(tinted.astype(np.uint8)).colour_share
    assert share >= 0.05
    assert "monochrome" not in codes(tinted.astype(np.uint8))


@pytest.mark.parametrize("radius", [1.5, 2.0, 4.0])
def test_blur_is_out_of_focus(radius: float) -> None:
    assert codes(smears.blurred(smears.smear(), radius)) == ["out_of_focus"]


def test_dark_image_is_under_exposed() -> None:
    assert codes(smears.scaled(smears.smear(), 0.4)) == ["under_exposed"]


def test_washed_out_image_is_over_exposed() -> None:
    assert codes(smears.scaled(smears.smear(), 1.0, 80)) == ["over_exposed"]


@pytest.mark.parametrize(
    ("colour", "expected"),
    [
        ((128, 128, 128), ["not_smear_like"]),
        ((255, 255, 255), ["over_exposed", "not_smear_like"]),
        ((0, 0, 0), ["under_exposed", "not_smear_like"]),
        ((40, 180, 60), ["not_smear_like"]),
    ],
)
def test_plain_colours_are_not_smear_like(colour: tuple[int, int, int], expected: list[str]) -> None:
    warnings = assess_quality(smears.plain(colour))
    assert [w.code for w in warnings] == expected
    assert "nearly uniform" in warnings[-1].detail


def test_a_landscape_photo_is_not_smear_like() -> None:
    (warning,) = assess_quality(smears.landscape())
    assert warning.code == "not_smear_like"
    assert "colours (orange to cyan)" in warning.detail and "background is not bright" in warning.detail


def test_details_tell_the_technician_what_to_do() -> None:
    (blur,) = assess_quality(smears.blurred(smears.smear()))
    assert "refocus" in blur.detail
    (dark,) = assess_quality(smears.scaled(smears.smear(), 0.4))
    assert "increase the illumination" in dark.detail
    (bright,) = assess_quality(smears.scaled(smears.smear(), 1.0, 80))
    assert "reduce the illumination" in bright.detail


def test_measures_are_those_of_the_module_table() -> None:
    flat = measure(smears.plain((10, 20, 30)))
    assert flat.laplacian_var == 0 and flat.std_grey < 1e-3
    assert flat.laplacian_var < FOCUS_MIN_LAPLACIAN_VAR


@pytest.mark.parametrize("image", ["smear", "landscape", "noise"])
def test_measures_equal_the_textbook_statistics(image: str) -> None:
    """measure() builds grey and the Laplacian in place in float32; the statistics must be those
    of ITU-R 601 grey and the 4-neighbour Laplacian computed plainly in float64."""
    pixels = {"smear": smears.smear(3), "landscape": smears.landscape(1),
              "noise": np.random.default_rng(5).integers(0, 256, (224, 224, 3), dtype=np.uint8)}[image]
    grey = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    found = measure(pixels)
    assert found.laplacian_var == pytest.approx(laplacian.var(), rel=1e-4)
    assert found.mean_grey == pytest.approx(grey.mean(), rel=1e-5)
    assert found.std_grey == pytest.approx(grey.std(), rel=1e-4)
    assert found.p90_grey == pytest.approx(np.sort(grey.ravel())[int(0.9 * (grey.size - 1))], abs=1e-3)
    assert found.dark_share == np.count_nonzero(pixels.max(axis=2) <= 10) / grey.size
    assert found.clipped_share == np.count_nonzero(pixels.min(axis=2) >= 250) / grey.size
    spread = pixels.max(axis=2).astype(int) - pixels.min(axis=2)
    assert found.colour_share == np.count_nonzero(spread >= 6) / grey.size


@pytest.mark.slow
def test_no_real_smear_draws_a_warning(data_dir: Path) -> None:
    """The thresholds were set outside the range of the whole dataset; keep it that way."""
    files = sorted(data_dir.glob("*/*.jpg"))
    assert len(files) > 2000
    warned = {}
    for path in files:
        found = codes(decode_image(path.read_bytes()))
        if found:
            warned[path.name] = found
    assert warned == {}, f"{len(warned)} of {len(files)} real images drew warnings: {dict(list(warned.items())[:10])}"


def test_off_stain_share_is_the_hsv_definition() -> None:
    """The division-free integer test equals hue/saturation computed the textbook way (colorsys)."""
    pixels = np.random.default_rng(7).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    lo, hi = OFF_STAIN_HUES
    expected = 0
    for r, g, b in pixels.reshape(-1, 3).tolist():
        hue, saturation, _ = colorsys.rgb_to_hsv(r, g, b)  # integers: exact quotients at the thresholds
        if saturation > OFF_STAIN_SATURATION and lo <= round(hue * 360, 9) < hi:
            expected += 1
    assert measure(pixels).off_stain_share == expected / (96 * 96)


def test_a_smear_made_in_code_seen_in_a_field_four_times_as_wide_has_cells_too_small() -> None:
    tiles = np.stack([smears.smear(seed) for seed in range(16)])
    assert codes(widen(tiles[:4], 1.0)) == []  # the mosaic's own top-left image, uncut: no warning
    (warning,) = assess_quality(widen(tiles, 4.0))
    assert warning.code == "cells_too_small"
    assert "times smaller" in warning.detail and "100x oil" in warning.detail and "cropped around the cells" in warning.detail


def test_real_fields_three_times_as_wide_have_cells_too_small(data_dir: Path) -> None:
    """The magnification guard on the dataset's own images: a 3x3 mosaic of each test image with
    the next ones of its smear session, resized to 224 as a large photograph is; the originals pass."""
    rows = split_rows(MODELS / "split.csv", "test")[::12]  # 41 across the sessions
    images = np.stack([decode_image((data_dir / row["file"]).read_bytes()) for row in rows])
    wide = wider_field(images, [row["group"] for row in rows], 3.0)
    assert [codes(image) for image in images] == [[]] * len(rows)
    flagged = [codes(image) == ["cells_too_small"] for image in wide]
    assert np.mean(flagged) >= 0.8, f"only {np.mean(flagged):.0%} of {len(rows)} 3x wider fields flagged"


def test_structure_scale_is_the_ring_averaged_autocorrelation_computed_plainly() -> None:
    """The FFT version equals, on the image averaged over 2x2 blocks, the circular autocorrelation
    summed lag by lag, averaged over rings of whole-pixel radius, the first ring below the level
    interpolated linearly, and the radius doubled back to the full image's pixels."""
    rng = np.random.default_rng(3)
    grey = np.asarray(Image.fromarray(rng.integers(0, 256, (81, 80), dtype=np.uint8)).filter(
        ImageFilter.GaussianBlur(3.0)), dtype=np.float64)
    half = grey[:80].reshape(40, 2, 40, 2).mean(axis=(1, 3))  # the odd last row dropped
    centred = half - half.mean()
    sums: dict[int, list[float]] = {}
    for dy in range(-20, 20):
        for dx in range(-20, 20):
            lag = int(np.rint(np.hypot(dy, dx)))
            sums.setdefault(lag, []).append(float(np.sum(centred * np.roll(centred, (dy, dx), axis=(0, 1)))))
    profile = np.array([np.mean(sums[lag]) for lag in range(21)])
    profile /= profile[0]
    k = int(np.flatnonzero(profile < SCALE_LEVEL)[0])
    expected = 2 * (k - 1 + (profile[k - 1] - SCALE_LEVEL) / (profile[k - 1] - profile[k]))
    assert structure_scale(grey.astype(np.float32)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("radius", [4.0, 8.0])
def test_structure_scale_follows_the_size_of_what_is_drawn(radius: float) -> None:
    """Discs twice as large give a scale about twice as large: the statistic measures size."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:224, 0:224]
    image = np.full((224, 224), 230.0)
    for _ in range(int(6000 / radius**2)):
        cy, cx = rng.uniform(0, 224, 2)
        image[(y - cy) ** 2 + (x - cx) ** 2 < radius**2] = 120.0
    small = structure_scale(image.astype(np.float32))
    double = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((448, 448), Image.Resampling.NEAREST))
    large = structure_scale(double[112:336, 112:336].astype(np.float32))
    assert radius / 2 < small < 2 * radius
    assert large / small == pytest.approx(2.0, rel=0.2)


def test_a_uniform_image_has_no_structure_scale() -> None:
    assert structure_scale(np.full((224, 224), 200.0, dtype=np.float32)) == 0.0
