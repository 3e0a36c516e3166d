"""The evaluation report: figures (PNG), metrics.json, and a markdown report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from app.labels import CLASS_IDS  # noqa: E402
from training.metrics import expected_calibration_error, reliability_bins, roc_curves  # noqa: E402

# The paper's reported figures (percent), for comparison only: different split and protocol.
PAPER_CLAIMS = {"accuracy": 99.85, "precision": 98.87, "recall": 96.55, "f1": 98.21}


def plot_training_curves(history_csv: Path, out: Path) -> None:
    with history_csv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, [float(r[key]) for r in rows], label=f"train {key} (augmented)")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key if key == "accuracy" else "KL divergence loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], out: Path) -> None:
    data = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(CLASS_IDS)), CLASS_IDS, rotation=30)
    ax.set_yticks(range(len(CLASS_IDS)), CLASS_IDS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(data):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > data.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_roc(labels: np.ndarray, probabilities: np.ndarray, aucs: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for class_id, (fpr, tpr) in roc_curves(labels, probabilities).items():
        ax.plot(fpr, tpr, label=f"{class_id} (AUC {aucs[class_id]['auc']:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_reliability(labels: np.ndarray, versions: dict[str, np.ndarray], out: Path) -> None:
    """One reliability diagram per version of the probabilities (e.g. before/after calibration)."""
    fig, axes = plt.subplots(1, len(versions), figsize=(5 * len(versions), 4.5), squeeze=False)
    for ax, (title, probabilities) in zip(axes[0], versions.items()):
        bins = [b for b in reliability_bins(labels, probabilities) if b["count"]]
        ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins],
               width=1 / 15, edgecolor="black", alpha=0.7, label="accuracy in bin")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: ECE {expected_calibration_error(labels, probabilities):.4f}")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_figures(result: dict, history_csv: Path, out_dir: Path) -> list[str]:
    """Write the four figures for one evaluated run; return their file names."""
    labels, probabilities = result["_test_labels"], result["_test_probabilities"]
    model = result["model"]
    plot_training_curves(history_csv, out_dir / "training_curves.png")
    plot_confusion(model["confusion_matrix"], out_dir / "confusion_matrix.png")
    plot_roc(labels, probabilities, model["per_class"], out_dir / "roc_curves.png")
    plot_reliability(labels, {"raw": probabilities, "temperature-scaled": result["_test_calibrated"]},
                     out_dir / "reliability.png")
    return ["training_curves.png", "confusion_matrix.png", "roc_curves.png", "reliability.png"]


def public(result: dict) -> dict:
    """The JSON-serialisable part of a result (drops the raw arrays)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_metrics(results: dict[str, dict], out: Path) -> None:
    out.write_text(json.dumps({k: public(v) for k, v in results.items()}, indent=2) + "\n", encoding="utf-8")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"
