"""Calibrated probabilities and the "refer to a human" decision, from the model card's calibration.

Training fits a temperature T and a confidence threshold t on the validation split and writes
them to the card's `calibration` block. Serving applies

    calibrated = softmax(log(p) / T)              (the same as dividing the logits by T)
    refer_to_human = max(calibrated) < t  or  the image drew a quality warning
                     or  its unfamiliarity is above the card's familiarity threshold

The unfamiliarity (a model output, `training.familiarity`) measures how far the image's features
lie from the training images'; its threshold flags 1 in 100 validation images. It catches what a
confident softmax does not: fields of view far wider than the dataset's, grey or cut-out images,
which the model reads with high confidence and often wrongly (not stain changes: docs/LAB.md).

Temperature scaling never changes which class is the most probable, only how confident the
answer says it is. A card without a `calibration` block (an older model, a test model) is
served with T = 1 and every case referred: the service has no validated threshold to accept
any answer on its own. A threshold above 1 (validation found none that reached the target
accuracy) also refers every case.

This re-implements `training.calibrate.apply_temperature`: `app` never imports `training`;
a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_EPS = 1e-12
NO_THRESHOLD_REASON = "the model has no validated referral threshold"


class CardCalibration(BaseModel):
    """The card's `calibration` block; fields the service does not use pass through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str = Field(min_length=1)
    temperature: float = Field(gt=0, allow_inf_nan=False)
    # Training writes the next float above 1.0 when no threshold reached the target accuracy.
    refer_threshold: float = Field(ge=0, le=1.000001, allow_inf_nan=False)
    target_accepted_accuracy: float | None = Field(None, gt=0, le=1)


class CardFamiliarity(BaseModel):
    """The card's `familiarity` block: which output holds the unfamiliarity, and its threshold."""

    model_config = ConfigDict(extra="allow", frozen=True)

    output: str = Field(min_length=1)
    threshold: float = Field(gt=0, allow_inf_nan=False)
    validation_quantile: float | None = Field(None, gt=0, lt=1)


@dataclass(frozen=True)
class Calibration:
    """What serving applies: a temperature and, if validated, a referral threshold (and an
    unfamiliarity threshold, when the model has that output)."""

    temperature: float = 1.0
    refer_threshold: float | None = None
    target_accepted_accuracy: float | None = None
    unfamiliarity_threshold: float | None = None
    unfamiliarity_quantile: float | None = None

    @classmethod
    def from_card(cls, block: CardCalibration | None, familiarity: CardFamiliarity | None = None) -> Calibration:
        unfamiliar = {} if familiarity is None else {"unfamiliarity_threshold": familiarity.threshold,
                                                      "unfamiliarity_quantile": familiarity.validation_quantile}
        if block is None:
            return cls(**unfamiliar)
        return cls(block.temperature, block.refer_threshold, block.target_accepted_accuracy, **unfamiliar)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) row by row; rows of a (N, C) array, float64, each summing to 1.

    T = 1 returns the rows unchanged (not merely within rounding), so an uncalibrated model
    reports exactly what it computed.
    """
    if temperature == 1.0:
        return np.array(probabilities, dtype=np.float64)
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


#: why a case is referred, one word each (the `dscnet_referrals_total` metric's `cause`)
REFER_CAUSES = ("no_threshold", "low_confidence", "unfamiliar", "quality_warning")


@dataclass(frozen=True)
class Referral:
    refer_to_human: bool
    reason: str | None
    #: the causes among REFER_CAUSES, in that order; empty when the case is not referred
    causes: tuple[str, ...] = ()


def refer(confidence: float, calibration: Calibration, warning_codes: Sequence[str] = (),
          unfamiliarity: float | None = None) -> Referral:
    """Whether a result needs a human, and why (None when it does not).

    Args:
        confidence: the calibrated top probability.
        calibration: the model's temperature and threshold.
        warning_codes: the image's quality warnings; any of them refers the case, because the
            threshold was validated on images of good quality only.
        unfamiliarity: the model's unfamiliarity output for the image, if it has one; above the
            calibration's unfamiliarity threshold the case is referred.
    """
    reasons: dict[str, str] = {}
    threshold = calibration.refer_threshold
    if threshold is None:
        reasons["no_threshold"] = NO_THRESHOLD_REASON
    elif threshold > 1.0:
        reasons["no_threshold"] = ("validation found no confidence threshold reaching the target accuracy; "
                                   "every case is referred")
    elif confidence < threshold:
        target = calibration.target_accepted_accuracy
        validated = f", validated for {target:.1%} accuracy on accepted cases" if target else ""
        reasons["low_confidence"] = (f"calibrated confidence {confidence:.3f} is below the referral threshold "
                                     f"{threshold:.3f}{validated}")
    limit = calibration.unfamiliarity_threshold
    if unfamiliarity is not None and limit is not None and not unfamiliarity <= limit:  # NaN refers too
        share = calibration.unfamiliarity_quantile
        validated = f", which {1 - share:.0%} of validation images exceed" if share else ""
        reasons["unfamiliar"] = (f"the image is unlike those the model was trained and validated on "
                                 f"(unfamiliarity {unfamiliarity:.0f} above the threshold {limit:.0f}{validated})")
    if warning_codes:
        reasons["quality_warning"] = "image quality warnings: " + ", ".join(warning_codes)
    return Referral(bool(reasons), "; ".join(reasons.values()) or None, tuple(reasons))
