"""`dscnet ensemble`: one model that averages several trained DSCNet runs of the same split.

The result is an ordinary run folder (model.keras, split.csv, training.json, history.csv), so
`dscnet export` and `dscnet evaluate` take it like any run. Its validation loss is measured
here, on the averaged probabilities, the same way training measures a single model's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np

from training.context import context_audit
from training.evaluate import RunData, audit, audit_shifts
from training.model import build_ensemble, load_keras_model, predict_probabilities
from training.train import balancing_weights, smoothed_targets


def validation_figures(model: keras.Model, run: RunData, label_smoothing: float) -> dict:
    """Class-balanced KL divergence to smoothed targets (the training loss) and accuracy on validation."""
    x_val, y_val, _ = run.dataset.subset("val")
    probabilities = predict_probabilities(model, x_val)
    loss = keras.losses.KLDivergence()(smoothed_targets(y_val, label_smoothing), probabilities,
                                       sample_weight=balancing_weights(y_val))
    return {"val_loss": float(keras.ops.convert_to_numpy(loss)),
            "val_accuracy": float(np.mean(probabilities.argmax(axis=1) == y_val))}


def build_ensemble_run(runs: list[RunData], out: Path) -> tuple[dict, keras.Model]:
    """Average the runs' models into `out` (a run folder); return its training summary and the model."""
    hashes = {run.summary["manifest_sha256"] for run in runs}
    if len(hashes) != 1:
        raise ValueError("the runs were trained on different splits; an ensemble needs one split")
    members = [load_keras_model(run.folder / "model.keras") for run in runs]
    model = build_ensemble(members)
    first = runs[0].summary
    figures = validation_figures(model, runs[0], first["config"]["label_smoothing"])
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    shutil.copyfile(runs[0].folder / "split.csv", out / "split.csv")
    shutil.copyfile(runs[0].folder / "history.csv", out / "history.csv")  # the first member's curves
    summary = {
        **first,
        "config": {**first["config"], "seeds": [run.summary["config"]["seed"] for run in runs]},
        "parameters": int(model.count_params()),
        "best_epoch": [run.summary["best_epoch"] for run in runs],
        "best_val_loss": figures["val_loss"],
        "val_accuracy": figures["val_accuracy"],
        "seconds": round(sum(run.summary["seconds"] for run in runs), 1),
        "hardware": runs[0].summary.get("hardware", "not recorded"),
        "members": [{"run": run.folder.name, "seed": run.summary["config"]["seed"],
                     "best_epoch": run.summary["best_epoch"], "best_val_loss": run.summary["best_val_loss"],
                     "seconds": run.summary["seconds"], "versions": run.summary["versions"]} for run in runs],
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary, model


def validation_audit(model: keras.Model, run: RunData) -> dict:
    """The report's shift audit on the validation split (never the test split): for choosing a model.

    Returns the accuracy under each shift, the worst cost of a shift other than grayscale, and
    the context audit (`training.context`: the cells on other surroundings; not a shift, so not
    in the worst cost).
    """
    x_train, y_train, _ = run.dataset.subset("train")
    x_val, y_val, _ = run.dataset.subset("val")

    def predict(images: np.ndarray) -> np.ndarray:
        return predict_probabilities(model, images)

    rows = audit({"model": predict}, x_val, y_val, audit_shifts(x_train, y_train))
    clean = rows[0]["model"]["accuracy"]
    costs = {row["shift"]: clean - row["model"]["accuracy"] for row in rows[1:]}
    counted = {name: cost for name, cost in costs.items() if "grayscale" not in name}
    worst = max(counted, key=counted.get)
    return {"clean_accuracy": clean, "costs": costs, "worst_shift": worst, "worst_cost": counted[worst],
            "context": context_audit({"model": predict}, x_val, y_val, x_train, y_train)["model"]}
