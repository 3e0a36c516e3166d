"""The unfamiliarity referral: serving refers an image the model finds unlike its training images.

The tiny test model's "unfamiliarity" output is the distance of an image's mean colour from grey
(helpers_onnx); the real one (training.familiarity) is tested at the end, with the [train] extra.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import helpers_smears as smears
from app.calibration import Calibration, CardFamiliarity, refer
from app.classifier import ModelLoadError, load_classifier
from app.main import create_app
from app.settings import Settings
from helpers_lab import calibration, model_with, smear_png
from helpers_onnx import FAMILIARITY, build_tiny_model, write_card

UNLIKE = "unlike those the model was trained and validated on"


def familiar_model(folder: Path, threshold: float, with_output: bool = True) -> Path:
    """The tiny model with an unfamiliarity output (unless `with_output` is False) and a card whose
    familiarity threshold is `threshold`; its confidence threshold is low, so only unfamiliarity refers."""
    return model_with(folder, calibration(0.3), familiarity={**FAMILIARITY, "threshold": threshold},
                      with_unfamiliarity=with_output)


def test_refer_says_when_the_image_is_unfamiliar() -> None:
    limits = Calibration(refer_threshold=0.5, unfamiliarity_threshold=100.0, unfamiliarity_quantile=0.99)
    far = refer(0.99, limits, (), unfamiliarity=250.0)
    assert far.refer_to_human and UNLIKE in far.reason and "250 above the threshold 100" in far.reason
    assert "1% of validation images exceed" in far.reason
    assert not refer(0.99, limits, (), unfamiliarity=100.0).refer_to_human  # at the threshold: accepted
    assert refer(0.99, limits, (), unfamiliarity=math.nan).refer_to_human  # an unreadable value is no pass
    # both reasons are given when both hold
    both = refer(0.2, limits, ("out_of_focus",), unfamiliarity=250.0)
    assert both.reason.count(";") == 2 and UNLIKE in both.reason and "out_of_focus" in both.reason
    # a model without the output (None), or a card without the block, refers by confidence alone
    assert not refer(0.99, limits, (), unfamiliarity=None).refer_to_human
    assert not refer(0.99, Calibration(refer_threshold=0.5), (), unfamiliarity=250.0).refer_to_human


def test_the_card_block_is_read_and_checked() -> None:
    block = CardFamiliarity.model_validate(FAMILIARITY)
    limits = Calibration.from_card(None, block)
    assert limits.unfamiliarity_threshold == FAMILIARITY["threshold"] and limits.refer_threshold is None
    for bad in ({**FAMILIARITY, "threshold": 0}, {**FAMILIARITY, "threshold": math.inf}, {"threshold": 1.0}):
        with pytest.raises(ValueError):
            CardFamiliarity.model_validate(bad)


def test_a_card_naming_an_output_the_model_lacks_is_refused(tmp_path: Path) -> None:
    model = familiar_model(tmp_path, threshold=2.5, with_output=False)
    with pytest.raises(ModelLoadError, match="familiarity block names 'unfamiliarity'"):
        load_classifier(model, model.with_suffix(".json"), threads=1)


def test_score_rows_hold_the_probabilities_and_the_unfamiliarity(tmp_path: Path) -> None:
    model = familiar_model(tmp_path / "with", threshold=2.5)
    classifier = load_classifier(model, model.with_suffix(".json"), threads=1)
    batch = np.stack([smears.smear(0), smears.plain((128, 128, 128)), smears.plain((255, 0, 0))])
    rows = classifier.score_batch(batch)
    assert rows.shape == (3, 5)
    np.testing.assert_allclose(rows[:, :4], classifier.predict_batch(batch), atol=1e-9)
    assert rows[1, 4] < 0.01 < rows[0, 4] < FAMILIARITY["threshold"] < rows[2, 4]  # grey, a smear, pure red
    scored, maps = classifier.score_with_activation(batch)
    np.testing.assert_allclose(scored, rows, atol=1e-6)
    assert maps.shape[:1] == (3,)
    (tmp_path / "without").mkdir()
    plain = build_tiny_model(tmp_path / "without" / "dscnet.onnx")
    write_card(plain)
    without = load_classifier(plain, plain.with_suffix(".json"), threads=1)
    assert without.unfamiliarity_output is None and np.isnan(without.score_batch(batch)[:, 4]).all()


@pytest.mark.parametrize("batching", [False, True])
def test_the_api_refers_an_image_above_the_threshold_and_only_then(tmp_path: Path, batching: bool) -> None:
    """The same smear (unfamiliarity about 1.4 for the tiny model) under two cards: referred when the
    threshold is below it, accepted when above; the micro-batcher's shared runs carry it too."""
    verdicts = {}
    for threshold in (1.0, 2.5):
        model = familiar_model(tmp_path / str(threshold), threshold)
        settings = Settings(model_path=model, ort_threads=1, batching=batching)
        with TestClient(create_app(settings)) as client:
            body = client.post("/predict", files={"image": ("smear.png", smear_png(), "image/png")}).json()
            batch = client.post("/predict-batch", files=[("images", ("a.png", smear_png(), "image/png")),
                                                         ("images", ("b.png", smear_png(1), "image/png"))]).json()
            metrics = client.get("/metrics").text
        assert body["warnings"] == []
        counted = 'dscnet_referrals_total{cause="unfamiliar"} 3.0' in metrics
        verdicts[threshold] = (body["refer_to_human"], body["refer_reason"] or "",
                               [r["refer_to_human"] for r in batch["results"]], counted,
                               "dscnet_referrals_total{" in metrics)
    referred, reason, in_batch, counted, any_referral = verdicts[1.0]
    assert referred and UNLIKE in reason and in_batch == [True, True] and counted  # the drift signal
    referred, reason, in_batch, counted, any_referral = verdicts[2.5]
    assert not referred and reason == "" and in_batch == [False, False] and not any_referral


# -- the exported output (needs the [train] extra) --------------------------------------------


def test_the_exported_output_is_the_distance_and_runs_the_network_once(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras", reason="the [train] extra is not installed")  # CI installs it
    import dataclasses

    import onnx
    import onnxruntime as ort

    from synthetic import smear_like
    from training.export import export_onnx
    from training.familiarity import FeatureDistance, FeatureStatistics, features_of, fit_familiarity
    from training.model import DSCNetConfig, build_dscnet

    keras.utils.set_random_seed(0)
    model = build_dscnet(dataclasses.replace(DSCNetConfig.tiny(), filter_space="lab"))
    images = smear_like(40)
    labels = np.arange(40) % 4
    statistics, block = fit_familiarity(model, (images[:24], labels[:24]), images[24:], classes=4)
    assert block["output"] == "unfamiliarity" and block["validation_quantile"] == 0.99 and block["threshold"] > 0
    features = features_of(model, images)
    assert features.shape[1] > 24  # more features than images: the shrinkage keeps the covariance invertible
    layer = FeatureDistance(statistics.means, statistics.precision)
    np.testing.assert_allclose(np.asarray(layer(features.astype("float32"))), statistics.distance(features),
                               rtol=1e-3)
    with pytest.raises(ValueError, match="no training images of classes"):
        FeatureStatistics.fit(features[:8], np.zeros(8, dtype=int), 4)

    plain, familiar = tmp_path / "plain.onnx", tmp_path / "familiar.onnx"
    export_onnx(model, plain, images)
    record = export_onnx(model, familiar, images, familiarity=statistics)
    assert "unfamiliarity@32" in record["max_abs_difference"]  # parity checked on it too
    convolutions = [sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)
                    for path in (plain, familiar)]
    assert convolutions[0] == convolutions[1] > 0  # the network runs once, not again for its features
    session = ort.InferenceSession(str(familiar), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "class_activation", "unfamiliarity"]
    (distance,) = session.run(["unfamiliarity"], {"image": images.astype("float32")})
    np.testing.assert_allclose(distance, statistics.distance(features), rtol=1e-3)
    from training.quantize import filter_nodes

    kept_float = filter_nodes(familiar)  # int8 quantisation leaves the distance's MatMul float
    assert any("unfamiliarity" in name and "MatMul" in name for name in kept_float)


def test_the_int8_model_refits_its_distance_on_its_own_features(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras", reason="the [train] extra is not installed")  # CI installs it
    import dataclasses

    import onnxruntime as ort

    from synthetic import smear_like
    from training.export import export_onnx
    from training.familiarity import fit_familiarity
    from training.model import DSCNetConfig, build_dscnet
    from training.quantize import quantize, refit_familiarity

    keras.utils.set_random_seed(0)
    model = build_dscnet(dataclasses.replace(DSCNetConfig.tiny(), filter_space="lab"))
    images, labels = smear_like(48), np.arange(48) % 4
    statistics, block = fit_familiarity(model, (images[:32], labels[:32]), images[32:], classes=4)
    float_path, int8_path = tmp_path / "dscnet.onnx", tmp_path / "dscnet-int8.onnx"
    export_onnx(model, float_path, images, familiarity=statistics)
    quantize(float_path, int8_path, images[:32])
    refitted = refit_familiarity(block, int8_path, (images[:32], labels[:32]), images[32:])
    (distance,) = ort.InferenceSession(str(int8_path)).run(["unfamiliarity"], {"image": images[32:].astype("float32")})
    # the rewritten constants are what the file computes with: its own validation quantile is the threshold
    assert refitted["threshold"] == pytest.approx(float(np.quantile(distance, 0.99)), rel=1e-3)
    assert refitted["float32_threshold"] == block["threshold"] and "int8" in refitted["method"]
    assert refit_familiarity(None, int8_path, (images, labels), images) is None
