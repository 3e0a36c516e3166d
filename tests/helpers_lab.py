"""Clients and images for the lab-facing tests: a tiny model whose card carries a calibration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

import helpers_smears as smears
from app.main import create_app
from app.settings import Settings
from helpers_onnx import CALIBRATION, build_tiny_model, write_card
from synthetic import png_bytes


def smear_png(seed: int = 0) -> bytes:
    return png_bytes(smears.smear(seed))


def model_with(folder: Path, calibration: dict[str, Any] | None = None, with_activation: bool = True,
               familiarity: dict[str, Any] | None = None, with_unfamiliarity: bool = False) -> Path:
    """A tiny model in `folder`, its card with `calibration` and `familiarity` (None: no such block)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(folder / "dscnet.onnx", with_activation=with_activation,
                             with_unfamiliarity=with_unfamiliarity)
    blocks = {"calibration": calibration, "familiarity": familiarity}
    write_card(model, **{key: block for key, block in blocks.items() if block is not None})
    return model


@contextmanager
def client_for(model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=model, ort_threads=1))) as client:
        yield client


def calibration(threshold: float, temperature: float = 1.5) -> dict[str, Any]:
    return {**CALIBRATION, "refer_threshold": threshold, "temperature": temperature}
