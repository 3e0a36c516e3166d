"""Faults: a bad model file stops start-up with a clear error and a non-zero exit; a failing
model run answers a JSON 500 with a request id, and the next request works.

The start-up refusals through `TestClient` are in test_service_startup.py; here are the
truncated and bit-flipped files, and the whole `dscnet serve` process for each bad file.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

import helpers_images as images
from app.classifier import ModelLoadError
from app.imaging import IMAGE_SIZE
from app.main import create_app
from app.settings import Settings
from helpers_onnx import OPSET, write_card

REPO_ROOT = Path(__file__).resolve().parent.parent
RED, BLUE = images.solid((255, 0, 0)), images.solid((0, 0, 255))


# --- start-up -------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def refusal(model_path: Path) -> str:
    with pytest.raises(ModelLoadError) as caught, TestClient(create_app(Settings(model_path=model_path, ort_threads=1))):
        pass
    return str(caught.value)


def test_a_truncated_model_fails_its_checksum(tiny_model: Path) -> None:
    truncate(tiny_model)
    message = refusal(tiny_model)
    assert "sha256" in message and "corrupt" in message


def test_a_truncated_model_with_a_matching_card_is_refused_by_onnxruntime(tiny_model: Path) -> None:
    """A card rewritten for the damaged file: the checksum passes, loading must still fail."""
    truncate(tiny_model)
    write_card(tiny_model)
    assert "onnxruntime cannot load" in refusal(tiny_model)


def test_one_flipped_bit_is_caught(tiny_model: Path) -> None:
    flip_one_byte(tiny_model)
    assert "sha256" in refusal(tiny_model)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda model: model.unlink(), "does not exist"),
        (truncate, "sha256"),
        (flip_one_byte, "sha256"),
        (lambda model: model.with_suffix(".json").write_text("{"), "model card"),
    ],
    ids=["missing", "truncated", "tampered", "unreadable card"],
)
def test_dscnet_serve_exits_nonzero_with_the_reason(tiny_model: Path, damage, words: str) -> None:
    """The whole process, as an orchestrator sees it: an exit status and a line on stderr."""
    damage(tiny_model)
    done = subprocess.run(
        [sys.executable, "-m", "dscnet_cli", "serve", "--port", "0", "--model", str(tiny_model)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dscnet serve: the service did not start: the model could not be loaded")
    assert words in last
    assert "Uvicorn running" not in done.stderr  # it never listened


# --- a failing model run ----------------------------------------------------------------------


class FlakySession:
    """Wraps the real session; while `broken`, every run raises onnxruntime's own error."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.broken = False
        self.failures = 0

    def run(self, *args: object, **kwargs: object) -> list:
        if self.broken:
            self.failures += 1
            raise ort.capi.onnxruntime_pybind11_state.RuntimeException("injected: CUDA-like failure in node MatMul")
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)


@pytest.fixture(params=[True, False], ids=["batching", "direct"])
def flaky(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[tuple[TestClient, FlakySession]]:
    settings = Settings(model_path=tiny_model, ort_threads=1, batching=request.param)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        classifier = client.app.state.service.classifier
        session = FlakySession(classifier.session)
        classifier.session = session
        if classifier.wide_session is not None:  # lone runs go through the flaky one too
            classifier.wide_session = session
        yield client, session


def assert_server_fault(response) -> None:
    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert response.headers["x-request-id"]
    if "request_id" in body:
        assert body["request_id"] == response.headers["x-request-id"]
        assert body["error"]["code"] == "internal_error" and body["error"]["status"] == 500
        assert "injected" not in response.text  # internals stay in the log
    else:  # the v2 protocol's body
        assert isinstance(body["error"], str)


REQUESTS = {
    "/predict": lambda c: c.post("/predict", headers={"X-Request-ID": "fault-1"}, files={"image": ("r.png", RED)}),
    "/predict-batch": lambda c: c.post("/predict-batch", files=[("images", ("r.png", RED)), ("images", ("b.png", BLUE))]),
    "/v2 infer": lambda c: c.post("/v2/models/dscnet/infer", json={"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [1], "data": [__import__("base64").b64encode(RED).decode()]}]}),
}


@pytest.mark.parametrize("send", REQUESTS.values(), ids=REQUESTS.keys())
def test_a_model_failure_is_a_json_500_and_the_next_request_works(
    flaky: tuple[TestClient, FlakySession], send
) -> None:
    client, session = flaky
    session.broken = True
    assert_server_fault(send(client))
    assert session.failures >= 1
    assert client.get("/health/ready").status_code == 200  # one failed run is not an unready service
    session.broken = False
    answer = send(client)
    assert answer.status_code == 200, answer.text
    metrics = client.get("/metrics").text
    assert 'status="500"} 1.0' in metrics


def test_the_request_id_of_a_failed_request_is_the_clients(flaky: tuple[TestClient, FlakySession]) -> None:
    client, session = flaky
    session.broken = True
    response = REQUESTS["/predict"](client)
    assert response.headers["x-request-id"] == "fault-1" and response.json()["request_id"] == "fault-1"


def fragile_model(path: Path) -> Path:
    """A model that runs for one image and fails inside onnxruntime for more (a fixed Reshape)."""
    weights = np.eye(3, 4, dtype=np.float32) * (8.0 / 255.0)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["softmax"], axis=-1),
            helper.make_node("Reshape", ["softmax", "one_row"], ["probabilities"]),
        ],
        name="fragile",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", IMAGE_SIZE, IMAGE_SIZE, 3])],
        outputs=[helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(weights, "weights"),
                     numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "one_row")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())
    write_card(path)
    return path


def test_a_real_onnxruntime_failure_mid_service(tmp_path: Path) -> None:
    """No mock: onnxruntime itself fails a batch of two; warm-up (one image) and the next request pass."""
    model = fragile_model(tmp_path / "dscnet.onnx")
    onnx.checker.check_model(onnx.load(model))
    with TestClient(create_app(Settings(model_path=model, ort_threads=1)), raise_server_exceptions=False) as client:
        assert_server_fault(REQUESTS["/predict-batch"](client))
        assert client.get("/health/ready").status_code == 200
        one = client.post("/predict", files={"image": ("r.png", RED)})
        assert one.status_code == 200 and one.json()["label"] == "benign"
