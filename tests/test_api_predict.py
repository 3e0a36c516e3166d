"""POST /predict through TestClient with the lifespan: successes on every supported input kind."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import helpers_images as images
from app.labels import CLASS_IDS


def post_image(client: TestClient, data: bytes, filename: str = "smear.png", **kwargs: object):
    return client.post("/predict", files={"image": (filename, data, "application/octet-stream")}, **kwargs)


def assert_prediction(body: dict, label: str | None = None) -> None:
    assert set(body) == {
        "request_id", "label", "probabilities", "uncalibrated_probabilities", "refer_to_human", "refer_reason",
        "warnings", "model", "timing_ms", "explanation",
    }
    assert set(body["probabilities"]) == set(CLASS_IDS)
    assert math.isclose(sum(body["probabilities"].values()), 1.0, abs_tol=1e-9)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["model"]["name"] == "dscnet" and len(body["model"]["sha256"]) == 64
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}
    assert all(value >= 0 for value in body["timing_ms"].values())
    if label is not None:
        assert body["label"] == label


@pytest.mark.parametrize(
    ("colour", "label"),
    [((255, 0, 0), "benign"), ((0, 255, 0), "early_pre_b"), ((0, 0, 255), "pre_b"), ((0, 0, 0), "pro_b")],
)
def test_predict_labels_follow_the_tiny_model(client: TestClient, colour: tuple[int, int, int], label: str) -> None:
    response = post_image(client, images.solid(colour))
    assert response.status_code == 200
    assert_prediction(response.json(), label)


def test_predict_reports_the_model_from_the_card(client: TestClient, tiny_model: Path) -> None:
    card = client.get("/model").json()
    body = post_image(client, images.solid((255, 0, 0))).json()
    assert body["model"] == {"name": card["name"], "version": card["version"], "sha256": card["sha256"]}


@pytest.mark.parametrize(
    ("name", "make", "label"),
    [
        ("png_alpha", images.png_with_alpha, "benign"),  # red over white: red channel dominates
        ("png_16bit", images.png_16bit_grey, None),
        ("grey_jpeg", images.grey_jpeg, None),
        ("cmyk_jpeg", images.cmyk_jpeg, None),
        ("exif_jpeg", images.exif_rotated_jpeg, "pre_b"),
        ("tiff", images.tiff, "early_pre_b"),
        ("bmp", images.bmp, "benign"),
    ],
)
def test_predict_accepts_every_supported_kind(client: TestClient, name: str, make, label: str | None) -> None:
    response = post_image(client, make(), filename=f"{name}.bin")
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), label)


def test_predict_real_dataset_images(client: TestClient, real_images: dict[str, Path]) -> None:
    for path in real_images.values():
        response = post_image(client, path.read_bytes(), filename=path.name)
        assert response.status_code == 200, (path, response.text)
        assert_prediction(response.json())


def test_predict_request_id_is_generated_and_echoed(client: TestClient) -> None:
    generated = post_image(client, images.solid((1, 2, 3)))
    assert generated.headers["x-request-id"] == generated.json()["request_id"]
    assert len(generated.json()["request_id"]) == 32

    echoed = post_image(client, images.solid((1, 2, 3)), headers={"X-Request-ID": "lab-42.run:7"})
    assert echoed.headers["x-request-id"] == "lab-42.run:7"
    assert echoed.json()["request_id"] == "lab-42.run:7"


def test_unsafe_request_id_is_replaced(client: TestClient) -> None:
    response = post_image(client, images.solid((1, 2, 3)), headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.headers["x-request-id"] != "bad id\twith spaces"
    assert response.headers["x-request-id"] == response.json()["request_id"]


def test_a_whole_camera_frame_is_answered_and_referred_as_cells_too_small(
        client: TestClient, real_images: dict[str, Path]) -> None:
    """A lab that sends its camera's whole frame (here 3x3 dataset images, 672 px square, one JPEG)
    shows the model cells a third of the size it knows: the answer comes, referred, with the reason."""
    import numpy as np
    from PIL import Image

    from app.imaging import decode_image

    tiles = [decode_image(path.read_bytes()) for path in real_images.values()]
    frame = np.concatenate([np.concatenate([tiles[(row + col) % 4] for col in range(3)], axis=1) for row in range(3)])
    response = post_image(client, images.encode(Image.fromarray(frame), "JPEG", quality=95), filename="frame.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert_prediction(body)
    assert [warning["code"] for warning in body["warnings"]] == ["cells_too_small"]
    assert body["refer_to_human"] is True
    for path in real_images.values():  # each tile alone, as the dataset has it: no warning
        assert post_image(client, path.read_bytes(), filename=path.name).json()["warnings"] == []
