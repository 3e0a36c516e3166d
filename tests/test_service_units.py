"""Pieces of the service on their own: CPU counting, the streaming upload reader, the classifier."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from app.classifier import ModelOutputError, OnnxClassifier, RunLanes, _check_probabilities, load_classifier
from app.cpus import available_cpus, cgroup_cpu_quota
from app.uploads import (
    FileTooLargeError,
    MissingFieldError,
    RequestTooLargeError,
    TooManyFilesError,
    UnexpectedFieldError,
    UploadLimits,
    read_uploads,
)
from helpers_wait import wait_for

BOUNDARY = b"b0undary"


def part(name: str, data: bytes, filename: str | None = "f.bin") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


class CountingStream:
    """An async body stream in fixed chunks that records how much the reader pulled."""

    def __init__(self, data: bytes, chunk: int = 1000, endless: bool = False) -> None:
        self.data, self.chunk, self.endless, self.pulled = data, chunk, endless, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        position = 0
        while position < len(self.data) or self.endless:
            piece = self.data[position : position + self.chunk] or b"\0" * self.chunk
            position += self.chunk
            self.pulled += len(piece)
            yield piece


def read(stream: CountingStream, **limits: object):
    options = {"field": "images", "max_files": 10, "max_file_bytes": 10_000, "max_body_bytes": 100_000} | limits
    return asyncio.run(read_uploads(stream.__aiter__(), BOUNDARY, UploadLimits(**options)))


def test_reader_keeps_the_files_in_order() -> None:
    uploads = read(CountingStream(body(part("images", b"one", "1.png"), part("images", b"two", "2.png"))))
    assert [(u.filename, u.data, u.error) for u in uploads] == [("1.png", b"one", None), ("2.png", b"two", None)]


def test_reader_refuses_a_part_in_another_field_and_stops_there() -> None:
    """Never skipped without a word: a misnamed file would go unclassified, a note unread."""
    files = [part("images", b"x" * 100) for _ in range(20)]
    stream = CountingStream(body(part("images", b"one"), part("note", b"x", None), *files), chunk=200)
    with pytest.raises(UnexpectedFieldError, match="the field 'note' is not read by this endpoint") as caught:
        read(stream)
    assert caught.value.field == "note"
    assert stream.pulled <= 600  # the 20 files after it are never read


def test_reader_accepts_a_part_without_filename() -> None:
    (upload,) = read(CountingStream(body(part("images", b"abc", None))))
    assert upload.filename is None and upload.data == b"abc"


def test_reader_stops_at_the_body_limit_of_an_endless_stream() -> None:
    stream = CountingStream(part("images", b""), chunk=4096, endless=True)
    with pytest.raises(RequestTooLargeError):
        read(stream, max_body_bytes=50_000, max_file_bytes=1_000_000)
    assert stream.pulled <= 50_000 + 4096


def test_reader_stops_at_the_file_count_without_reading_the_rest() -> None:
    files = [part("images", b"x" * 100) for _ in range(50)]
    stream = CountingStream(body(*files), chunk=200)
    with pytest.raises(TooManyFilesError):
        read(stream, max_files=3)
    assert stream.pulled < len(b"".join(files)) / 5


def test_reader_stops_at_an_oversized_single_file() -> None:
    stream = CountingStream(body(part("image", b"x" * 200_000)), chunk=1000)
    with pytest.raises(FileTooLargeError):
        read(stream, field="image", max_files=1, max_file_bytes=10_000, max_body_bytes=1_000_000)
    assert stream.pulled <= 12_000


def test_reader_marks_an_oversized_batch_file_and_keeps_going() -> None:
    stream = CountingStream(body(part("images", b"x" * 20_000, "big"), part("images", b"ok", "small")))
    big, small = read(stream, per_file_errors=True)
    assert isinstance(big.error, FileTooLargeError) and big.data == b""
    assert small.error is None and small.data == b"ok"


def test_reader_reports_a_missing_field() -> None:
    with pytest.raises(MissingFieldError):
        read(CountingStream(body()))


def test_available_cpus_follows_affinity_without_a_quota(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("content", "expected"), [("max 100000", None), ("150000 100000", 1.5), ("50000 100000", 0.5)])
def test_cgroup_v2_quota(tmp_path: Path, content: str, expected: float | None) -> None:
    (tmp_path / "cpu.max").write_text(content + "\n")
    assert cgroup_cpu_quota(tmp_path) == expected


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.0


def test_quota_caps_the_thread_count_and_rounds_up(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000")
    assert available_cpus(tmp_path) == 1  # half a CPU still needs one thread
    (tmp_path / "cpu.max").write_text(f"{1000 * 100000} 100000")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))  # a quota above the mask


@pytest.fixture
def classifier(tiny_model: Path) -> OnnxClassifier:
    return load_classifier(tiny_model, tiny_model.with_suffix(".json"), threads=1)


def test_predict_batch_returns_rows_that_sum_to_one(classifier: OnnxClassifier) -> None:
    batch = np.zeros((5, 224, 224, 3), dtype=np.uint8)
    batch[0, ..., 0] = 255
    probabilities = classifier.predict_batch(batch)
    assert probabilities.shape == (5, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert probabilities[0].argmax() == 0 and probabilities[1].argmax() == 3


class RecordingSession:
    """Wraps a session; appends the size of each batch it runs to `sizes`."""

    def __init__(self, session, sizes: list[int]) -> None:
        self.session, self.sizes = session, sizes

    def run(self, names, feed):
        self.sizes.append(len(next(iter(feed.values()))))
        return self.session.run(names, feed)

    def __getattr__(self, name):
        return getattr(self.session, name)


def record_runs(classifier: OnnxClassifier, *names: str) -> dict[str, list[int]]:
    """Replace the classifier's sessions `names` by recording ones; their batch sizes, by name."""
    sizes: dict[str, list[int]] = {name: [] for name in names}
    for name in names:
        setattr(classifier, name, RecordingSession(getattr(classifier, name), sizes[name]))
    return sizes


def test_large_batches_run_in_bounded_pieces_with_the_same_rows(classifier: OnnxClassifier) -> None:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (11, 224, 224, 3), dtype=np.uint8)
    whole = classifier.predict_batch(batch)  # default run size
    session = classifier.session
    sizes = record_runs(classifier, "session")["session"]
    try:
        classifier.max_run_images = 4
        pieces = classifier.predict_batch(batch)
    finally:
        classifier.session = session
    assert sizes == [4, 4, 3]
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    one_by_one = np.concatenate([classifier.predict_batch(batch[i:i + 1]) for i in range(len(batch))])
    np.testing.assert_allclose(pieces, one_by_one, atol=1e-6)


@pytest.mark.parametrize(
    "images",
    [np.zeros((1, 224, 224, 3), np.float32), np.zeros((224, 224, 3), np.uint8), np.zeros((1, 128, 128, 3), np.uint8)],
)
def test_predict_batch_refuses_other_inputs(classifier: OnnxClassifier, images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        classifier.predict_batch(images)


@pytest.mark.parametrize(
    "output",
    [np.full((2, 4), 0.5), np.full((2, 3), 1 / 3), np.array([[np.nan, 0, 0, 1]] * 2), np.array([[-0.5, 0.5, 0.5, 0.5]] * 2)],
)
def test_output_that_is_not_probabilities_is_a_server_fault(output: np.ndarray) -> None:
    with pytest.raises(ModelOutputError):
        _check_probabilities(output, 2)


def test_serving_imports_no_tensorflow() -> None:
    """The serving install has no TensorFlow: importing every app module must not need it."""
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, app\n"
        "for m in pkgutil.walk_packages(app.__path__, 'app.'): importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in {'tensorflow', 'keras', 'tf2onnx', 'training'})\n"
        "assert not bad, bad\n"
    )
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- run lanes: a lone run takes every CPU, concurrent runs share them ------------------------


class LaneProbe:
    """Runs `take()` on a thread and holds the lane until released; records whether it was wide."""

    def __init__(self, lanes: RunLanes) -> None:
        self.lanes, self.held, self.release, self.wide = lanes, threading.Event(), threading.Event(), None
        self.thread = threading.Thread(target=self._hold)
        self.thread.start()

    def _hold(self) -> None:
        with self.lanes.take() as wide:
            self.wide = wide
            self.held.set()
            self.release.wait(10)

    def finish(self) -> bool | None:
        self.release.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.wide


def test_a_lone_run_is_wide_and_holds_every_lane() -> None:
    lanes = RunLanes(runs=2, wide=True)
    first = LaneProbe(lanes)
    assert first.held.wait(10)
    second = LaneProbe(lanes)
    assert not second.held.wait(0.2)  # the wide run holds both lanes
    assert first.finish() is True
    assert second.held.wait(10)
    assert second.finish() is False  # it had to wait: there is company, so it runs narrow


def test_concurrent_runs_are_narrow_and_never_more_than_the_lanes() -> None:
    lanes = RunLanes(runs=2, wide=True)
    blocker = LaneProbe(lanes)  # wide
    assert blocker.held.wait(10)
    probes = [LaneProbe(lanes) for _ in range(3)]
    wait_for(lambda: lanes._waiting == 3, "the three probes to wait")  # so the end below must wake two
    blocker.finish()
    # Both freed lanes are taken at once (well before a probe gives its lane up by itself).
    wait_for(lambda: sum(p.held.is_set() for p in probes) == 2, "two probes to hold lanes", timeout_s=5)
    assert not any(p.wide for p in probes if p.held.is_set())
    time.sleep(0.1)
    assert sum(p.held.is_set() for p in probes) == 2  # the third waits for a lane
    results = [p.finish() for p in probes]
    assert results == [False, False, False]
    with lanes.take() as wide:  # all quiet again: alone, so wide
        assert wide


def test_many_threads_taking_lanes_all_finish_within_the_lanes() -> None:
    """A run's end wakes one waiter per lane it frees: under churn no waiter is left asleep,
    and the lanes held never exceed the lanes there are."""
    lanes = RunLanes(runs=2, wide=True)
    held, most, lock = [0], [0], threading.Lock()

    def worker(seed: int) -> None:
        pause = np.random.default_rng(seed).uniform(0, 0.0005, 100)
        for seconds in pause:
            with lanes.take() as wide:
                with lock:
                    held[0] += 2 if wide else 1
                    most[0] = max(most[0], held[0])
                time.sleep(seconds)
                with lock:
                    held[0] -= 2 if wide else 1

    threads = [threading.Thread(target=worker, args=(seed,), daemon=True) for seed in range(12)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a thread is still waiting for a lane"
    assert most[0] == 2 and held[0] == 0


def test_lanes_without_a_wide_session_never_go_wide() -> None:
    with RunLanes(runs=2, wide=False).take() as wide:
        assert not wide
    with RunLanes(runs=1, wide=True).take() as wide:  # one lane: there is nothing wider
        assert not wide


def hold_one_narrow_lane(lanes: RunLanes) -> LaneProbe:
    """A probe holding one narrow lane of two: a first probe goes wide, the second waits for it."""
    first = LaneProbe(lanes)  # alone: wide, holds both lanes
    assert first.held.wait(10)
    second = LaneProbe(lanes)  # had to wait: narrow once the first is done
    assert first.finish() is True
    assert second.held.wait(10)
    return second


def test_the_wide_and_the_narrow_session_give_the_same_probabilities(tiny_model: Path) -> None:
    classifier = load_classifier(tiny_model, tiny_model.with_suffix(".json"), threads=1, runs=2, wide_threads=2)
    assert classifier.wide_session is not None and classifier.wide_session is not classifier.session
    batch = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    sizes = record_runs(classifier, "session", "wide_session")
    lone = classifier.predict_batch(batch)
    assert sizes == {"wide_session": [2], "session": []}
    other = hold_one_narrow_lane(classifier.lanes)
    crowded = classifier.predict_batch(batch)  # another run in flight: the narrow session
    assert other.finish() is False
    assert sizes == {"wide_session": [2], "session": [2]}
    np.testing.assert_allclose(lone, crowded, atol=1e-6)
    assert load_classifier(tiny_model, tiny_model.with_suffix(".json"), threads=1, runs=1, wide_threads=2).wide_session is None


def test_narrow_runs_take_their_lanes_share_of_a_large_batch(tiny_model: Path) -> None:
    """Concurrent runs hold together no more images than one wide run: memory grows with the batch."""
    classifier = load_classifier(tiny_model, tiny_model.with_suffix(".json"), threads=1, runs=2, wide_threads=2)
    sizes = record_runs(classifier, "session", "wide_session")
    classifier.max_run_images = 8
    batch = np.random.default_rng(2).integers(0, 256, (11, 224, 224, 3), dtype=np.uint8)
    alone = classifier.predict_batch(batch)
    other = hold_one_narrow_lane(classifier.lanes)
    crowded = classifier.predict_batch(batch)
    other.finish()
    assert sizes == {"wide_session": [8, 3], "session": [4, 4, 3]}
    np.testing.assert_allclose(alone, crowded, atol=1e-6)
