"""The usual way published ALL classifiers are served, as a yardstick: Keras `model.predict` in FastAPI.

The pattern found in most public repositories: the model loaded at import, an `async def`
route that reads the upload, preprocesses it and calls `model.predict` on a batch of one.
To compare serving, not preprocessing, it decodes with the same `decode_image` as the
service. Needs the training extra (TensorFlow). Not part of the service.

    KERAS_MODEL_PATH=runs/blocks/model.keras uvicorn benchmarks.keras_server:app --port 8001

Without a trained model file (KERAS_MODEL_PATH missing), it serves a DSCNet with random
weights: the same architecture and cost, and `/info` says which one it serves.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from fastapi import FastAPI, File, UploadFile  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from app.imaging import decode_image  # noqa: E402
from app.labels import CLASS_IDS  # noqa: E402
from training.model import build_dscnet  # noqa: E402  (also registers SmearFilter for loading)

MODEL_PATH = Path(os.environ.get("KERAS_MODEL_PATH", REPO_ROOT / "runs" / "blocks" / "model.keras"))

if MODEL_PATH.exists():
    model = keras.saving.load_model(MODEL_PATH, compile=False)
    SERVED = f"trained model {MODEL_PATH}"
else:
    keras.utils.set_random_seed(0)
    model = build_dscnet()
    SERVED = f"DSCNet with random weights ({MODEL_PATH} does not exist)"

app = FastAPI(title="Keras model.predict baseline")


@app.get("/info")
async def info() -> dict:
    """Which model this server holds."""
    return {"model": SERVED}


@app.post("/predict")
async def predict(image: UploadFile = File(...)) -> dict:  # noqa: B008  (FastAPI's idiom)
    """Classify one image the common way: read, preprocess, `model.predict` on a batch of one."""
    data = await image.read()
    batch = decode_image(data)[np.newaxis].astype(np.float32)
    probabilities = model.predict(batch, verbose=0)[0]
    return {
        "label": CLASS_IDS[int(np.argmax(probabilities))],
        "probabilities": {c: float(p) for c, p in zip(CLASS_IDS, probabilities, strict=True)},
    }
