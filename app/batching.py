"""Adaptive micro-batching: concurrent requests share model runs.

    request threads --submit(images)--> bounded queue --> worker thread:
        take up to `max_batch_size` images -> one model run -> each caller gets its own rows

Adaptive: the worker never waits for a batch to fill on the chance that someone comes. It
takes what is queued, and waits (at most `max_wait_s`) only while other requests have
announced themselves with `arriving()` and are still decoding. A lone request goes
straight to the model; a burst is gathered into one run. While a run is going, new
requests queue up and form the next batch, so under load batches grow by themselves.

The queue holds at most `max_queued_images` images. A request that would go past it is
refused at once with `OverloadedError` (503 with Retry-After), so memory stays bounded
however many clients send at once.

If a run of several requests fails, each request is run again alone, so one request whose
input breaks the model cannot fail the others; later batches are unaffected either way.

Exceptions:
    OverloadedError      (the queue is full: 503 `overloaded`, retry later)
    BatcherStoppedError  (the service is stopping: 503 `model_not_ready`)
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for start_batcher's signature; app.errors imports this module
    from app.classifier import OnnxClassifier
    from app.metrics import Metrics
    from app.settings import Settings

logger = logging.getLogger("dscnet.batching")

#: Runs the model on a uint8 batch (N, H, W, 3) and returns one row per image.
RunBatch = Callable[[np.ndarray], np.ndarray]
#: Told the size and the duration in seconds of every model run (metrics).
OnRun = Callable[[int, float], None]


class OverloadedError(RuntimeError):
    """More images are waiting for the model than the queue may hold."""

    reason = "overloaded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherStoppedError(RuntimeError):
    """The batcher no longer takes work: the service is stopping."""

    reason = "model_not_ready"


@dataclass
class _Job:
    images: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)


class MicroBatcher:
    """Coalesces concurrent `predict_batch` calls into shared runs of `run_batch`; thread-safe."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_images: int,
        workers: int = 1,
        on_run: OnRun | None = None,
    ) -> None:
        """
        Args:
            run_batch: the model call, made by the worker threads (one run per worker at a time).
            max_batch_size: most images per run (a single request larger than this runs alone).
            max_wait_s: longest a worker holds a partial batch for announced requests.
            max_queued_images: most images waiting for a worker; beyond it, `OverloadedError`.
            workers: worker threads, each running its own batches (see docs/PERFORMANCE.md).
            on_run: called after every successful run with its size and seconds.
        """
        if max_batch_size < 1 or max_queued_images < 1 or workers < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size, max_queued_images and workers must be >= 1, max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queued_images = max_queued_images
        self._on_run = on_run
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._queued_images = 0
        self._announced = 0  # requests that said they are coming and have not submitted yet
        self._stopped = False
        self._seconds_per_image = 0.0  # moving average, for Retry-After
        self._threads = [
            threading.Thread(target=self._work, name=f"dscnet-batcher-{i}", daemon=True) for i in range(workers)
        ]

    @property
    def queued_images(self) -> int:
        """Images waiting for a worker (not those in a run)."""
        return self._queued_images

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what is queued, and join the workers."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def arriving(self) -> Arrival:
        """Announce a request that will submit soon (it is decoding); use as a context manager."""
        return Arrival(self)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """The rows for `images`, computed in a shared run; blocks until they are ready."""
        return self.submit(images).result()

    def submit(self, images: np.ndarray) -> Future[np.ndarray]:
        """Queue `images` for a shared run; the future holds their rows (or the run's error).

        Raises `OverloadedError` at once when the queue has no room, `BatcherStoppedError` after `stop`.
        """
        return self._submit(images, announced=False)

    # -- the callers' side ------------------------------------------------------------

    def _announce(self) -> None:
        with self._cond:
            self._announced += 1

    def _withdraw(self) -> None:
        with self._cond:
            self._announced -= 1
            self._cond.notify_all()  # a worker may be waiting for this request

    def _submit(self, images: np.ndarray, *, announced: bool) -> Future[np.ndarray]:
        count = len(images)
        if count == 0:
            raise ValueError("no images to run")
        with self._cond:
            if announced:
                self._announced -= 1
            if self._stopped:
                raise BatcherStoppedError("the service is stopping")
            if self._queued_images + count > self.max_queued_images:
                if announced:
                    self._cond.notify_all()
                raise OverloadedError(
                    f"{self._queued_images} images are already waiting for the model "
                    f"(the limit is {self.max_queued_images}); retry later",
                    self._retry_after_s(),
                )
            job = _Job(images)
            self._queue.append(job)
            self._queued_images += count
            self._cond.notify_all()
        return job.future

    def _retry_after_s(self) -> int:
        """Seconds until the queue has drained at the recent rate: at least 1, at most 60."""
        return min(60, max(1, math.ceil(self._queued_images * self._seconds_per_image)))

    # -- the workers' side ------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if not self._queue:
                    return  # stopped and drained
                jobs, size = self._gather()
            self._run(jobs, size)

    def _gather(self) -> tuple[list[_Job], int]:
        """Take queued jobs up to the batch size; wait briefly for announced ones. Lock held."""
        jobs: list[_Job] = []
        size = self._take(jobs, 0)
        deadline = monotonic() + self.max_wait_s
        while size < self.max_batch_size and self._announced > 0 and not self._stopped:
            remaining = deadline - monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
            size = self._take(jobs, size)
        return jobs, size

    def _take(self, jobs: list[_Job], size: int) -> int:
        # The first job is taken whatever its size; later ones only while they fit.
        while self._queue and (not jobs or size + len(self._queue[0].images) <= self.max_batch_size):
            job = self._queue.popleft()
            jobs.append(job)
            size += len(job.images)
            self._queued_images -= len(job.images)
        return size

    def _run(self, jobs: list[_Job], size: int) -> None:
        batch = jobs[0].images if len(jobs) == 1 else np.concatenate([job.images for job in jobs])
        start = perf_counter()
        try:
            rows = self._run_batch(batch)
            if len(rows) != size:
                raise RuntimeError(f"the model returned {len(rows)} rows for {size} images")
        except Exception as err:  # the model's faults reach the callers, never kill the worker
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            for job in jobs:  # find which request broke the run; the others still get answers
                self._run([job], len(job.images))
            return
        seconds = perf_counter() - start
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * seconds / size
        offset = 0
        for job in jobs:
            count = len(job.images)
            job.future.set_result(rows[offset:offset + count])
            offset += count
        if self._on_run is not None:
            try:
                self._on_run(size, seconds)
            except Exception:  # metrics must never stop the worker
                logger.exception("the batch metrics callback failed")


class Arrival:
    """A request on its way to the batcher: while open, workers may wait for it (briefly)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._open = False

    def __enter__(self) -> Arrival:
        self._batcher._announce()
        self._open = True
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Submit the decoded images and wait for their rows (at most once per arrival)."""
        if not self._open:
            return self._batcher.predict_batch(images)
        self._open = False
        return self._batcher._submit(images, announced=True).result()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._open:  # nothing submitted: every image failed to decode, or an error
            self._open = False
            self._batcher._withdraw()


def start_batcher(settings: Settings, classifier: OnnxClassifier, metrics: Metrics) -> MicroBatcher | None:
    """The service's batcher, started, with its metrics; None when batching is switched off."""
    if not settings.batching:
        return None
    batcher = MicroBatcher(
        classifier.score_batch,  # rows of probabilities and unfamiliarity, split per request
        max_batch_size=settings.batch_max_size,
        max_wait_s=settings.batch_max_wait_ms / 1000,
        max_queued_images=settings.batch_queue_images,
        workers=settings.runs,
        on_run=lambda size, _seconds: metrics.batch_size.observe(size),
    )
    metrics.queued_images.set_function(lambda: batcher.queued_images)
    batcher.start()
    return batcher
