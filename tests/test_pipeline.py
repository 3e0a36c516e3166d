"""The prediction path (app.pipeline): the quality checks run beside the model, each image keeps its own."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import app.pipeline as pipeline
import helpers_images as images
import helpers_smears as smears
from app.classifier import OnnxClassifier, load_classifier
from app.imaging import DEFAULT_MAX_PIXELS
from app.pipeline import classify_uploads
from app.quality import QualityWarning
from app.uploads import Upload
from synthetic import png_bytes


def png_upload(pixels: np.ndarray) -> Upload:
    return Upload("image.png", png_bytes(pixels))


@pytest.fixture
def classifier(tiny_model: Path) -> OnnxClassifier:
    return load_classifier(tiny_model, tiny_model.with_suffix(".json"), 1)


def test_the_quality_checks_run_while_the_model_runs(
    classifier: OnnxClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each side waits until the other has started: run one after the other, they never meet."""
    both_started = threading.Barrier(2, timeout=10)
    real_check, real_predict = pipeline.assess_quality, classifier.score_batch

    def check(pixels: np.ndarray) -> list[QualityWarning]:
        both_started.wait()
        return real_check(pixels)

    def predict(batch: np.ndarray) -> np.ndarray:
        both_started.wait()
        return real_predict(batch)

    monkeypatch.setattr(pipeline, "assess_quality", check)
    monkeypatch.setattr(classifier, "score_batch", predict)
    (item,) = classify_uploads(classifier, [png_upload(smears.smear())], max_pixels=DEFAULT_MAX_PIXELS).items
    assert item.label is not None and item.warnings == []


def test_each_image_keeps_its_own_warnings_and_referral(classifier: OnnxClassifier) -> None:
    uploads = [
        png_upload(smears.scaled(smears.smear(), 0.4)),
        Upload("notes.txt", images.text_file()),
        png_upload(smears.smear(1)),
        png_upload(smears.blurred(smears.smear(2))),
    ]
    outcome = classify_uploads(classifier, uploads, max_pixels=DEFAULT_MAX_PIXELS)
    dark, text, good, blurred = outcome.items
    assert outcome.batch_size == 3
    assert [w.code for w in dark.warnings] == ["under_exposed"]
    assert text.error is not None and text.warnings == [] and text.label is None
    assert good.warnings == [] and good.label is not None
    assert [w.code for w in blurred.warnings] == ["out_of_focus"]
    # a warning refers the image whatever the model's confidence (app.calibration.refer)
    assert dark.refer_to_human and "under_exposed" in dark.refer_reason
    assert blurred.refer_to_human and "out_of_focus" in blurred.refer_reason
    assert "image quality warnings" not in (good.refer_reason or "")


def test_a_failing_model_run_is_raised_not_hidden_by_the_checks(
    classifier: OnnxClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("the session failed")

    monkeypatch.setattr(classifier, "score_batch", fail)
    with pytest.raises(RuntimeError, match="the session failed"):
        classify_uploads(classifier, [png_upload(smears.smear())], max_pixels=DEFAULT_MAX_PIXELS)
