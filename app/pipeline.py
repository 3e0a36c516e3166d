"""The prediction path shared by the HTTP service and `dscnet predict`:

    uploads -> decode_image (each) -> stack -> OnnxClassifier.score_batch (one run)
                                            + quality checks (each), beside the run
      -> calibration and referral (confidence, quality warnings, unfamiliarity)
      -> outcomes [-> heatmaps, when explaining]

With a `MicroBatcher` the run is shared with concurrent requests (app.batching): the request
announces itself before decoding, so a worker holding a partial batch may wait for it.
An image that cannot be decoded becomes that item's error; the others still run.

The quality checks need only the decoded pixels, so they run in a small pool of their own
while the model runs: a lone request's run on two threads leaves a core idle much of the time
(it is only about 1.3x faster than on one), and the checks fill it (docs/PERFORMANCE.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from time import perf_counter

import numpy as np

from app.batching import Arrival, MicroBatcher
from app.calibration import Calibration, apply_temperature, refer
from app.classifier import OnnxClassifier
from app.cpus import available_cpus
from app.explain import Explanation, ExplanationUnavailableError, explain_image
from app.imaging import ImageDecodeError, decode_image
from app.labels import CLASS_IDS
from app.quality import QualityWarning, assess_quality
from app.uploads import Upload, UploadError


@dataclass
class ImageOutcome:
    """One image's answer: a label and probabilities, or the error that stopped it."""

    filename: str | None
    label: str | None = None
    #: calibrated (app.calibration); the model's own output is in `uncalibrated`
    probabilities: dict[str, float] | None = None
    uncalibrated: dict[str, float] | None = None
    refer_to_human: bool | None = None
    refer_reason: str | None = None
    #: the referral's causes (app.calibration.REFER_CAUSES), for the metrics; empty when accepted
    refer_causes: tuple[str, ...] = ()
    warnings: list[QualityWarning] = field(default_factory=list)
    #: how unlike the training images the model finds it (training.familiarity); None without that output
    unfamiliarity: float | None = None
    explanation: Explanation | None = None
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
    explain: bool = False,
) -> BatchOutcome:
    """Decode every upload, run the decodable ones through the model as one batch.

    Args:
        classifier: the verified model.
        uploads: files in the order sent; an upload that already carries an error is kept as is.
        max_pixels: the decompression-bomb limit passed to `decode_image`.
        batcher: when given, the model run goes through it (shared with concurrent requests).
        explain: also ask the model for its class activation maps and draw each image's
            heatmap (a run of its own: the batcher's shared runs give probabilities only).
    """
    if explain and not classifier.has_activation:
        raise ExplanationUnavailableError("the model being served has no class activation output to explain with")
    with batcher.arriving() if batcher is not None and not explain else nullcontext() as arrival:
        return _classify(classifier, uploads, max_pixels, arrival, explain)


def _classify(
    classifier: OnnxClassifier, uploads: Sequence[Upload], max_pixels: int, arrival: Arrival | None, explain: bool
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
            # Kept without traceback or cause: their frames would hold this request's uploads
            # and decoded images in a reference cycle until a full GC pass (PERFORMANCE.md).
            item.error = err.with_traceback(None)
            err.__cause__ = err.__context__ = None
            continue
        decoded.append(item)
    decode_seconds = perf_counter() - start

    if not pixels:
        return BatchOutcome(items, decode_seconds, 0.0, 0)  # no model run
    checks = _checks_pool().submit(_assess_each, pixels)
    start = perf_counter()
    batch = np.stack(pixels)
    if explain:
        rows, activation = classifier.score_with_activation(batch)
    else:
        rows = arrival.predict(batch) if arrival is not None else classifier.score_batch(batch)
    inference_seconds = perf_counter() - start
    for item, warnings in zip(decoded, checks.result(), strict=True):
        item.warnings = warnings
    probabilities = rows[:, :len(CLASS_IDS)]
    unfamiliarity = rows[:, len(CLASS_IDS)]
    calibration = Calibration.from_card(classifier.card.calibration, classifier.card.familiarity)
    calibrated = apply_temperature(probabilities, calibration.temperature)
    for index, (item, raw, row) in enumerate(zip(decoded, probabilities, calibrated, strict=True)):
        top = int(np.argmax(row))
        item.label = CLASS_IDS[top]
        item.probabilities = dict(zip(CLASS_IDS, (float(p) for p in row), strict=True))
        item.uncalibrated = dict(zip(CLASS_IDS, (float(p) for p in raw), strict=True))
        if classifier.unfamiliarity_output is not None:
            item.unfamiliarity = float(unfamiliarity[index])
        referral = refer(float(row[top]), calibration, [warning.code for warning in item.warnings],
                         item.unfamiliarity)
        item.refer_to_human, item.refer_reason = referral.refer_to_human, referral.reason
        item.refer_causes = referral.causes
        if explain:
            item.explanation = explain_image(pixels[index], activation[index], top, item.label)
    return BatchOutcome(items, decode_seconds, inference_seconds, len(pixels))


@lru_cache(maxsize=1)
def _checks_pool() -> ThreadPoolExecutor:
    """The quality checks' threads, one per usable CPU; made at the first request, not at import."""
    return ThreadPoolExecutor(max_workers=available_cpus(), thread_name_prefix="dscnet-quality")


def _assess_each(pixels: list[np.ndarray]) -> list[list[QualityWarning]]:
    return [assess_quality(image) for image in pixels]
