"""Overload: past DSCNET_MAX_CONCURRENT_REQUESTS, a request is refused 503 `overloaded` with
Retry-After at once, its body unread; probes and metrics still answer; it recovers by itself.

The requests in progress are held on an Event inside the model, so the count is known when
the next one arrives: no sleeps, no timing asserts. (The batcher's own queue limit is tested
in test_batching.py; the figures under load come from benchmarks/load_test.py.)
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import helpers_images as images
from helpers_asgi import MULTIPART, PART_START, post_endless_body, post_stalled_body
from helpers_serve import ServiceProcess
from app.main import create_app
from app.settings import Settings

HANG_GUARD_S = 60  # reached only when something is broken
LIMIT = 2
RED = images.solid((255, 0, 0))


class HeldModel:
    """Wraps the classifier's score_batch (the service's runs): each run waits at a gate, so
    requests stay in progress."""

    def __init__(self, score_batch) -> None:
        self.score_batch = score_batch
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.release()
        assert self.gate.wait(HANG_GUARD_S)
        return self.score_batch(batch)


@pytest.fixture
def held(tiny_model: Path) -> Iterator[tuple[TestClient, HeldModel]]:
    settings = Settings(model_path=tiny_model, ort_threads=1, batching=False, max_concurrent_requests=LIMIT)
    with TestClient(create_app(settings)) as client:
        classifier = client.app.state.service.classifier
        model = HeldModel(classifier.score_batch)
        classifier.score_batch = model
        yield client, model
        model.gate.set()


def fill(client: TestClient, model: HeldModel, pool: ThreadPoolExecutor) -> list[Future]:
    """LIMIT requests in progress, each held inside the model."""
    futures = [pool.submit(client.post, "/predict", files={"image": ("r.png", RED)}) for _ in range(LIMIT)]
    for _ in range(LIMIT):
        assert model.entered.acquire(timeout=HANG_GUARD_S), "a request did not reach the model"
    return futures


def test_past_the_limit_a_request_is_refused_at_once(held: tuple[TestClient, HeldModel]) -> None:
    client, model = held
    with ThreadPoolExecutor(LIMIT) as pool:
        futures = fill(client, model, pool)
        refused = client.post("/predict", headers={"X-Request-ID": "over-1"}, files={"image": ("b.png", RED)})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        body = refused.json()
        assert body["error"]["code"] == "overloaded" and body["request_id"] == "over-1"
        assert f"limit of {LIMIT} requests" in body["error"]["detail"]
        v2 = client.post("/v2/models/dscnet/infer", json={"inputs": []})
        assert v2.status_code == 503 and isinstance(v2.json()["error"], str)  # the protocol's body
        # probes, metrics and the page are never refused
        assert client.get("/health/ready").status_code == 200
        assert client.get("/health/live").status_code == 200
        metrics = client.get("/metrics").text
        assert 'dscnet_images_rejected_total{reason="overloaded"} 2.0' in metrics
        model.gate.set()
        assert [f.result(HANG_GUARD_S).status_code for f in futures] == [200] * LIMIT
    again = client.post("/predict", files={"image": ("r.png", RED)})
    assert again.status_code == 200 and again.json()["label"] == "benign"  # recovered by itself


def test_a_refused_request_body_is_not_read(held: tuple[TestClient, HeldModel]) -> None:
    client, model = held
    with ThreadPoolExecutor(LIMIT) as pool:
        futures = fill(client, model, pool)
        pulled, sent = post_endless_body(client, [])
        model.gate.set()
        for future in futures:
            future.result(HANG_GUARD_S)
    assert sent[0]["status"] == 503 and pulled == []


def test_a_stalled_upload_gives_its_place_back(tiny_model: Path) -> None:
    """A client that stops sending mid-upload (or a peer gone without a word, its connection
    half-open) holds a place only until DSCNET_BODY_TIMEOUT_S, then gets 408: it cannot keep
    the service at its limit for as long as its connection lives."""
    settings = Settings(model_path=tiny_model, ort_threads=1, batching=False, max_concurrent_requests=1,
                        body_timeout_s=3)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        admitted = threading.Event()
        stalled = pool.submit(post_stalled_body, client, "/predict", MULTIPART, PART_START, admitted.set)
        assert admitted.wait(HANG_GUARD_S)
        assert client.post("/predict", files={"image": ("r.png", RED)}).status_code == 503  # its place is taken
        assert stalled.result(HANG_GUARD_S)[0]["status"] == 408
        again = client.post("/predict", files={"image": ("r.png", RED)})
        assert again.status_code == 200 and again.json()["label"] == "benign"


def test_the_server_answers_a_stalled_upload_and_closes_the_connection(tiny_model: Path) -> None:
    """Through uvicorn: the stalled socket gets the 408 body, then the server closes it."""
    with ServiceProcess(tiny_model, {"DSCNET_BODY_TIMEOUT_S": "0.5"}) as service:
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=HANG_GUARD_S) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: " + MULTIPART
                         + b"\r\nContent-Length: 100000\r\n\r\n" + PART_START)
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "body_timeout"


def test_requests_without_a_key_take_no_place(tiny_model: Path) -> None:
    """401s are answered outside the admission count: a keyless flood cannot crowd out clients."""
    key = "overload-key-0123456789"
    settings = Settings(model_path=tiny_model, ort_threads=1, batching=False, max_concurrent_requests=1,
                        api_keys=(key,))
    with TestClient(create_app(settings)) as client:
        classifier = client.app.state.service.classifier
        model = HeldModel(classifier.score_batch)
        classifier.score_batch = model
        with ThreadPoolExecutor(1) as pool:
            held_request = pool.submit(client.post, "/predict", headers={"X-API-Key": key},
                                       files={"image": ("r.png", RED)})
            assert model.entered.acquire(timeout=HANG_GUARD_S)
            assert client.post("/predict", files={"image": ("r.png", RED)}).status_code == 401
            model.gate.set()
            assert held_request.result(HANG_GUARD_S).status_code == 200


def test_the_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    monkeypatch.setenv("DSCNET_MAX_CONCURRENT_REQUESTS", "7")
    assert Settings(model_path=tiny_model).max_concurrent_requests == 7
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings(model_path=tiny_model, max_concurrent_requests=0)


def test_every_operation_that_can_be_refused_documents_the_503(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        if path.startswith("/health") or path in {"/metrics", "/v2/health/live", "/v2/health/ready",
                                                   "/v2/models/{model_name}/ready"}:
            continue
        for method, operation in operations.items():
            assert "503" in operation["responses"], (method, path)
