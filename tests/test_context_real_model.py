"""The shipped model on its validation images with their white cells on other backgrounds.

Needs models/dscnet.onnx (committed with its card): where it is missing this fails, never skips.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy", reason="the [train] extra is not installed")  # CI installs it

from app.classifier import load_classifier  # noqa: E402
from app.imaging import decode_image  # noqa: E402
from app.labels import CLASS_IDS  # noqa: E402
from training.context import context_audit  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"


def _split(data_dir: Path, split: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    with (MODELS / "split.csv").open(encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split][::step]
    images = np.stack([decode_image((data_dir / row["file"]).read_bytes()) for row in rows])
    return images, np.array([CLASS_IDS.index(row["class"]) for row in rows])


@pytest.fixture(scope="module")
def audit(data_dir: Path) -> dict:
    model = MODELS / "dscnet.onnx"
    if not model.is_file():
        pytest.fail(f"{model} is missing: the real model is committed with its card; this test needs it")
    classifier = load_classifier(model, model.with_suffix(".json"), threads=1)
    images, labels = _split(data_dir, "val", 2)  # 242 across every validation session
    train_images, train_labels = _split(data_dir, "train", 4)
    return context_audit({"shipped": classifier.predict_batch}, images, labels, train_images, train_labels)["shipped"]


@pytest.mark.slow
def test_pasting_cells_on_a_background_of_their_own_class_costs_nothing(audit: dict) -> None:
    """The audit's reference: the cut and paste alone does not confuse the shipped model, so what the
    other rows measure is the background's class, not an artefact of the paste."""
    assert audit["cells_on_same_class"]["accuracy"] >= 0.95, audit


@pytest.mark.slow
def test_the_shipped_model_reads_the_cells_not_their_surroundings(audit: dict) -> None:
    """With its cells on another class's background an image keeps its class in at least 4 of 5 cases,
    and with its cells painted out it is named right in at most 2 of 5."""
    assert audit["cells_on_other_class"]["accuracy"] >= 0.8, audit
    assert audit["cells_removed"]["still_called_its_class"] <= 0.4, audit
