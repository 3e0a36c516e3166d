"""Classification metrics of the paper and beyond: per class, macro, AUC, calibration."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from app.labels import CLASS_IDS

ECE_BINS = 15


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = len(CLASS_IDS)) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin: count, mean confidence, accuracy (for the reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int((which == b).sum()),
         "confidence": float(confidence[which == b].mean()) if (which == b).any() else None,
         "accuracy": float(correct[which == b].mean()) if (which == b).any() else None}
        for b in range(bins)
    ]


def classification_report(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy; per-class and macro precision, recall, specificity, F1, one-vs-rest AUC; ECE."""
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted)
    total = matrix.sum()
    per_class = {}
    for c, class_id in enumerate(CLASS_IDS):
        tp = matrix[c, c]
        fp = matrix[:, c].sum() - tp
        fn = matrix[c, :].sum() - tp
        tn = total - tp - fp - fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        positives = labels == c
        per_class[class_id] = {
            "precision": float(precision),
            "recall": float(recall),
            "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
            "f1": float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
            "auc": float(roc_auc_score(positives, probabilities[:, c])) if 0 < positives.sum() < len(labels) else None,
            "support": int(positives.sum()),
        }
    macro = {key: float(np.mean([m[key] for m in per_class.values() if m[key] is not None]))
             for key in ("precision", "recall", "specificity", "f1", "auc")}
    return {
        "images": int(total),
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "macro": macro,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "ece": expected_calibration_error(labels, probabilities),
    }


def roc_curves(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curve (false positive rate, true positive rate) per class."""
    curves = {}
    for c, class_id in enumerate(CLASS_IDS):
        positives = labels == c
        if 0 < positives.sum() < len(labels):
            fpr, tpr, _ = roc_curve(positives, probabilities[:, c])
            curves[class_id] = (fpr, tpr)
    return curves


def per_group(labels: np.ndarray, groups: list[str], versions: dict[str, np.ndarray]) -> list[dict]:
    """Accuracy of each predictor within each group (smear session), and what it read instead.

    Args:
        labels: true class indices.
        groups: the group (block) of each image, aligned with `labels`.
        versions: predictor name -> probabilities (N, classes).

    Returns one dict per group, in group order: group, true class, images, and per predictor
    its accuracy and the counts of the wrong classes it predicted.
    """
    names = np.asarray(groups)
    rows = []
    for group in sorted(set(groups)):
        members = names == group
        classes = set(labels[members].tolist())
        if len(classes) != 1:
            raise ValueError(f"group {group} holds images of several classes: a group is one smear session")
        truth = classes.pop()
        row = {"group": group, "class": CLASS_IDS[truth], "images": int(members.sum())}
        for name, probabilities in versions.items():
            predicted = probabilities[members].argmax(axis=1)
            wrong = {CLASS_IDS[c]: int((predicted == c).sum()) for c in range(len(CLASS_IDS)) if c != truth}
            row[name] = {"accuracy": float((predicted == truth).mean()),
                         "read_as": {k: v for k, v in wrong.items() if v}}
        rows.append(row)
    return rows
