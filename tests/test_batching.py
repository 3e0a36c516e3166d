"""The micro-batcher: coalescing, routing, bounds, failures, shutdown; alone and through the API.

No timing asserts: tests hold the model run on an Event so that the queue's contents are known
when it is released. Timeouts below only keep a broken batcher from hanging the suite.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import helpers_images as images
from app.batching import BatcherStoppedError, MicroBatcher, OverloadedError
from app.classifier import OnnxClassifier
from app.main import create_app
from app.settings import Settings
from helpers_wait import wait_for

HANG_GUARD_S = 30  # only reached when the batcher is broken


def image_of(value: int, count: int = 1) -> np.ndarray:
    return np.full((count, 4, 4, 3), value, dtype=np.uint8)


class GatedModel:
    """A fake model whose rows echo each image's first pixel; runs can be held at a gate."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.runs: list[list[int]] = []  # the first pixel of every image, per run
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.fail_on = fail_on

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.runs.append([int(v) for v in batch[:, 0, 0, 0]])
        self.running.set()
        assert self.gate.wait(HANG_GUARD_S)
        if self.fail_on is not None and self.fail_on in batch[:, 0, 0, 0]:
            raise RuntimeError(f"the model cannot take {self.fail_on}")
        return batch[:, 0, 0, :1].astype(np.float64)  # one row per image: its value

    def hold(self) -> None:
        self.gate.clear()
        self.running.clear()


@pytest.fixture
def make_batcher() -> Iterator[Callable[..., MicroBatcher]]:
    made: list[MicroBatcher] = []

    def make(model: GatedModel, **options: object) -> MicroBatcher:
        settings = {"max_batch_size": 8, "max_wait_s": 0.0, "max_queued_images": 64, **options}
        batcher = MicroBatcher(model, **settings)  # type: ignore[arg-type]
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.stop(timeout=HANG_GUARD_S)


def wait_until(condition: Callable[[], bool]) -> None:
    wait_for(condition, timeout_s=HANG_GUARD_S)


def test_a_lone_request_runs_at_once_and_gets_its_rows(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_wait_s=HANG_GUARD_S)  # nobody announced: no waiting
    rows = batcher.predict_batch(image_of(7, count=2))
    assert rows.tolist() == [[7.0], [7.0]]
    assert model.runs == [[7, 7]]


def test_requests_that_queue_during_a_run_share_the_next_run(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model)
    model.hold()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.predict_batch, image_of(1))
        assert model.running.wait(HANG_GUARD_S)
        later = {value: pool.submit(batcher.predict_batch, image_of(value)) for value in (2, 3, 4)}
        wait_until(lambda: batcher.queued_images == 3)
        model.gate.set()
        assert first.result(HANG_GUARD_S).tolist() == [[1.0]]
        for value, future in later.items():  # every caller gets its own row back
            assert future.result(HANG_GUARD_S).tolist() == [[float(value)]]
    assert model.runs[0] == [1]
    assert sorted(model.runs[1]) == [2, 3, 4] and len(model.runs) == 2


def test_a_run_never_exceeds_the_batch_size_unless_one_request_does(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_batch_size=3)
    model.hold()
    with ThreadPoolExecutor(8) as pool:
        pool.submit(batcher.predict_batch, image_of(0))
        assert model.running.wait(HANG_GUARD_S)
        futures = [pool.submit(batcher.predict_batch, image_of(v)) for v in (1, 2)]
        wait_until(lambda: batcher.queued_images == 2)
        futures.append(pool.submit(batcher.predict_batch, image_of(9, count=5)))  # larger than a batch
        wait_until(lambda: batcher.queued_images == 7)
        futures.append(pool.submit(batcher.predict_batch, image_of(3)))
        wait_until(lambda: batcher.queued_images == 8)
        model.gate.set()
        results = [f.result(HANG_GUARD_S) for f in futures]
    assert [len(r) for r in results] == [1, 1, 5, 1]
    assert results[2].tolist() == [[9.0]] * 5
    assert [len(run) for run in model.runs] == [1, 2, 5, 1]


def test_a_full_queue_refuses_at_once_and_keeps_earlier_work(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_queued_images=2)
    model.hold()
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(batcher.predict_batch, image_of(1))
        assert model.running.wait(HANG_GUARD_S)
        queued = pool.submit(batcher.predict_batch, image_of(2, count=2))
        wait_until(lambda: batcher.queued_images == 2)
        with pytest.raises(OverloadedError) as refused:
            batcher.predict_batch(image_of(3))
        assert refused.value.reason == "overloaded" and refused.value.retry_after_s >= 1
        model.gate.set()
        assert running.result(HANG_GUARD_S).tolist() == [[1.0]]
        assert queued.result(HANG_GUARD_S).tolist() == [[2.0], [2.0]]
    assert batcher.predict_batch(image_of(4)).tolist() == [[4.0]]  # room again


def test_a_failing_request_fails_alone_and_later_runs_work(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel(fail_on=13)
    batcher = make_batcher(model)
    model.hold()
    with ThreadPoolExecutor(8) as pool:
        pool.submit(batcher.predict_batch, image_of(1))
        assert model.running.wait(HANG_GUARD_S)
        futures = {v: pool.submit(batcher.predict_batch, image_of(v)) for v in (2, 13, 4)}
        wait_until(lambda: batcher.queued_images == 3)
        model.gate.set()
        with pytest.raises(RuntimeError, match="cannot take 13"):
            futures[13].result(HANG_GUARD_S)
        assert futures[2].result(HANG_GUARD_S).tolist() == [[2.0]]
        assert futures[4].result(HANG_GUARD_S).tolist() == [[4.0]]
    assert batcher.predict_batch(image_of(5)).tolist() == [[5.0]]


def test_a_worker_holds_a_partial_batch_for_an_announced_request(
    make_batcher: Callable[..., MicroBatcher],
) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_wait_s=HANG_GUARD_S)
    with batcher.arriving() as arrival:
        other = batcher.submit(image_of(1))  # the worker takes it, and waits: we are announced
        rows = arrival.predict(image_of(2))  # still "decoding" until now
        assert rows.tolist() == [[2.0]]
        assert other.result(HANG_GUARD_S).tolist() == [[1.0]]
    assert [sorted(run) for run in model.runs] == [[1, 2]]


def test_a_withdrawn_announcement_releases_the_waiting_worker(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_wait_s=10 * HANG_GUARD_S)
    with batcher.arriving():
        other = batcher.submit(image_of(1))
        wait_until(lambda: batcher.queued_images == 0)  # the worker took it and waits for us
    # every image of the announced request failed to decode: nothing was submitted
    assert other.result(HANG_GUARD_S).tolist() == [[1.0]]
    assert model.runs == [[1]]


def test_stop_finishes_queued_work_then_refuses(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model)
    model.hold()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.predict_batch, image_of(1))
        assert model.running.wait(HANG_GUARD_S)
        queued = pool.submit(batcher.predict_batch, image_of(2))
        wait_until(lambda: batcher.queued_images == 1)
        stopping = pool.submit(batcher.stop, HANG_GUARD_S)
        model.gate.set()
        stopping.result(HANG_GUARD_S)
        assert first.result(HANG_GUARD_S).tolist() == [[1.0]]
        assert queued.result(HANG_GUARD_S).tolist() == [[2.0]]
    with pytest.raises(BatcherStoppedError):
        batcher.predict_batch(image_of(3))


def test_the_queue_must_hold_a_full_batch_request(tiny_model: Path) -> None:
    with pytest.raises(ValidationError, match="batch_queue_images"):
        Settings(model_path=tiny_model, batching=True, max_batch_images=32, batch_queue_images=16)
    Settings(model_path=tiny_model, max_batch_images=32, batch_queue_images=16, batching=False)


# -- through the API --------------------------------------------------------------------


@pytest.fixture
def gated_classifier(monkeypatch: pytest.MonkeyPatch) -> GatedModel:
    """Hold the service's real model runs at a gate (open by default, so warm-up passes)."""
    gate = GatedModel()
    real = OnnxClassifier.score_batch

    def score_batch(self: OnnxClassifier, batch: np.ndarray) -> np.ndarray:
        gate.runs.append([len(batch)])
        gate.running.set()
        assert gate.gate.wait(HANG_GUARD_S)
        return real(self, batch)

    monkeypatch.setattr(OnnxClassifier, "score_batch", score_batch)
    return gate


def post(client: TestClient, colour: tuple[int, int, int]):
    return client.post("/predict", files={"image": ("smear.png", images.solid(colour), "image/png")})


def batch_runs(client: TestClient) -> dict[str, float]:
    lines = client.get("/metrics").text.splitlines()
    return {
        line.split()[0]: float(line.split()[1])
        for line in lines
        if line.startswith(("dscnet_batch_size_count", "dscnet_batch_size_sum", "dscnet_images_rejected_total"))
    }


def test_concurrent_predicts_share_one_run_and_get_their_own_labels(
    tiny_model: Path, gated_classifier: GatedModel
) -> None:
    settings = Settings(model_path=tiny_model, ort_threads=1, model_runs=1, batching=True)
    colours = {(255, 0, 0): "benign", (0, 255, 0): "early_pre_b", (0, 0, 255): "pre_b"}
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(4) as pool:
        batcher = client.app.state.service.batcher
        gated_classifier.hold()
        first = pool.submit(post, client, (0, 0, 0))
        assert gated_classifier.running.wait(HANG_GUARD_S)
        later = {colour: pool.submit(post, client, colour) for colour in colours}
        wait_until(lambda: batcher.queued_images == 3)
        gated_classifier.gate.set()
        assert first.result(HANG_GUARD_S).json()["label"] == "pro_b"
        for colour, label in colours.items():
            response = later[colour].result(HANG_GUARD_S)
            assert response.status_code == 200 and response.json()["label"] == label
        counts = batch_runs(client)
    assert gated_classifier.runs[-2:] == [[1], [3]]
    assert counts["dscnet_batch_size_count"] == 2 and counts["dscnet_batch_size_sum"] == 4


def test_a_full_queue_answers_503_overloaded_with_retry_after(
    tiny_model: Path, gated_classifier: GatedModel
) -> None:
    settings = Settings(model_path=tiny_model, ort_threads=1, model_runs=1, batching=True, max_batch_images=1, batch_queue_images=1)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(4) as pool:
        batcher = client.app.state.service.batcher
        gated_classifier.hold()
        running = pool.submit(post, client, (255, 0, 0))
        assert gated_classifier.running.wait(HANG_GUARD_S)
        queued = pool.submit(post, client, (0, 255, 0))
        wait_until(lambda: batcher.queued_images == 1)
        refused = post(client, (0, 0, 255))
        gated_classifier.gate.set()
        assert running.result(HANG_GUARD_S).status_code == 200
        assert queued.result(HANG_GUARD_S).status_code == 200
        counts = batch_runs(client)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["error"]["code"] == "overloaded" and body["error"]["status"] == 503
    assert body["request_id"] == refused.headers["x-request-id"]
    assert counts['dscnet_images_rejected_total{reason="overloaded"}'] == 1


def test_batching_is_off_by_default_and_each_request_runs_directly(tiny_model: Path) -> None:
    settings = Settings(model_path=tiny_model, ort_threads=1)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.service.batcher is None
        assert post(client, (0, 255, 0)).json()["label"] == "early_pre_b"
        files = [("images", (f"{i}.png", images.solid(c), "image/png")) for i, c in enumerate([(255, 0, 0)] * 3)]
        batch = client.post("/predict-batch", files=files).json()
        assert [item["label"] for item in batch["results"]] == ["benign"] * 3
        counts = batch_runs(client)
    assert counts["dscnet_batch_size_count"] == 2 and counts["dscnet_batch_size_sum"] == 4


def test_the_batcher_stops_with_the_service(tiny_model: Path) -> None:
    with TestClient(create_app(Settings(model_path=tiny_model, ort_threads=1, model_runs=1, batching=True))) as client:
        batcher = client.app.state.service.batcher
        assert post(client, (255, 0, 0)).status_code == 200
    with pytest.raises(BatcherStoppedError):
        batcher.predict_batch(image_of(1))


def test_with_two_workers_two_runs_go_at_once(make_batcher: Callable[..., MicroBatcher]) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_batch_size=1, workers=2)
    model.hold()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.predict_batch, image_of(v)) for v in (1, 2)]
        wait_until(lambda: len(model.runs) == 2)  # both runs started while the gate is shut
        model.gate.set()
        assert sorted(f.result(HANG_GUARD_S).tolist() for f in futures) == [[[1.0]], [[2.0]]]


def test_the_thread_layout_shares_the_cpus_between_runs(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.settings.available_cpus", lambda: 4)
    default = Settings(model_path=tiny_model)
    assert (default.runs, default.intra_op_threads, default.wide_threads) == (4, 1, 4)
    assert Settings(model_path=tiny_model, model_runs=1).intra_op_threads == 4
    assert Settings(model_path=tiny_model, model_runs=1).wide_threads is None  # one run already has every CPU
    assert Settings(model_path=tiny_model, model_runs=2).intra_op_threads == 2
    assert Settings(model_path=tiny_model, model_runs=8).intra_op_threads == 1
    assert Settings(model_path=tiny_model, model_runs=2, ort_threads=3).intra_op_threads == 3
    assert Settings(model_path=tiny_model, model_runs=2, wide_lone_runs=False).wide_threads is None
    given_threads = Settings(model_path=tiny_model, ort_threads=2)  # as many such runs as fit
    assert (given_threads.runs, given_threads.intra_op_threads, given_threads.wide_threads) == (2, 2, 4)
    share = Settings(model_path=tiny_model, cpus=2)  # a worker's share (docker/serve.py)
    assert (share.runs, share.intra_op_threads, share.wide_threads) == (2, 1, 2)
    one = Settings(model_path=tiny_model, cpus=1)
    assert (one.runs, one.intra_op_threads, one.wide_threads) == (1, 1, None)
    monkeypatch.setattr("app.settings.available_cpus", lambda: 16)
    assert (Settings(model_path=tiny_model).runs, Settings(model_path=tiny_model).intra_op_threads) == (4, 4)
    monkeypatch.setattr("app.settings.available_cpus", lambda: 1)
    assert (Settings(model_path=tiny_model).runs, Settings(model_path=tiny_model).wide_threads) == (1, None)
