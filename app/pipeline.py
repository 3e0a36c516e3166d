"""The prediction path shared by the HTTP service and `dscnet predict`:

    uploads -> decode_image (each) -> stack -> OnnxClassifier.predict_batch (one run) -> outcomes

With a `MicroBatcher` the run is shared with concurrent requests (app.batching): the request
announces itself before decoding, so a worker holding a partial batch may wait for it.
An image that cannot be decoded becomes that item's error; the others still run.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from app.batching import Arrival, MicroBatcher
from app.classifier import OnnxClassifier
from app.imaging import ImageDecodeError, decode_image
from app.labels import CLASS_IDS
from app.uploads import Upload, UploadError


@dataclass
class ImageOutcome:
    """One image's answer: a label and probabilities, or the error that stopped it."""

    filename: str | None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: ImageDecodeError | UploadError | None = None


@dataclass(frozen=True)
class BatchOutcome:
    items: list[ImageOutcome]
    decode_seconds: float
    inference_seconds: float
    #: images that went through the model (0 when every image failed)
    batch_size: int


def classify_uploads(
    classifier: OnnxClassifier,
    uploads: Sequence[Upload],
    *,
    max_pixels: int,
    batcher: MicroBatcher | None = None,
) -> BatchOutcome:
    """Decode every upload, run the decodable ones through the model as one batch.

    Args:
        classifier: the verified model.
        uploads: files in the order sent; an upload that already carries an error is kept as is.
        max_pixels: the decompression-bomb limit passed to `decode_image`.
        batcher: when given, the model run goes through it (shared with concurrent requests).
    """
    with batcher.arriving() if batcher is not None else nullcontext() as arrival:
        return _classify(classifier, uploads, max_pixels, arrival)


def _classify(
    classifier: OnnxClassifier, uploads: Sequence[Upload], max_pixels: int, arrival: Arrival | None
) -> BatchOutcome:
    items: list[ImageOutcome] = []
    pixels: list[np.ndarray] = []
    decoded: list[ImageOutcome] = []
    start = perf_counter()
    for upload in uploads:
        item = ImageOutcome(filename=upload.filename, error=upload.error)
        items.append(item)
        if item.error is not None:
            continue
        try:
            pixels.append(decode_image(upload.data, max_pixels=max_pixels))
        except ImageDecodeError as err:
            item.error = err
            continue
        decoded.append(item)
    decode_seconds = perf_counter() - start

    if not pixels:
        return BatchOutcome(items, decode_seconds, 0.0, 0)  # no model run
    start = perf_counter()
    batch = np.stack(pixels)
    probabilities = arrival.predict(batch) if arrival is not None else classifier.predict_batch(batch)
    inference_seconds = perf_counter() - start
    for item, row in zip(decoded, probabilities, strict=True):
        item.label = CLASS_IDS[int(np.argmax(row))]
        item.probabilities = dict(zip(CLASS_IDS, (float(p) for p in row), strict=True))
    return BatchOutcome(items, decode_seconds, inference_seconds, len(pixels))
