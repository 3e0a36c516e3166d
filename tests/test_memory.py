"""Flat memory: glibc malloc settings (app.memory), and no reference cycles holding request data."""

from __future__ import annotations

import gc
import platform
import types
from pathlib import Path

import pytest

import helpers_images as images
from app.classifier import load_classifier
from app.imaging import DEFAULT_MAX_PIXELS
from app.memory import ARENA_MAX, MMAP_THRESHOLD_BYTES, tune_malloc
from app.pipeline import classify_uploads
from app.uploads import Upload

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt exists only in glibc; elsewhere tune_malloc does nothing")
def test_glibc_gets_a_fixed_mmap_threshold_and_two_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert tune_malloc() == {"malloc_mmap_threshold": MMAP_THRESHOLD_BYTES, "malloc_arena_max": ARENA_MAX}


@pytest.mark.skipif(not GLIBC, reason="mallopt exists only in glibc; elsewhere tune_malloc does nothing")
def test_a_setting_from_the_environment_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_malloc() == {"malloc_mmap_threshold": MMAP_THRESHOLD_BYTES}


def test_a_failed_image_does_not_hold_its_request_in_a_reference_cycle(tiny_model: Path) -> None:
    """A kept exception's frames would keep every upload and decoded image alive until a full GC."""
    classifier = load_classifier(tiny_model, tiny_model.with_suffix(".json"), 1)
    uploads = [Upload("good.png", images.solid((255, 0, 0))), Upload("notes.txt", images.text_file())]
    gc.collect()
    gc.disable()
    try:
        outcome = classify_uploads(classifier, uploads, max_pixels=DEFAULT_MAX_PIXELS)
        assert outcome.items[1].error is not None
        del outcome
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        frames = {o.f_code.co_name for o in gc.garbage if isinstance(o, types.FrameType)}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not frames & {"_classify", "classify_uploads", "decode_image"}


def test_a_large_16_bit_grey_image_is_scaled_in_bands_not_in_whole_image_float_copies() -> None:
    """A 77 KB PNG of 6300 x 6300 16-bit grey once took 1.4 GB while its float64 copies were made."""
    import tracemalloc

    import numpy as np
    from PIL import Image

    from app.imaging import decode_image

    side = 3000  # 9 Mpx: 72 MB for one whole-image float64 copy
    data = images.encode(Image.fromarray(np.full((side, side), 40000, dtype=np.uint16)), "PNG")
    tracemalloc.start()
    try:
        pixels = decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixels.shape == (224, 224, 3) and int(pixels[0, 0, 0]) == round(40000 / 257)
    assert peak < 32 * 2**20  # numpy's allocations: the 8-bit result (9 MB) and a band, not 72 MB copies


def test_large_images_are_decoded_at_most_two_at_a_time_small_ones_freely(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight 40-megapixel RGBA PNGs sent at once took 2.6 GB, each one under every limit."""
    import threading
    import time

    import numpy as np
    from PIL import Image

    from app import imaging

    inside, most = 0, 0
    lock = threading.Lock()
    convert = imaging._to_rgb

    def slow_convert(image):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.1)
        with lock:
            inside -= 1
        return convert(image)

    monkeypatch.setattr(imaging, "_to_rgb", slow_convert)

    def png(width: int, height: int) -> bytes:
        return images.encode(Image.fromarray(np.full((height, width, 4), 200, dtype=np.uint8), "RGBA"), "PNG")

    def most_at_once(data: bytes) -> int:
        nonlocal most
        most = 0
        threads = [threading.Thread(target=imaging.decode_image, args=(data,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return most

    assert imaging.LARGE_DECODES == 2 and imaging.LARGE_DECODE_PIXELS == 2_000_000
    assert most_at_once(png(2000, 1200)) == 2  # 2.4 megapixels
    assert most_at_once(png(1000, 1000)) > 2
