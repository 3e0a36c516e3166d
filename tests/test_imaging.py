"""The decode contract of app.imaging.decode_image, pinned by golden values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import encode, gradient, png_declaring
from app.imaging import (
    IMAGE_SIZE,
    CorruptImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedImageError,
    claimed_format,
    decode_image,
)


def test_square_224_image_passes_through_unchanged():
    source = gradient(IMAGE_SIZE, IMAGE_SIZE)
    out = decode_image(encode(Image.fromarray(source), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, source)


def test_rectangle_is_centre_cropped_then_resized_golden():
    out = decode_image(encode(Image.fromarray(gradient(300, 200)), "PNG"))
    # The centred 200x200 square starts at column 50: red there is 50 * 255 // 299 = 42.
    assert out[0, 0].tolist() == [42, 0, 25]
    assert out[111, 111].tolist() == [127, 126, 126]
    assert out[223, 223].tolist() == [212, 255, 229]
    assert int(out.sum(dtype=np.int64)) == 19117435


def test_large_jpeg_uses_reduced_decode_and_keeps_the_picture():
    big = np.kron(gradient(250, 200), np.ones((8, 8, 1), dtype=np.uint8))  # 2000x1600
    out = decode_image(encode(Image.fromarray(big), "JPEG", quality=95))
    direct = np.asarray(Image.fromarray(big[:, 200:1800]).resize((224, 224), Image.Resampling.BILINEAR))
    assert np.abs(out.astype(int) - direct.astype(int)).mean() < 2.0


def test_alpha_is_composited_over_white():
    rgba = np.zeros((224, 224, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:112, :, 3] = 0  # top half fully transparent
    rgba[112:, :, 3] = 255
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[200, 0].tolist() == [200, 0, 0]


def test_palette_with_transparency_is_composited_over_white():
    image = Image.new("P", (224, 224), 0)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.paste(1, (0, 0, 224, 100))
    out = decode_image(encode(image, "PNG", transparency=0))
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[200, 200].tolist() == [255, 255, 255]


def test_sixteen_bit_grey_is_scaled_by_bit_depth_not_clipped():
    values = np.full((224, 224), 65535, dtype=np.uint16)
    values[:, :112] = 32896  # 128 * 257
    out = decode_image(encode(Image.fromarray(values), "PNG"))
    assert out[0, 0].tolist() == [128, 128, 128]
    assert out[0, 200].tolist() == [255, 255, 255]


def test_grayscale_becomes_three_equal_channels():
    out = decode_image(encode(Image.fromarray(gradient(224, 224)[..., 0]), "PNG"))
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_cmyk_jpeg_is_converted_to_rgb():
    cyan = Image.new("CMYK", (224, 224), (255, 0, 0, 0))
    red, green, blue = decode_image(encode(cyan, "JPEG", quality=95))[100, 100].tolist()
    assert red < 30 and green > 225 and blue > 225


def test_exif_orientation_is_applied():
    pixels = np.zeros((224, 224, 3), dtype=np.uint8)
    pixels[:20, :20] = 255  # a white mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored picture must be turned 90 degrees clockwise for display
    out = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes()))
    assert out[5, 218].mean() > 200  # the mark is now top-right
    assert out[5, 5].mean() < 50


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "WEBP"])
def test_other_supported_formats_decode(fmt):
    source = gradient(224, 224)
    options = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(source), fmt, **options))
    np.testing.assert_array_equal(out, source)


def test_empty_bytes_are_refused():
    with pytest.raises(CorruptImageError, match="empty"):
        decode_image(b"")


def test_text_is_not_an_image():
    with pytest.raises(UnsupportedImageError, match="not a recognised image"):
        decode_image(b"patient,result\n1,ALL\n")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "BMP", "WEBP"])
def test_each_accepted_format_is_known_by_its_signature(fmt):
    data = encode(Image.fromarray(gradient(64, 48)), fmt)
    assert claimed_format(data) == fmt
    # Its header overwritten after the signature: a damaged file (400), not an unsupported one (415),
    # whether Pillow gives up identifying it (most formats) or reading its header (BMP).
    keep = {"JPEG": 3, "PNG": 8, "TIFF": 4, "BMP": 2, "WEBP": 12}[fmt]
    damaged = data[:keep] + (b"\x00" * 4 if fmt == "BMP" else b"") + b"\x7f" * 40
    with pytest.raises(CorruptImageError, match="damaged"):
        decode_image(damaged)


def test_other_files_with_a_similar_start_are_still_not_images():
    assert claimed_format(b"BMI report: patient 1, ALL") is None  # no BMP header's reserved zeros
    assert claimed_format(b"RIFF\x24\x00\x00\x00WAVEfmt ") is None  # a RIFF file, but sound
    with pytest.raises(UnsupportedImageError, match="not a recognised image"):
        decode_image(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40)


def test_gif_is_not_accepted():
    with pytest.raises(UnsupportedImageError, match="GIF"):
        decode_image(encode(Image.new("RGB", (10, 10)), "GIF"))


def test_multi_page_tiff_is_refused():
    pages = [Image.new("RGB", (32, 32), (i * 50, 0, 0)) for i in range(3)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(UnsupportedImageError, match="3 frames"):
        decode_image(data)


def test_a_multi_picture_jpeg_is_refused_as_such():
    # it was "MPO images are not accepted; send JPEG", to a sender whose file is a JPEG
    pictures = [Image.new("RGB", (64, 64), (i * 90, 0, 0)) for i in range(2)]
    data = encode(pictures[0], "MPO", save_all=True, append_images=pictures[1:])
    assert data.startswith(b"\xff\xd8\xff")
    with pytest.raises(UnsupportedImageError, match="the JPEG holds 2 pictures"):
        decode_image(data)


def test_truncated_jpeg_is_corrupt():
    data = encode(Image.fromarray(gradient(224, 224)), "JPEG", quality=90)
    with pytest.raises(CorruptImageError):
        decode_image(data[: len(data) // 2])


def test_pixel_bomb_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="2,500,000,000 pixels"):
        decode_image(png_declaring(50_000, 50_000))


@pytest.mark.parametrize("size", [(1, 1), (31, 400), (5000, 20)])
def test_a_thumbnail_is_refused(size: tuple[int, int]):
    with pytest.raises(ImageTooSmallError, match=f"{size[0]}x{size[1]} pixels; its shorter side must be at least 32"):
        decode_image(encode(Image.new("RGB", size, (200, 150, 220)), "PNG"))


def test_the_smallest_accepted_side_is_32():
    assert decode_image(encode(Image.fromarray(gradient(600, 32)), "PNG")).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=300 * 300 - 1)
    assert decode_image(data, max_pixels=300 * 300).shape == (224, 224, 3)


def test_dataset_jpeg_decodes_to_its_own_pixels(data_dir: Path):
    path = next((data_dir / "Pre").glob("*.jpg"))
    out = decode_image(path.read_bytes())
    with Image.open(path) as image:
        np.testing.assert_array_equal(out, np.asarray(image.convert("RGB")))
