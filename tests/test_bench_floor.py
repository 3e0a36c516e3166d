"""benchmarks/floor_server.py: the yardsticks of bench_floor.py do the work they are named for.

A floor that answered without reading the upload, or failed fast, would make every ceiling in
docs/PERFORMANCE.md ("Run P") look higher than it is.
"""

from __future__ import annotations

import sys
from io import BytesIO
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.imaging import decode_image
from app.quality import assess_quality

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import floor_server  # noqa: E402


@pytest.fixture(scope="module")
def smear(real_images: dict[str, Path]) -> bytes:
    return real_images["Pro"].read_bytes()


def post(app, data: bytes):
    with TestClient(app) as client:
        return client.post("/predict", files={"image": ("smear.jpg", data, "image/jpeg")})


def test_raw_reads_the_whole_body_and_answers_json(smear: bytes) -> None:
    answer = post(floor_server.raw, smear)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["label"] == "benign"


def test_upload_reads_the_whole_file(smear: bytes) -> None:
    answer = post(floor_server.upload, smear)
    assert answer.status_code == 200
    assert answer.json()["bytes"] == len(smear)


def test_decode_decodes_the_image(smear: bytes) -> None:
    answer = post(floor_server.decode, smear)
    assert answer.status_code == 200
    assert answer.json()["warnings"] == int(decode_image(smear)[0, 0, 0])


def test_checks_run_the_services_quality_checks(smear: bytes) -> None:
    dark = decode_image(smear) // 8  # an underexposed image warns, so the list is not trivially empty
    buffer = BytesIO()
    Image.fromarray(dark).save(buffer, format="PNG")
    for data in (smear, buffer.getvalue()):
        answer = post(floor_server.checks, data)
        assert answer.status_code == 200
        assert answer.json()["warnings"] == [w.code for w in assess_quality(decode_image(data))]
    assert answer.json()["warnings"], "the dark image should warn"

