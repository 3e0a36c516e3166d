"""The Open Inference Protocol (v2 REST) routes: health, metadata, infer, and every error in `{"error": ...}`."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import helpers_images as images
from app.api import v2
from app.batching import BatcherStoppedError, OverloadedError
from app.labels import CLASS_IDS
from app.main import create_app
from app.settings import Settings

INFER = "/v2/models/dscnet/infer"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def infer_body(*files: bytes, shape: list[int] | None = None, **extra: object) -> dict:
    tensor = {"name": "image", "datatype": "BYTES", "shape": shape or [len(files)], "data": [b64(f) for f in files]}
    return {"inputs": [tensor], **extra}


def assert_v2_error(response, status: int, words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert words in body["error"], body["error"]
    return body["error"]


@pytest.fixture
def small_limits_client(tiny_model: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=tiny_model, ort_threads=1, max_batch_images=2, max_upload_bytes=4096,
                        max_batch_bytes=64 * 1024)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    model_ready = client.get("/v2/models/dscnet/ready")
    assert model_ready.status_code == 200 and model_ready.json() == {"name": "dscnet", "ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "dscnet" and server["extensions"] == [] and server["version"]


def test_model_metadata_gives_the_tensors_and_the_class_order(client: TestClient) -> None:
    response = client.get("/v2/models/dscnet")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "dscnet"
    assert body["versions"] == ["0.0.1-test"]
    assert body["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["inputs"]] == [("image", "BYTES", [-1])]
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [-1, 4])
    assert output["parameters"]["classes"] == list(CLASS_IDS)
    assert len(body["parameters"]["sha256"]) == 64


def test_infer_one_image(client: TestClient) -> None:
    response = client.post(INFER, json=infer_body(images.solid(RED), id="smear-42"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "dscnet" and body["model_version"] == "0.0.1-test" and body["id"] == "smear-42"
    (output,) = body["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "FP32" and output["shape"] == [1, 4]
    assert sum(output["data"]) == pytest.approx(1.0, abs=1e-5)
    assert CLASS_IDS[output["data"].index(max(output["data"]))] == "benign"
    assert response.headers["x-request-id"]


def test_infer_batch_keeps_the_order_and_accepts_n_by_1(client: TestClient) -> None:
    files = [images.solid(GREEN), images.solid(BLUE, fmt="JPEG"), images.solid(RED)]
    for shape in ([3], [3, 1]):
        body = infer_body(*files, shape=shape, outputs=[{"name": "probabilities"}])
        if shape == [3, 1]:
            body["inputs"][0]["data"] = [[item] for item in body["inputs"][0]["data"]]
        response = client.post(INFER, json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["shape"] == [3, 4]
        rows = [output["data"][i * 4:(i + 1) * 4] for i in range(3)]
        assert [CLASS_IDS[row.index(max(row))] for row in rows] == ["early_pre_b", "pre_b", "benign"]
        assert "id" not in response.json()


def test_infer_gives_the_same_probabilities_as_predict(client: TestClient, real_images: dict[str, Path]) -> None:
    data = real_images["Pre"].read_bytes()
    v1 = client.post("/predict", files={"image": ("smear.jpg", data, "image/jpeg")}).json()["probabilities"]
    v2 = client.post(INFER, json=infer_body(data)).json()["outputs"][0]["data"]
    assert v2 == pytest.approx([v1[name] for name in CLASS_IDS], abs=1e-6)


def test_infer_is_counted_in_the_metrics(client: TestClient) -> None:
    client.post(INFER, json=infer_body(images.solid(BLUE), images.solid(BLUE)))
    client.post(INFER, json=infer_body(images.text_file()))
    text = client.get("/metrics").text
    assert 'dscnet_requests_total{endpoint="/v2/models/{model_name}/infer",status="200"} 1.0' in text
    assert 'dscnet_requests_total{endpoint="/v2/models/{model_name}/infer",status="415"} 1.0' in text
    assert 'dscnet_predictions_total{label="pre_b"} 2.0' in text
    assert 'dscnet_images_rejected_total{reason="unsupported_format"} 1.0' in text


@pytest.mark.parametrize("path", ["/v2/models/other", "/v2/models/other/ready", "/v2/models/other/infer"])
def test_unknown_model_is_404(client: TestClient, path: str) -> None:
    if path.endswith("/infer"):
        response = client.post(path, json=infer_body(images.solid(RED)))
    else:
        response = client.get(path)
    assert_v2_error(response, 404, "unknown model 'other'")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "invalid inference request at inputs: Field required"),
        ({"inputs": "image"}, "invalid inference request at inputs"),
        ({"inputs": []}, "exactly one input named 'image', got []"),
        ({"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}, "got ['pixels']"),
        ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "must be BYTES"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}, "shape [2] and 1 elements"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 2], "data": ["aGk=", "aGk="]}]}, "shape [N]"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]}, "holds no image"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [7]}]}, "element 0 is not a base64 string"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}, "element 0 is not valid base64"),
        ({**infer_body(b"x"), "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        ({**infer_body(b"x"), "ouputs": [{"name": "probabilities"}]}, "at ouputs: Extra inputs are not permitted"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="], "foo": 1}]},
         "at inputs.0.foo: Extra inputs are not permitted"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": ["1"], "data": ["aGk="]}]},
         "at inputs.0.shape.0: Input should be a valid integer"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1.0], "data": ["aGk="]}]},
         "at inputs.0.shape.0: Input should be a valid integer"),
    ],
)
def test_malformed_requests_are_400(client: TestClient, body: dict, words: str) -> None:
    assert_v2_error(client.post(INFER, json=body), 400, words)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"parameters": {"priority": 1}}, "request parameter 'priority' is not supported"),
        ({"parameters": {"binary_data_output": True}}, "request parameter 'binary_data_output' may only be false"),
        ({"outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]},
         "output 'probabilities' parameter 'classification' is not supported"),
        ({"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]},
         "output 'probabilities' parameter 'binary_data' may only be false"),
    ],
)
def test_parameters_the_server_would_not_act_on_are_400(client: TestClient, extra: dict, words: str) -> None:
    assert_v2_error(client.post(INFER, json=infer_body(images.solid(RED), **extra)), 400, words)
    body = infer_body(images.solid(RED))
    body["inputs"][0]["parameters"] = {"binary_data_size": 10}
    assert_v2_error(client.post(INFER, json=body), 400, "input 'image' parameter 'binary_data_size' is not supported")


def test_only_the_json_flag_gets_the_binary_extension_hint(client: TestClient) -> None:
    body = infer_body(images.solid(RED), parameters={"binary_data_output": False, "timeout": 5})
    error = assert_v2_error(client.post(INFER, json=body), 400, "timeout")
    assert error == "request parameter 'timeout' is not supported: this server acts on no request parameters"


def test_asking_for_json_outputs_is_accepted(client: TestClient) -> None:
    body = infer_body(images.solid(RED), parameters={"binary_data_output": False},
                      outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}])
    response = client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 4]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", INFER, 405), ("POST", "/v2/nope", 404), ("POST", "/v2/models/dscnet/versions/1/infer", 404)])
def test_an_unknown_path_or_method_under_v2_has_the_protocol_error_body(client: TestClient, method: str,
                                                                         path: str, status: int) -> None:
    assert_v2_error(client.request(method, path), status, "")


def test_a_key_given_twice_is_400_not_the_last_one_kept(client: TestClient) -> None:
    good = json.dumps(infer_body(images.solid(RED))["inputs"])
    body = f'{{"inputs": [], "inputs": {good}}}'.encode()
    response = client.post(INFER, content=body, headers={"content-type": "application/json"})
    assert_v2_error(response, 400, "the key 'inputs' is given more than once in one JSON object")


@pytest.mark.parametrize("depth", [1000, 20000])
def test_json_nested_too_deeply_is_400_not_500(client: TestClient, depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    response = client.post(INFER, content=body, headers={"content-type": "application/json"})
    assert_v2_error(response, 400, "nested too deeply")
    inner = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ' + body + b"}]}"
    assert_v2_error(client.post(INFER, content=inner, headers={"content-type": "application/json"}), 400, "nested")


def test_a_body_that_is_not_json_is_400(client: TestClient) -> None:
    response = client.post(INFER, content=b"\x89PNG not json", headers={"content-type": "application/octet-stream"})
    assert_v2_error(response, 400, "invalid inference request")


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (images.text_file, 415, "element 1: the file is not a recognised image"),
        (images.gif, 415, "element 1: GIF images are not accepted"),
        (images.truncated_jpeg, 400, "element 1: the JPEG data is damaged or truncated"),
        (images.png_bomb, 413, "element 1: the image has 50000x50000"),
        (lambda: b"", 400, "element 1: the file is empty"),
    ],
)
def test_bad_images_fail_the_request_with_their_status(client: TestClient, make, status: int, words: str) -> None:
    assert_v2_error(client.post(INFER, json=infer_body(images.solid(RED), make())), status, words)
    assert client.get("/v2/health/ready").status_code == 200


def test_limits_are_413(small_limits_client: TestClient) -> None:
    client = small_limits_client
    tiny = images.solid(RED, size=(32, 32))
    assert client.post(INFER, json=infer_body(tiny, tiny)).status_code == 200
    assert_v2_error(client.post(INFER, json=infer_body(tiny, tiny, tiny)), 413, "3 images in one request")
    big = images.encode(Image.effect_noise((64, 64), 100).convert("RGB"), "PNG")
    assert len(big) > 4096
    assert_v2_error(client.post(INFER, json=infer_body(big)), 413, "over the limit of 4,096 bytes")
    huge = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["A" * 70_000]}]}
    assert_v2_error(client.post(INFER, json=huge), 413, "over the limit of 65,536")


def test_not_ready_is_503_in_the_protocol_format(tiny_model: Path) -> None:
    client = TestClient(create_app(Settings(model_path=tiny_model, ort_threads=1)))  # no lifespan: not loaded
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert ready.headers["retry-after"] == "5"
    model_ready = client.get("/v2/models/dscnet/ready")
    assert model_ready.status_code == 503 and model_ready.json() == {"name": "dscnet", "ready": False}
    assert_v2_error(client.get("/v2/models/dscnet"), 503, "not loaded")
    assert_v2_error(client.post(INFER, json=infer_body(images.solid(RED))), 503, "not loaded")


def test_the_openapi_document_lists_the_v2_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
                 "/v2/models/{model_name}/ready", "/v2/models/{model_name}/infer"):
        assert path in paths
    assert paths["/v2/models/{model_name}/infer"]["post"]["requestBody"]["content"]["application/json"]["example"]


@pytest.mark.parametrize("batching", [True, False])
def test_one_infer_is_one_model_run_with_or_without_the_batcher(tiny_model: Path, batching: bool) -> None:
    settings = Settings(model_path=tiny_model, ort_threads=1, batching=batching)
    with TestClient(create_app(settings)) as client:
        assert client.post(INFER, json=infer_body(images.solid(RED), images.solid(GREEN))).status_code == 200
        text = client.get("/metrics").text
    assert "dscnet_batch_size_count 1.0" in text and "dscnet_batch_size_sum 2.0" in text


@pytest.mark.parametrize(
    ("error", "retry_after"),
    [(OverloadedError("more images are waiting than the queue may hold", 3), "3"),
     (BatcherStoppedError("the service is stopping"), "5")],
)
def test_overload_and_shutdown_are_503_in_the_protocol_format(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, error: Exception, retry_after: str
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(v2, "classify_uploads", refuse)
    response = client.post(INFER, json=infer_body(images.solid(RED)))
    assert_v2_error(response, 503, str(error))
    assert response.headers["retry-after"] == retry_after
