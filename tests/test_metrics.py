"""Evaluation metrics that the report reads: the per-session breakdown."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the [train] extra is not installed")  # CI installs it

from training.markdown import _session_rows  # noqa: E402
from training.metrics import per_group  # noqa: E402


def one_hot(classes: list[int]) -> np.ndarray:
    return np.eye(4)[classes]


def test_per_group_counts_accuracy_and_what_each_session_was_read_as() -> None:
    labels = np.array([2, 2, 2, 2, 3, 3, 0])
    groups = ["pre_b:0009"] * 4 + ["pro_b:0001"] * 2 + ["benign:0004"]
    model = one_hot([2, 3, 3, 0, 3, 3, 0])
    baseline = one_hot([3, 3, 3, 3, 3, 2, 1])
    rows = per_group(labels, groups, {"dscnet": model, "colour_baseline": baseline})
    assert [r["group"] for r in rows] == ["benign:0004", "pre_b:0009", "pro_b:0001"]
    pre = rows[1]
    assert pre["class"] == "pre_b" and pre["images"] == 4
    assert pre["dscnet"] == {"accuracy": 0.25, "read_as": {"pro_b": 2, "benign": 1}}
    assert pre["colour_baseline"] == {"accuracy": 0.0, "read_as": {"pro_b": 4}}
    assert rows[2]["dscnet"] == {"accuracy": 1.0, "read_as": {}}
    assert rows[0]["colour_baseline"]["read_as"] == {"early_pre_b": 1}


def test_a_group_mixing_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="several classes"):
        per_group(np.array([0, 1]), ["s", "s"], {"m": one_hot([0, 1])})


def test_session_table_lists_errors_largest_first_and_counts_clean_sessions() -> None:
    sessions = per_group(np.array([2, 2, 2, 3]), ["a", "a", "a", "b"],
                         {"dscnet": one_hot([3, 3, 0, 3]), "colour_baseline": one_hot([2, 2, 2, 2])})
    text = "\n".join(_session_rows(sessions))
    assert "| a | 3 | 0.00 | pro_b 2, benign 1 | 100.00 | - |" in text
    assert "| b | 1 | 100.00 | - | 0.00 | pre_b 1 |" in text
    assert "1 of 2 sessions are classified without error." in text
