"""POST /predict-batch: one model run, results in order, one bad image never fails the others."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import helpers_images as images
from app.main import create_app
from app.settings import Settings


def post_batch(client: TestClient, files: list[tuple[str, bytes]], field: str = "images"):
    return client.post("/predict-batch", files=[(field, (name, data, "application/octet-stream")) for name, data in files])


def test_mixed_batch_keeps_order_and_isolates_errors(client: TestClient) -> None:
    files = [
        ("red.png", images.solid((255, 0, 0))),
        ("notes.txt", images.text_file()),
        ("cut.jpg", images.truncated_jpeg()),
        ("bomb.png", images.png_bomb()),
        ("empty.png", b""),
        ("green.tif", images.tiff()),
    ]
    response = post_batch(client, files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["count"] == 6 and body["failed"] == 4
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}
    assert body["model"]["name"] == "dscnet"
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["filename"] for r in results] == [name for name, _ in files]
    assert results[0]["label"] == "benign" and math.isclose(sum(results[0]["probabilities"].values()), 1.0)
    assert results[5]["label"] == "early_pre_b"
    errors = {r["filename"]: (r["error"]["status"], r["error"]["code"]) for r in results if "error" in r}
    assert errors == {
        "notes.txt": (415, "unsupported_format"),
        "cut.jpg": (400, "corrupt_image"),
        "bomb.png": (413, "too_many_pixels"),
        "empty.png": (422, "empty_file"),
    }
    for result in results:
        assert ("error" in result) != ("label" in result)
        assert ("error" in result) != ("probabilities" in result)


def test_batch_of_only_bad_images_is_still_200(client: TestClient) -> None:
    body = post_batch(client, [("a.txt", images.text_file()), ("b.png", images.png_bomb())]).json()
    assert body["count"] == 2 and body["failed"] == 2
    assert body["timing_ms"]["inference"] == 0


def test_batch_matches_single_predictions(client: TestClient, real_images: dict[str, Path]) -> None:
    files = [(path.name, path.read_bytes()) for path in real_images.values()]
    batch = post_batch(client, files).json()["results"]
    for (name, data), result in zip(files, batch, strict=True):
        single = client.post("/predict", files={"image": (name, data)}).json()
        assert result["label"] == single["label"]
        for class_id, p in single["probabilities"].items():
            assert math.isclose(result["probabilities"][class_id], p, abs_tol=1e-6)


def test_images_under_another_field_are_422(client: TestClient) -> None:
    response = post_batch(client, [("a.png", images.solid((1, 1, 1)))], field="image")
    assert response.status_code == 422
    assert response.json()["error"] | {"detail": ""} == {
        "status": 422, "code": "unexpected_field", "field": "image", "detail": ""}
    assert "'images'" in response.json()["error"]["detail"]


@pytest.fixture
def limited_client(tiny_model: Path):
    settings = Settings(
        model_path=tiny_model, ort_threads=1, max_batch_images=3, max_upload_bytes=20_000, max_batch_bytes=50_000
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_batch_over_the_count_limit_is_413(limited_client: TestClient) -> None:
    response = post_batch(limited_client, [(f"{i}.png", images.solid((1, 1, 1), (32, 32))) for i in range(4)])
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("too_many_files", "images")
    assert "more than 3 files" in error["detail"]


def test_batch_at_the_count_limit_is_fine(limited_client: TestClient) -> None:
    response = post_batch(limited_client, [(f"{i}.png", images.solid((1, 1, 1), (32, 32))) for i in range(3)])
    assert response.status_code == 200
    assert response.json()["failed"] == 0


def test_oversized_file_in_a_batch_fails_only_itself(limited_client: TestClient) -> None:
    big = images.solid((0, 0, 255)) + b"\0" * 30_000  # over the 20,000-byte per-file limit
    body = post_batch(limited_client, [("big.png", big), ("ok.png", images.solid((0, 0, 255), (32, 32)))]).json()
    assert body["results"][0]["error"]["code"] == "file_too_large"
    assert body["results"][0]["error"]["status"] == 413
    assert body["results"][1]["label"] == "pre_b"


def test_batch_body_over_its_limit_is_413(limited_client: TestClient) -> None:
    files = [(f"{i}.bin", b"\0" * 19_000) for i in range(3)]  # each file and the count are fine
    response = post_batch(limited_client, files)  # but 57 kB > the 50 kB batch body limit
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_file_name_sent_as_filename_star_is_read(client: TestClient) -> None:
    """RFC 6266 / 5987 names (how clients send non-ASCII ones) came back as null: the parser drops them."""
    boundary = "b0undary"
    parts = [
        ("form-data; name=\"images\"; filename*=UTF-8''%C3%A9chantillon%201.png", images.solid((255, 0, 0))),
        ("form-data; name=\"images\"; filename=\"fallback.png\"; filename*=utf-8'fr'%C3%A9t%C3%A9.png",
         images.solid((0, 255, 0))),
        ("form-data; name=\"images\"; filename=\"plain.png\"", images.solid((0, 0, 255))),
    ]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode()
                    + data + b"\r\n" for disposition, data in parts) + f"--{boundary}--\r\n".encode()
    response = client.post("/predict-batch", content=body,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 200, response.text
    assert [r["filename"] for r in response.json()["results"]] == ["échantillon 1.png", "été.png", "plain.png"]


def test_a_file_name_over_255_characters_comes_back_visibly_shortened(client: TestClient) -> None:
    name = "s" * 300 + ".png"
    results = post_batch(client, [(name, images.solid((255, 0, 0)))]).json()["results"]
    assert results[0]["filename"] == "s" * 254 + "\u2026"
