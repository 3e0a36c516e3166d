"""The model card (`models/dscnet.json`): what the ONNX file is and how to feed it.

The service checks the card against this code before it loads the model: the classes must
be `CLASS_IDS` in output order and the preprocessing version must be the one
`app.imaging.decode_image` implements. Keys the service does not use (metrics, training,
intended use, limitations) are kept and returned unchanged by `GET /model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.calibration import CardCalibration, CardFamiliarity
from app.imaging import IMAGE_SIZE, PREPROCESSING_VERSION
from app.labels import CLASS_IDS


class ModelCardError(ValueError):
    """A card that is missing, unreadable, or does not match this service."""


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    shape: list[int | None]


class InputSpec(TensorSpec):
    dtype: Literal["float32"]
    layout: Literal["NHWC"]
    color: Literal["RGB"]
    range: tuple[float, float]

    @field_validator("shape")
    @classmethod
    def _image_shape(cls, shape: list[int | None]) -> list[int | None]:
        if shape[1:] != [IMAGE_SIZE, IMAGE_SIZE, 3] or len(shape) != 4:
            raise ValueError(f"input shape must be [null, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {shape}")
        return shape


class PreprocessingSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str
    function: str


class ModelCard(BaseModel):
    """The fields the service relies on; everything else passes through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    classes: list[str]
    input: InputSpec
    output: TensorSpec
    preprocessing: PreprocessingSpec
    opset: int = Field(ge=1)
    #: temperature and referral threshold (app.calibration); None serves T=1 and refers every case
    calibration: CardCalibration | None = None
    #: the unfamiliarity output and its referral threshold (app.calibration); None: no such referral
    familiarity: CardFamiliarity | None = None

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower_hex(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def load_model_card(path: Path) -> tuple[ModelCard, dict[str, Any]]:
    """Read and check a card; returns the checked card and the raw JSON object for `GET /model`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelCardError(f"the model card {path} does not exist") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelCardError(f"the model card {path} is not readable JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ModelCardError(f"the model card {path} must hold a JSON object")
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in err.errors()
        )
        raise ModelCardError(f"the model card {path} is invalid: {problems}") from err
    check_card_matches_service(card, path)
    return card, raw


def check_card_matches_service(card: ModelCard, path: Path) -> None:
    """Refuse a card whose classes, preprocessing or output width this code cannot serve."""
    if tuple(card.classes) != CLASS_IDS:
        raise ModelCardError(
            f"the model card {path} lists classes {card.classes}; this service serves {list(CLASS_IDS)}"
        )
    if card.preprocessing.version != PREPROCESSING_VERSION:
        raise ModelCardError(
            f"the model was trained with preprocessing version {card.preprocessing.version!r}; "
            f"this service implements version {PREPROCESSING_VERSION!r}"
        )
    if card.output.shape[-1:] != [len(CLASS_IDS)]:
        raise ModelCardError(
            f"the model card {path} declares output shape {card.output.shape}; "
            f"expected [null, {len(CLASS_IDS)}]"
        )
