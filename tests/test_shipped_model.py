"""The model in models/ loads through the service's checks and classifies real test-split images.

A check that the shipped file, its card and the serving decode work together on real smears,
not a measure of accuracy (models/reports/report.md has that): images evenly spread over the
test split's sessions, each class read right well above chance, and most images overall. A
broken pipeline (channels swapped, wrong scaling, a card for another model) reads far worse.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.classifier import load_classifier
from app.imaging import decode_image
from app.labels import CLASS_IDS
from app.model_card import load_model_card
from training.card import MODEL_VERSION, sha256_file

MODELS = Path(__file__).resolve().parent.parent / "models"
PER_CLASS = 20
MIN_CLASS_ACCURACY = 0.7  # chance is 0.25; the shipped model's weakest class (pre-B) reads 79% of the test split
MIN_ACCURACY = 0.85


# the float32 model, and the int8 option when one is shipped (`python -m training.quantize` writes it only
# when its test accuracy is within 0.5 points of float32's: 2.6.0's is, 2.5.0's was not;
# models/reports/quantization.json)
SHIPPED = ["dscnet", *(["dscnet-int8"] if (MODELS / "dscnet-int8.onnx").exists() else [])]


def test_the_version_that_export_writes_is_the_shipped_models():
    """`dscnet export` stamps training.card.MODEL_VERSION on every card it writes: while it names another
    version than the shipped card's, any export would be labelled as a model that does not ship."""
    card = json.loads((MODELS / "dscnet.json").read_text(encoding="utf-8"))
    assert card["version"] == MODEL_VERSION


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_classifies_held_out_real_images(data_dir: Path, name: str):
    from training.quantize import split_rows

    classifier = load_classifier(MODELS / f"{name}.onnx", MODELS / f"{name}.json", threads=1)
    test_rows = split_rows(MODELS / "split.csv", "test")
    right, findings = 0, []
    for class_id in CLASS_IDS:
        rows = [row for row in test_rows if row["class"] == class_id]
        assert len(rows) >= PER_CLASS, f"the manifest has too few {class_id} test images"
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, PER_CLASS).round().astype(int)]
        images = np.stack([decode_image((data_dir / row["file"]).read_bytes()) for row in rows])
        predicted = [CLASS_IDS[i] for i in classifier.predict_batch(images).argmax(axis=1)]
        correct = sum(p == class_id for p in predicted)
        right += correct
        findings.append(f"{class_id}: {correct}/{PER_CLASS} right, read as {sorted(set(predicted))}")
        assert correct >= MIN_CLASS_ACCURACY * PER_CLASS, "; ".join(findings)
    assert right >= MIN_ACCURACY * PER_CLASS * len(CLASS_IDS), "; ".join(findings)


def test_an_int8_option_ships_exactly_when_the_quantisation_report_of_the_shipped_model_allows_it():
    """A new float model without a new int8 file would leave the option serving the old weights; an int8
    file that failed its accuracy limit must not sit beside the model as if it were an option."""
    report = json.loads((MODELS / "reports" / "quantization.json").read_text(encoding="utf-8"))
    float_card = json.loads((MODELS / "dscnet.json").read_text(encoding="utf-8"))
    assert report["source_sha256"] == float_card["sha256"] == sha256_file(MODELS / "dscnet.onnx")
    assert report["max_drop_points"] == 0.5
    assert report["shipped"] == (report["drop_points"] <= report["max_drop_points"])
    assert (MODELS / "dscnet-int8.onnx").exists() == (MODELS / "dscnet-int8.json").exists() == report["shipped"]
    if report["shipped"]:
        card = json.loads((MODELS / "dscnet-int8.json").read_text(encoding="utf-8"))
        assert card["quantization"]["source_sha256"] == float_card["sha256"]
        assert card["sha256"] == sha256_file(MODELS / "dscnet-int8.onnx")
        assert card["version"] == float_card["version"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_find_real_smears_familiar_and_grey_or_cut_out_ones_not(data_dir: Path, name: str):
    """The unfamiliarity referral: a dataset image is rarely above the threshold (1 in 100 of the
    validation images is, by construction) and a grey copy of it always is. A field three times as
    wide (a 3x3 mosaic of one session's images, as training.magnification makes it) is referred by
    the service's whole rule (the cells_too_small warning, whatever the model, and the unfamiliarity)
    nearly always: what the service promises a lab with a lower-power objective."""
    from training.quantize import session, split_rows
    from training.referral import service_answers
    from training.shifts import wider_field

    classifier = load_classifier(MODELS / f"{name}.onnx", MODELS / f"{name}.json", threads=1)
    assert classifier.unfamiliarity_output == "unfamiliarity"
    threshold = classifier.card.familiarity.threshold
    rows = split_rows(MODELS / "split.csv", "test")[::12]  # 41 across the sessions
    images = np.stack([decode_image((data_dir / row["file"]).read_bytes()) for row in rows])
    grey = np.repeat(np.round(images @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None], 3, axis=-1)
    wide = wider_field(images, [row["group"] for row in rows], 3.0)
    as_is, greyed, wider = (classifier.score_batch(batch)[:, len(CLASS_IDS)] for batch in (images, grey, wide))
    assert np.sum(as_is > threshold) <= 2, f"{np.sum(as_is > threshold)} of {len(rows)} real smears flagged"
    assert np.all(greyed > threshold)
    assert np.mean(wider > threshold) >= 0.5, f"only {np.mean(wider > threshold):.0%} of 3x wider fields flagged"
    _, _, accepted = service_answers(session(MODELS / f"{name}.onnx"), wide, classifier.card)
    assert np.mean(~accepted) >= 0.9, f"only {np.mean(~accepted):.0%} of 3x wider fields referred"


def test_a_candidate_calibrated_on_validation_gets_the_calibration_that_evaluate_wrote(data_dir: Path):
    """`--calibrate-on-validation` (training.magnification, training.referral) compares candidates on validation
    before any test figure is read; what it fits must be what `dscnet evaluate` fits and ships, or the
    candidate's referral figures would describe another service than the one it would become."""
    pytest.importorskip("scipy", reason="the [train] extra is not installed")  # CI installs it
    from training.quantize import session
    from training.referral import calibrated_on_validation

    card, _ = load_model_card(MODELS / "dscnet.json")
    blank = card.model_copy(update={"calibration": None})
    fitted = calibrated_on_validation(blank, session(MODELS / "dscnet.onnx"), MODELS / "split.csv", data_dir)
    assert fitted.calibration.temperature == pytest.approx(card.calibration.temperature, abs=1e-6)
    assert fitted.calibration.refer_threshold == pytest.approx(card.calibration.refer_threshold, abs=1e-9)
    assert fitted.familiarity == card.familiarity


def test_the_shift_referral_table_gives_the_services_answers_under_every_audited_shift(data_dir: Path, tmp_path,
                                                                                      capsys):
    """`python -m training.referral` prints one row per audited shift; its unshifted row is what the
    service's own rule gives for those images, counted image by image here."""
    pytest.importorskip("scipy", reason="the [train] extra is not installed")  # CI installs it
    from training.data import read_manifest, write_manifest
    from training.evaluate import audit_shifts
    from training.quantize import read_split, session
    from training.referral import main, service_answers

    samples = read_manifest(MODELS / "split.csv")
    kept = [sample for split in ("train", "test") for class_id in CLASS_IDS
            for sample in [s for s in samples if s.split == split and s.class_id == class_id][:3]]
    manifest = tmp_path / "small.csv"
    write_manifest(kept, manifest)
    main(["--manifest", str(manifest), "--data-dir", str(data_dir), "--split", "test"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "%" in line]
    images, labels = read_split(manifest, data_dir, "test")
    assert len(table) == 1 + len(audit_shifts(images, labels))
    card, _ = load_model_card(MODELS / "dscnet.json")
    probabilities, _, accepted = service_answers(session(MODELS / "dscnet.onnx"), images, card)
    wrong = int(np.sum(accepted & (probabilities.argmax(axis=1) != labels)))
    assert table[0].startswith("| none |")
    assert table[0].endswith(f"| {accepted.sum()} of {len(images)} | {wrong} |"), table[0]
