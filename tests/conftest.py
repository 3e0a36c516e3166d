"""Fixtures for the serving tests: a tiny ONNX model with its card, settings, a client, images."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from training.cli import default_data_dir
from helpers_onnx import build_tiny_model, write_card

REPO_ROOT = Path(__file__).resolve().parent.parent
CLASS_FOLDERS = ("Benign", "Early", "Pre", "Pro")


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """models/dscnet.onnx in a temporary folder, with a matching models/dscnet.json."""
    models = tmp_path / "models"
    models.mkdir()
    model_path = build_tiny_model(models / "dscnet.onnx")
    write_card(model_path)
    return model_path


@pytest.fixture
def settings(tiny_model: Path) -> Settings:
    return Settings(model_path=tiny_model, ort_threads=1)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real dataset; CI always has it, so its absence is a failure, not a skip."""
    path = default_data_dir()
    missing = [name for name in CLASS_FOLDERS if not (path / name).is_dir()]
    if missing:
        pytest.fail(f"the dataset is missing at {path} (folders {missing}); set DSCNET_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def real_images(data_dir: Path) -> dict[str, Path]:
    """The first JPEG of each class folder."""
    images = {}
    for name in CLASS_FOLDERS:
        files = sorted((data_dir / name).glob("*.jpg"))
        if not files:
            pytest.fail(f"no .jpg files in {data_dir / name}")
        images[name] = files[0]
    return images


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """`serve` / build_server install a JSON handler on the root logger; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
