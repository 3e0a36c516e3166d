"""The service in a child process for the benchmark scripts (the tests' helper), and its model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from helpers_serve import ServiceProcess, free_port  # noqa: E402

__all__ = ["ServiceProcess", "env_assignment", "free_port", "resolve_model", "tiny_model"]


def tiny_model(folder: Path) -> Path:
    """The tests' tiny ONNX model and its card (needs the dev extra's `onnx`)."""
    from helpers_onnx import build_tiny_model, write_card

    model = build_tiny_model(folder / "dscnet.onnx")
    write_card(model)
    return model


def resolve_model(model: Path | None, scratch: Path) -> Path:
    """`model`, else the shipped models/dscnet.onnx, else the tiny test model."""
    if model is not None:
        return model
    shipped = REPO_ROOT / "models" / "dscnet.onnx"
    return shipped if shipped.exists() else tiny_model(scratch)


def env_assignment(text: str) -> tuple[str, str]:
    """A NAME=VALUE option value (the scripts' --env) as a pair; anything else is a usage error."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value
