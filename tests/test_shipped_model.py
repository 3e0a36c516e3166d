"""The model in models/ loads through the service's checks and classifies real test-split images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from app.classifier import load_classifier
from app.imaging import decode_image
from app.labels import CLASS_IDS

MODELS = Path(__file__).resolve().parent.parent / "models"
PER_CLASS = 10


def test_shipped_model_classifies_held_out_real_images(data_dir: Path):
    classifier = load_classifier(MODELS / "dscnet.onnx", MODELS / "dscnet.json", threads=1)
    with (MODELS / "split.csv").open(encoding="utf-8") as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    for class_id in CLASS_IDS:
        rows = [row for row in test_rows if row["class"] == class_id][:PER_CLASS]
        assert len(rows) == PER_CLASS, f"the manifest has too few {class_id} test images"
        images = np.stack([decode_image((data_dir / row["file"]).read_bytes()) for row in rows])
        probabilities = classifier.predict_batch(images)
        predicted = [CLASS_IDS[i] for i in probabilities.argmax(axis=1)]
        correct = sum(p == class_id for p in predicted)
        assert correct >= PER_CLASS - 1, f"{class_id}: {correct}/{PER_CLASS} right, predicted {predicted}"
