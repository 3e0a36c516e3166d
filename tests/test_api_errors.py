"""Every client error of /predict: status, code, field and a readable detail; never a 500."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import helpers_images as images
from helpers_asgi import MULTIPART, PART_START, post_endless_body, post_stalled_body, response_body
from app.main import create_app
from app.settings import Settings


def post_image(client: TestClient, data: bytes, filename: str = "upload.bin"):
    return client.post("/predict", files={"image": (filename, data, "application/octet-stream")})


def assert_error(response, status: int, code: str, field: str | None = "image") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["status"] == status
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert isinstance(body["error"]["detail"], str) and body["error"]["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body["error"]


@pytest.mark.parametrize(
    ("make", "status", "code", "words"),
    [
        (images.text_file, 415, "unsupported_format", "not a recognised image"),
        (images.gif, 415, "unsupported_format", "GIF"),
        (images.truncated_jpeg, 400, "corrupt_image", "truncated"),
        (images.png_bomb, 413, "too_many_pixels", "50000x50000"),
    ],
)
def test_bad_images_are_refused_with_their_reason(client: TestClient, make, status: int, code: str, words: str) -> None:
    error = assert_error(post_image(client, make()), status, code)
    assert words in error["detail"]


def test_a_bomb_does_not_hurt_the_server(client: TestClient) -> None:
    for _ in range(3):
        assert_error(post_image(client, images.png_bomb()), 413, "too_many_pixels")
    assert client.get("/health/ready").status_code == 200
    assert post_image(client, images.solid((0, 0, 255))).json()["label"] == "pre_b"


def test_missing_field_is_422(client: TestClient) -> None:
    response = client.post("/predict", content=b"--XyZ--\r\n",
                           headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    error = assert_error(response, 422, "missing_field")
    assert "'image'" in error["detail"]


@pytest.mark.parametrize("path", ["/predict", "/predict-batch"])
def test_a_file_under_another_field_is_refused_not_dropped(client: TestClient, path: str) -> None:
    """Whatever a client sends is used or refused: a file under a misspelt field, or a field
    we do not read beside the image, is a 422 naming it, never skipped without a word."""
    field = "image" if path == "/predict" else "images"
    good = (field, ("a.png", images.solid((1, 1, 1)), "image/png"))
    for files in ([("picture", good[1])], [good, ("picture", good[1])], [("picture", good[1]), good]):
        error = assert_error(client.post(path, files=files), 422, "unexpected_field", field="picture")
        assert "'picture'" in error["detail"] and f"'{field}'" in error["detail"]
    response = client.post(path, files=[good], data={"patient": "12345"})
    assert_error(response, 422, "unexpected_field", field="patient")


def test_form_without_files_is_422(client: TestClient) -> None:
    response = client.post("/predict", data={"image": ""}, files={"other": ("x", b"x")})
    assert_error(response, 422, "empty_file")


def test_empty_file_is_422(client: TestClient) -> None:
    assert_error(post_image(client, b""), 422, "empty_file")


def test_two_files_in_predict_are_422(client: TestClient) -> None:
    one = ("image", ("a.png", images.solid((1, 1, 1)), "image/png"))
    response = client.post("/predict", files=[one, one])
    error = assert_error(response, 422, "extra_file")
    assert "/predict-batch" in error["detail"]


@pytest.mark.parametrize(
    ("kwargs", "headers"),
    [
        ({"json": {"image": "aGVsbG8="}}, {}),
        ({"data": {"image": "hello"}}, {}),
        ({"content": b"\xff\xd8\xff"}, {"Content-Type": "image/jpeg"}),
        ({}, {}),
    ],
)
def test_a_body_that_is_not_multipart_is_415(client: TestClient, kwargs: dict, headers: dict) -> None:
    error = assert_error(client.post("/predict", headers=headers, **kwargs), 415, "not_multipart")
    assert "multipart/form-data" in error["detail"]


def test_multipart_without_boundary_is_400(client: TestClient) -> None:
    response = client.post("/predict", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    assert_error(response, 400, "malformed_multipart")


def test_truncated_multipart_body_is_400(client: TestClient) -> None:
    body = (
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
        b"Content-Type: image/png\r\n\r\n" + images.solid((1, 2, 3))[:100]
    )
    response = client.post("/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    error = assert_error(response, 400, "malformed_multipart")
    assert "closing boundary" in error["detail"]


def test_garbage_multipart_body_is_400(client: TestClient) -> None:
    response = client.post(
        "/predict", content=b"this is not multipart at all" * 10,
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert_error(response, 400, "malformed_multipart")


@pytest.fixture
def small_limit_client(tiny_model: Path):
    settings = Settings(model_path=tiny_model, ort_threads=1, max_upload_bytes=20_000)
    with TestClient(create_app(settings)) as client:
        yield client


def test_file_over_the_upload_limit_is_413(small_limit_client: TestClient) -> None:
    data = images.truncated_jpeg() + b"\0" * 30_000  # bigger than 20,000 bytes, smaller than the body limit
    error = assert_error(post_image(small_limit_client, data), 413, "file_too_large")
    assert "20,000" in error["detail"]


def test_body_over_the_limit_is_413_before_parsing(small_limit_client: TestClient) -> None:
    data = b"\0" * 200_000  # over the body limit (upload limit + multipart room)
    assert_error(post_image(small_limit_client, data), 413, "request_too_large")


@pytest.mark.parametrize(("chunk_count", "code"), [(5, "file_too_large"), (20, "request_too_large")])
def test_chunked_body_over_a_limit_is_413(small_limit_client: TestClient, chunk_count: int, code: str) -> None:
    boundary = b"XyZ"
    head = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n"

    def chunks():  # no Content-Length: the limit must be enforced on the bytes received
        yield head
        for _ in range(chunk_count):
            yield b"\0" * 10_000
        yield b"\r\n--XyZ--\r\n"

    response = small_limit_client.post(
        "/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, code)


def test_not_ready_is_503_with_the_error_body(tiny_model: Path) -> None:
    client = TestClient(create_app(Settings(model_path=tiny_model)))  # no `with`: no lifespan, no model
    response = post_image(client, images.solid((1, 1, 1)))
    error = assert_error(response, 503, "model_not_ready", field=None)
    assert "not loaded" in error["detail"]
    assert response.headers["retry-after"] == "5"


def test_unknown_route_and_wrong_method_use_the_error_body(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found", field=None)
    assert_error(client.get("/predict"), 405, "method_not_allowed", field=None)


def test_errors_do_not_hurt_the_server(client: TestClient) -> None:
    for make in (images.text_file, images.truncated_jpeg, images.png_bomb):
        assert post_image(client, make()).status_code in {400, 413, 415}
    assert client.get("/health/ready").status_code == 200
    assert post_image(client, images.solid((255, 0, 0))).json()["label"] == "benign"


def test_declared_length_over_the_limit_is_refused_before_reading(small_limit_client: TestClient) -> None:
    """Straight through ASGI: a 10 GB Content-Length is answered 413 without one body byte read."""
    pulled, sent = post_endless_body(small_limit_client, [(b"content-length", b"10000000000")])
    assert pulled == []
    assert sent[0]["status"] == 413
    assert b"request_too_large" in response_body(sent)


def test_validation_errors_use_the_error_body(tiny_model: Path) -> None:
    app = create_app(Settings(model_path=tiny_model, ort_threads=1))

    @app.get("/echo")
    def echo(count: int) -> dict:  # a route with a typed parameter, only for this test
        return {"count": count}

    with TestClient(app) as client:
        error = assert_error(client.get("/echo", params={"count": "many"}), 422, "int_parsing", field="count")
        assert "integer" in error["detail"]


def test_a_server_fault_is_a_json_500_without_internals(tiny_model: Path) -> None:
    app = create_app(Settings(model_path=tiny_model, ort_threads=1))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal state")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret" not in response.text
    metrics = client.app.state.service.metrics.exposition().decode()
    assert 'dscnet_requests_total{endpoint="/boom",status="500"} 1.0' in metrics


@pytest.fixture
def impatient_client(tiny_model: Path):
    with TestClient(create_app(Settings(model_path=tiny_model, ort_threads=1, body_timeout_s=0.2))) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "content_type", "first", "body_shape"),
    [
        ("/predict", MULTIPART, PART_START, "common"),
        ("/predict-batch", MULTIPART, PART_START.replace(b'"image"', b'"images"'), "common"),
        ("/v2/models/dscnet/infer", b"application/json", b'{"inputs": [', "v2"),
    ],
)
def test_a_body_that_stalls_is_answered_408(
    impatient_client: TestClient, path: str, content_type: bytes, first: bytes, body_shape: str
) -> None:
    """A client that stops sending mid-body gets 408 once DSCNET_BODY_TIMEOUT_S has passed, not
    silence for as long as its connection stays open (it would hold an admission slot)."""
    sent = post_stalled_body(impatient_client, path, content_type, first)
    assert sent[0]["status"] == 408
    body = json.loads(response_body(sent))
    if body_shape == "common":
        assert body["error"]["code"] == "body_timeout"
        assert "did not arrive within 0.2 s" in body["error"]["detail"]
    else:
        assert "did not arrive within 0.2 s" in body["error"]
    metrics = impatient_client.get("/metrics").text
    assert 'dscnet_images_rejected_total{reason="body_timeout"} 1.0' in metrics


@pytest.mark.parametrize(
    ("path", "query", "reads"),
    [("/predict", "patient_id=P1", "it reads explain, format"), ("/predict", "format=json&foo", "it reads explain, format"),
     ("/predict-batch", "explain=true", "it takes none"), ("/explain", "format=json", "it takes none")],
)
def test_a_query_parameter_the_endpoint_does_not_read_is_422(client: TestClient, path: str, query: str,
                                                              reads: str) -> None:
    """Not ignored: `?patient_id=` would otherwise give an HL7 answer without the patient, silently."""
    field = "images" if path == "/predict-batch" else "image"
    response = client.post(f"{path}?{query}", files={field: ("a.png", images.solid((0, 0, 255)), "image/png")})
    name = query.split("&")[-1].split("=")[0]
    error = assert_error(response, 422, "unexpected_parameter", field=name)
    assert f"'{name}' is not a query parameter of this endpoint ({reads})" in error["detail"]


@pytest.mark.parametrize("query", ["format=json&format=hl7", "explain=true&explain=false", "format=json&format=json"])
def test_a_query_parameter_given_twice_is_422_not_the_last_one_kept(client: TestClient, query: str) -> None:
    response = client.post(f"/predict?{query}", files={"image": ("a.png", images.solid((0, 0, 255)), "image/png")})
    name, first = query.split("&")[0].split("=")
    second = query.split("&")[1].split("=")[1]
    error = assert_error(response, 422, "repeated_parameter", field=name)
    assert error["detail"] == f"'{name}' is given more than once ('{first}', '{second}'); send it once"


def test_the_query_parameters_an_endpoint_reads_still_work(client: TestClient) -> None:
    image = {"image": ("a.png", images.solid((0, 0, 255)), "image/png")}
    assert client.post("/predict?format=json&explain=false", files=image).json()["label"] == "pre_b"
    v2 = client.post("/v2/models/dscnet/infer?verbose=1", json={"inputs": []})
    assert v2.status_code == 400 and "'verbose' is not a query parameter" in v2.json()["error"]


def test_a_client_gone_mid_upload_is_counted_as_such_not_as_a_malformed_body(client: TestClient, caplog) -> None:
    import logging

    from helpers_asgi import MULTIPART, PART_START, asgi_post

    chunks = [{"type": "http.request", "body": PART_START, "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    with caplog.at_level(logging.INFO, logger="dscnet.access"):
        asgi_post(client, "/predict", [(b"content-type", MULTIPART)], receive)
    (line,) = [r for r in caplog.records if r.name == "dscnet.access"]
    assert line.fields["rejected"] == {"client_disconnected": 1}
    metrics = client.get("/metrics").text
    assert 'dscnet_images_rejected_total{reason="client_disconnected"} 1.0' in metrics
    assert 'reason="malformed_multipart"' not in metrics
