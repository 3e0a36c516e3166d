"""`dscnet predict` and `dscnet serve`, through the real command parser."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

import helpers_images as images
from app.cli import build_server
from app.settings import Settings
from dscnet_cli import main


pytestmark = pytest.mark.usefixtures("restore_root_logging")


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "red.png": images.solid((255, 0, 0)),
        "blue.jpg": images.solid((0, 0, 255), fmt="JPEG"),
        "notes.txt": images.text_file(),
        "bomb.png": images.png_bomb(),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


def test_predict_prints_a_table(tiny_model: Path, image_files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code = main(["predict", str(image_files["red.png"]), str(image_files["blue.jpg"]), "--model", str(tiny_model)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["FILE", "LABEL", "benign", "early_pre_b", "pre_b", "pro_b", "REFER", "WARNINGS"]
    assert out[1].split()[:2] == [str(image_files["red.png"]), "benign"]
    assert out[2].split()[:2] == [str(image_files["blue.jpg"]), "pre_b"]
    assert abs(sum(float(v) for v in out[1].split()[2:6]) - 1) < 1e-3
    assert out[1].split()[6:] == ["yes", "under_exposed,not_smear_like"]  # plain red; the test card has no calibration


def test_predict_json_reports_errors_per_file_and_exits_1(
    tiny_model: Path, image_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "missing.png"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    paths = [image_files["red.png"], image_files["notes.txt"], image_files["bomb.png"], missing, empty]
    code = main(["predict", *map(str, paths), "--json", "--model", str(tiny_model)])
    body = json.loads(capsys.readouterr().out)
    assert code == 1
    assert body["model"]["name"] == "dscnet"
    assert [r["file"] for r in body["results"]] == [str(p) for p in paths]
    assert body["results"][0]["label"] == "benign"
    assert body["results"][0]["refer_to_human"] is True and body["results"][0]["refer_reason"]
    assert [w["code"] for w in body["results"][0]["warnings"]] == ["under_exposed", "not_smear_like"]
    assert body["results"][0]["uncalibrated_probabilities"] == body["results"][0]["probabilities"]  # no calibration
    assert [r.get("error", {}).get("code") for r in body["results"]] == [
        None, "unsupported_format", "too_many_pixels", "unreadable_file", "empty_file"]


def test_predict_gives_the_same_answer_as_the_service(
    tiny_model: Path, real_images: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    paths = list(real_images.values())
    assert main(["predict", *map(str, paths), "--json", "--model", str(tiny_model)]) == 0
    cli_results = json.loads(capsys.readouterr().out)["results"]
    with TestClient(create_app(Settings(model_path=tiny_model, ort_threads=1))) as client:
        for path, cli in zip(paths, cli_results, strict=True):
            served = client.post("/predict", files={"image": (path.name, path.read_bytes())}).json()
            assert served["label"] == cli["label"]
            assert served["probabilities"] == pytest.approx(cli["probabilities"], abs=1e-6)


def test_predict_refuses_an_unverified_model(tiny_model: Path, image_files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    tiny_model.write_bytes(tiny_model.read_bytes() + b"\0")
    assert main(["predict", str(image_files["red.png"]), "--model", str(tiny_model)]) == 2
    assert "sha256" in capsys.readouterr().err


def test_serve_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DSCNET_MAX_BATCH_IMAGES", "0")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "DSCNET_MAX_BATCH_IMAGES" in err and "greater than or equal to 1" in err


def test_serve_exits_nonzero_without_a_verified_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--port", "0", "--model", str(tmp_path / "dscnet.onnx")]) == 1
    err = capsys.readouterr().err
    assert "did not start: the model could not be loaded" in err and "does not exist" in err


def test_serve_answers_over_real_http(tiny_model: Path) -> None:
    server = build_server(Settings(model_path=tiny_model, ort_threads=1, port=0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60  # a bound on waiting for start-up, not an assertion on speed
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/health/ready").status_code == 200
            response = http.post("/predict", files={"image": ("g.png", images.solid((0, 255, 0)))})
            assert response.status_code == 200 and response.json()["label"] == "early_pre_b"
            too_big = http.post("/predict", files={"image": ("big.bin", b"\0" * (21 * 1024 * 1024))})
            assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
            assert http.get("/health/ready").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()
