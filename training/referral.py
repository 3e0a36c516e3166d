"""What the service would accept without a person, for images run offline: the same rule as serving.

`app.calibration.refer` decides from the calibrated confidence, the quality warnings
(`app.quality.assess_quality`) and, when the model has that output, the unfamiliarity
(`training.familiarity`); the offline tools (`dscnet evaluate`, `python -m
training.magnification`) call it the same way, so their "accepted" figures are the service's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from app.calibration import Calibration, apply_temperature, refer
from app.model_card import ModelCard
from app.quality import assess_quality
from training.quantize import run_outputs


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
