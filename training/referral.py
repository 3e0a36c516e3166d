"""What the service would accept without a person, for images run offline: the same rule as serving.

`app.calibration.refer` decides from the calibrated confidence, the quality warnings
(`app.quality.assess_quality`) and, when the model has that output, the unfamiliarity
(`training.familiarity`); the offline tools (`dscnet evaluate`, `python -m
training.magnification`) call it the same way, so their "accepted" figures are the service's.

Run as a module, it prints the service's answers under each audited acquisition change of the
report (`training.evaluate.audit_shifts`): accuracy, how many the unfamiliarity flags, how many
answers the service would accept and how many of those are wrong, the figure a lab cares about.

    python -m training.referral --split test
    python -m training.referral --model runs/cand/model.onnx --split val --calibrate-on-validation
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.calibration import Calibration, CardCalibration, apply_temperature, refer
from app.model_card import ModelCard, load_model_card
from app.quality import assess_quality
from training.calibrate import CALIBRATION_METHOD, TARGET_ACCEPTED_ACCURACY, fit_calibration
from training.quantize import read_split, run_outputs, session


def warning_codes(images: np.ndarray) -> list[list[str]]:
    """The quality warnings' codes the service gives each of uint8 NHWC `images`."""
    return [[warning.code for warning in assess_quality(image)] for image in images]


def service_answers(session: ort.InferenceSession, images: np.ndarray, card: ModelCard,
                    codes: list[list[str]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated probabilities (N, 4), unfamiliarity (N; NaN without that output) and whether the
    service would accept each answer (N, bool) for uint8 NHWC `images`; `codes` are the images'
    `warning_codes` when the caller already has them."""
    familiar = card.familiarity is not None
    outputs = run_outputs(session, ["probabilities", card.familiarity.output] if familiar else ["probabilities"],
                          images)
    probabilities = outputs[0]
    unfamiliarity = np.reshape(outputs[1], -1) if familiar else np.full(len(images), np.nan)
    calibration = Calibration.from_card(card.calibration, card.familiarity)
    calibrated = apply_temperature(probabilities, calibration.temperature)
    codes = warning_codes(images) if codes is None else codes
    accepted = np.array([
        not refer(float(row.max()), calibration, image_codes, float(distance) if familiar else None).refer_to_human
        for row, distance, image_codes in zip(calibrated, unfamiliarity, codes, strict=True)
    ])
    return calibrated, unfamiliarity, accepted


def answer_cells(card: ModelCard, labels: np.ndarray, probabilities: np.ndarray, unfamiliarity: np.ndarray,
                 accepted: np.ndarray) -> tuple[str, str, str, str]:
    """The offline tables' cells for `service_answers`' results: accuracy, how many the unfamiliarity
    flags, how many answers are accepted (of all), and how many of those are wrong."""
    right = probabilities.argmax(axis=1) == labels
    flagged = (f"{np.sum(unfamiliarity > card.familiarity.threshold)}" if card.familiarity is not None
               else "(no such output)")
    return (f"{100 * right.mean():.2f}%", flagged, f"{accepted.sum()} of {len(labels)}",
            f"{np.sum(accepted & ~right)}")


def calibrated_on_validation(card: ModelCard, sess: ort.InferenceSession, manifest: Path,
                             data_dir: Path) -> ModelCard:
    """`card` with the temperature and referral threshold fitted on `manifest`'s validation split, as
    `dscnet evaluate` fits them: for a candidate compared before its test figures are read."""
    images, labels = read_split(manifest, data_dir, "val")
    (probabilities,) = run_outputs(sess, ["probabilities"], images)
    temperature, threshold = fit_calibration(labels, probabilities)
    print(f"calibration fitted on {len(images)} validation images: temperature {temperature:.6f}, "
          f"refer threshold {threshold:.4f}")
    calibration = CardCalibration(method=CALIBRATION_METHOD, temperature=temperature, refer_threshold=threshold,
                                  target_accepted_accuracy=TARGET_ACCEPTED_ACCURACY)
    return card.model_copy(update={"calibration": calibration})


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the offline referral tools share: which model, card, split and calibration."""
    from training.cli import default_data_dir

    parser.add_argument("--model", type=Path, default=Path("models/dscnet.onnx"))
    parser.add_argument("--card", type=Path,
                        help="model card with the calibration (default: the model's .json)")
    parser.add_argument("--manifest", type=Path, default=Path("models/split.csv"))
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", default="test")
    parser.add_argument("--calibrate-on-validation", action="store_true",
                        help="fit the temperature and referral threshold on the manifest's validation split "
                             "(as dscnet evaluate does) instead of using the card's")


def load_model(args: argparse.Namespace) -> tuple[ModelCard, ort.InferenceSession]:
    """The card (recalibrated on validation when asked) and the session that `add_model_arguments` name."""
    card, _ = load_model_card(args.card or args.model.with_suffix(".json"))
    sess = session(args.model)
    if args.calibrate_on_validation:
        card = calibrated_on_validation(card, sess, args.manifest, args.data_dir)
    return card, sess


def main(argv: list[str] | None = None) -> None:
    from training.evaluate import audit_shifts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    card, sess = load_model(args)
    images, labels = read_split(args.manifest, args.data_dir, args.split)
    train_images, train_labels = read_split(args.manifest, args.data_dir, "train")
    print(f"{len(images)} {args.split} images of {args.manifest}; model {args.model}")
    print("| shift | accuracy | flagged unfamiliar | accepted (confident, no warning, familiar) "
          "| accepted and wrong |")
    print("|---|---:|---:|---:|---:|")
    for name, shift in [("none", lambda x: x), *audit_shifts(train_images, train_labels)]:
        answers = service_answers(sess, shift(images), card)
        accuracy, flagged, accepted, wrong = answer_cells(card, labels, *answers)
        print(f"| {name} | {accuracy} | {flagged} | {accepted} | {wrong} |", flush=True)


if __name__ == "__main__":
    main()
