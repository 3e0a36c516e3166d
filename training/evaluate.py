"""Evaluate an exported model on its run's test split, with shortcut and robustness audits.

The model is evaluated as shipped: the ONNX file through onnxruntime, on images decoded by
`app.imaging.decode_image`. The split is rebuilt from the run's recorded settings and must
reproduce the run's manifest hash, so the test images are exactly those never trained on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.labels import CLASS_IDS
from training import shifts
from training.baseline import HistogramBaseline
from training.calibrate import (
    CALIBRATION_METHOD,
    TARGET_ACCEPTED_ACCURACY,
    apply_temperature,
    fit_calibration,
    selective_report,
)
from training.context import context_audit
from training.data import Dataset, load_dataset, manifest_sha256, split_seed
from training.metrics import classification_report, expected_calibration_error, per_group

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class RunData:
    """A training run's folder, its recorded summary, and its dataset split rebuilt."""

    folder: Path
    summary: dict
    dataset: Dataset


def load_run(folder: Path, root: Path) -> RunData:
    """Rebuild the run's split from the dataset at `root` and check it is the one the run trained on."""
    summary = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    config = summary["config"]
    dataset = load_dataset(root, split=config["split"], block_size=config["block_size"], seed=split_seed(config))
    rebuilt = manifest_sha256(dataset.samples)
    if rebuilt != summary["manifest_sha256"]:
        raise RuntimeError(
            f"the split rebuilt from {root} differs from the one run {folder} trained on "
            f"(manifest {rebuilt[:12]} != {summary['manifest_sha256'][:12]}): wrong data folder?")
    return RunData(folder, summary, dataset)


def load_runs(folders: list[Path], root: Path) -> list[RunData]:
    """`load_run` for each folder, rebuilding (and decoding) the dataset once per distinct split."""
    rebuilt: dict[str, Dataset] = {}
    runs = []
    for folder in folders:
        summary = json.loads((folder / "training.json").read_text(encoding="utf-8"))
        dataset = rebuilt.get(summary["manifest_sha256"])
        run = RunData(folder, summary, dataset) if dataset is not None else load_run(folder, root)
        rebuilt[summary["manifest_sha256"]] = run.dataset
        runs.append(run)
    return runs


def onnx_predictor(onnx_path: Path, batch_size: int = 32) -> Predict:
    """Probabilities from the ONNX model for uint8 NHWC images, in batches."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(images: np.ndarray) -> np.ndarray:
        parts = [session.run(None, {input_name: images[i:i + batch_size].astype(np.float32)})[0]
                 for i in range(0, len(images), batch_size)]
        return np.concatenate(parts)

    return predict


def audit_shifts(train_images: np.ndarray, train_labels: np.ndarray) -> list[tuple[str, Callable]]:
    """The audited acquisition changes, each a (name, images -> images) pair."""
    rows: list[tuple[str, Callable]] = [
        ("scale-bar corner masked", shifts.fill_corner),
        ("darker, less contrast (x0.85, contrast 0.8)", lambda x: shifts.brightness_contrast(x, 0.85, 0.8)),
        ("brighter, more contrast (x1.15, contrast 1.2)", lambda x: shifts.brightness_contrast(x, 1.15, 1.2)),
        ("gamma 0.8", lambda x: shifts.gamma(x, 0.8)),
        ("gamma 1.25", lambda x: shifts.gamma(x, 1.25)),
        ("HED stain jitter (x0.8-1.2, +-0.05)", lambda x: shifts.hed_stain(x, 0.2, 0.05, seed=1)),
    ]
    for c, class_id in enumerate(CLASS_IDS):
        mean, std = shifts.colour_statistics(train_images[train_labels == c])
        rows.append((f"Reinhard transfer to {class_id} slides",
                     lambda x, m=mean, s=std: shifts.reinhard_transfer(x, m, s)))
    rows += [
        ("JPEG quality 50", lambda x: shifts.jpeg(x, 50)),
        ("JPEG quality 75", lambda x: shifts.jpeg(x, 75)),
        ("Gaussian blur sigma 1", lambda x: shifts.blur(x, 1.0)),
        ("grayscale (for information)", shifts.grayscale),
    ]
    return rows


def audit(predictors: dict[str, Predict], images: np.ndarray, labels: np.ndarray,
          rows: list[tuple[str, Callable]]) -> list[dict]:
    """Accuracy and macro-F1 of each predictor on the clean images and under each shift."""
    table = []
    for name, transform in [("none (original test images)", lambda x: x), *rows]:
        shifted = transform(images)
        row = {"shift": name}
        for model_name, predict in predictors.items():
            report = classification_report(labels, predict(shifted))
            row[model_name] = {"accuracy": report["accuracy"], "macro_f1": report["macro"]["f1"]}
        table.append(row)
        log.info("audit %-45s %s", name, {k: round(v["accuracy"], 4) for k, v in row.items() if k != "shift"})
    return table


def evaluate_run(run: RunData, onnx_path: Path, full_audit: bool = True) -> dict:
    """Test-split metrics of the model and the colour baselines, and (optionally) the audits."""
    x_train, y_train, _ = run.dataset.subset("train")
    x_test, y_test, test_samples = run.dataset.subset("test")
    model = onnx_predictor(onnx_path)
    probabilities = model(x_test)
    colour = HistogramBaseline(colour=True).fit(x_train, y_train)
    grey = HistogramBaseline(colour=False).fit(x_train, y_train)
    colour_probabilities = colour.predict_proba(x_test)
    result = {
        "split": run.summary["config"]["split"],
        "test_images": int(len(y_test)),
        "model": classification_report(y_test, probabilities),
        "baseline_colour_histogram": classification_report(y_test, colour_probabilities),
        "baseline_grey_histogram": classification_report(y_test, grey.predict_proba(x_test)),
        "_test_labels": y_test,
        "_test_probabilities": probabilities,
    }
    if result["split"] == "blocks":  # in a random split a "session" is spread over train and test
        result["sessions"] = per_group(y_test, [s.group for s in test_samples],
                                       {"dscnet": probabilities, "colour_baseline": colour_probabilities})
    result["calibration"] = calibrate(run, model, y_test, probabilities)
    result["_test_calibrated"] = apply_temperature(probabilities, result["calibration"]["temperature"])
    if full_audit:
        predictors = {"dscnet": model, "colour_baseline": colour.predict_proba}
        result["audit"] = audit(predictors, x_test, y_test, audit_shifts(x_train, y_train))
        result["context"] = context_audit(predictors, x_test, y_test, x_train, y_train)
    return result


def calibrate(run: RunData, model: Predict, y_test: np.ndarray, test_probabilities: np.ndarray) -> dict:
    """Fit the temperature and the refer threshold on validation; measure both on test."""
    x_val, y_val, _ = run.dataset.subset("val")
    val_probabilities = model(x_val)
    temperature, threshold = fit_calibration(y_val, val_probabilities)
    val_calibrated = apply_temperature(val_probabilities, temperature)
    calibrated = apply_temperature(test_probabilities, temperature)
    return {
        "method": CALIBRATION_METHOD,
        "temperature": temperature,
        "refer_threshold": threshold,
        "target_accepted_accuracy": TARGET_ACCEPTED_ACCURACY,
        "validation": selective_report(y_val, val_calibrated, threshold),
        "test": selective_report(y_test, calibrated, threshold),
        "ece_test_before": expected_calibration_error(y_test, test_probabilities),
        "ece_test_after": expected_calibration_error(y_test, calibrated),
        "ece_val_before": expected_calibration_error(y_val, val_probabilities),
        "ece_val_after": expected_calibration_error(y_val, val_calibrated),
    }


def familiarity_on_test(run: RunData, model_path: Path, card: dict) -> dict:
    """The unfamiliarity on the test split, and the service's whole referral rule there
    (confidence, quality warnings, unfamiliarity: `training.referral`), with `card` as written."""
    from app.model_card import ModelCard
    from training.quantize import session
    from training.referral import service_answers

    x_test, y_test, _ = run.dataset.subset("test")
    checked = ModelCard.model_validate(card)
    probabilities, unfamiliarity, accepted = service_answers(session(model_path), x_test, checked)
    right = probabilities.argmax(axis=1) == y_test
    return {
        "flagged": round(float(np.mean(unfamiliarity > checked.familiarity.threshold)), 4),
        "accepted": round(float(accepted.mean()), 4),
        "accepted_accuracy": round(float(right[accepted].mean()), 4) if accepted.any() else None,
        "accepted_wrong": int(np.sum(accepted & ~right)),
        "images": int(len(y_test)),
    }
