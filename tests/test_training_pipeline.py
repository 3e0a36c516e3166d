"""train -> export -> evaluate through the CLI commands, on a tiny dataset and model."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("tensorflow", reason="the [train] extra is not installed")  # CI installs it

from synthetic import make_dataset  # noqa: E402
from training import cli  # noqa: E402
from training.card import sha256_file  # noqa: E402
from training.model import DSCNetConfig  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.mark.slow
def test_train_export_evaluate_writes_model_card_and_report(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=12)
    run = train(TrainConfig(data_dir=data, out_dir=tmp_path / "run", epochs=2, block_size=3,
                            model=DSCNetConfig.tiny()))
    summary = json.loads((run / "training.json").read_text())
    assert summary["epochs_run"] == 2 and 1 <= summary["best_epoch"] <= 2
    assert (run / "model.keras").is_file() and (run / "history.csv").is_file()

    models = tmp_path / "models"
    assert run_command("export", "--run", str(run), "--data-dir", str(data), "--out", str(models / "dscnet.onnx")) == 0
    card = json.loads((models / "dscnet.json").read_text())
    assert card["sha256"] == sha256_file(models / "dscnet.onnx")
    assert card["classes"] == ["benign", "early_pre_b", "pre_b", "pro_b"]
    assert card["input"]["name"] == "image" and card["preprocessing"]["version"] == "1"
    assert card["training"]["manifest_sha256"] == summary["manifest_sha256"]
    # what the model was shown is on the card: the recipe's wide-field share, on by default since 2.3.0
    assert card["training"]["augmentation"]["wide_field_share"] == summary["config"]["wide_field_share"] > 0
    assert (models / "split.csv").is_file()

    reports = models / "reports"
    assert run_command("evaluate", "--run", str(run), "--data-dir", str(data), "--model",
                       str(models / "dscnet.onnx"), "--reports", str(reports)) == 0
    metrics = json.loads((reports / "metrics.json").read_text())["blocks"]
    test_rows = [line for line in (models / "split.csv").read_text().splitlines() if line.endswith(",test")]
    assert metrics["test_images"] == len(test_rows) > 0
    assert {row["shift"] for row in metrics["audit"]} >= {"scale-bar corner masked", "JPEG quality 50"}
    for figure in ("training_curves.png", "confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (reports / figure).stat().st_size > 1000
    report = (reports / "report.md").read_text()
    assert "99.85" in report and "Scale-bar and acquisition audit" in report
    card = json.loads((models / "dscnet.json").read_text())
    assert card["metrics"]["blocks"]["test_images"] == len(test_rows)
    assert card["calibration"]["temperature"] > 0 and 0 < card["calibration"]["refer_threshold"]
    assert f"wide_field_share {summary['config']['wide_field_share']}" in (models / "README.md").read_text()
    assert "Calibration and referral" in report
    assert sum(row["images"] for row in metrics["sessions"]) == metrics["test_images"]
    assert "Per smear session (block-grouped test)" in report
    assert "What the model reads: the cells or their surroundings" in report
    for predictor in ("dscnet", "colour_baseline"):
        context = metrics["context"][predictor]
        assert 0 <= context["cells_on_other_class"]["accuracy"] <= 1
        assert 0 <= context["cells_removed"]["still_called_its_class"] <= 1
    assert "Known limitations" in (models / "README.md").read_text()


def test_evaluate_refuses_a_different_dataset(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    run.mkdir()
    (run / "training.json").write_text(json.dumps(
        {"config": {"split": "blocks", "block_size": 3, "seed": 0}, "manifest_sha256": "0" * 64}))
    with pytest.raises(RuntimeError, match="differs from the one run"):
        run_command("evaluate", "--run", str(run), "--data-dir", str(data), "--model", str(tmp_path / "m.onnx"))


@pytest.mark.slow
def test_a_second_training_seed_can_keep_the_split(tmp_path):
    from training.data import load_dataset, manifest_sha256
    from training.evaluate import load_run

    data = make_dataset(tmp_path / "data", per_class=12)
    # also a smoke run of the wide-field and context-swap augmentations on a limited subset (each
    # image's session and its cells' mask follow it)
    run = train(TrainConfig(data_dir=data, out_dir=tmp_path / "run", epochs=1, block_size=3, seed=1, split_seed=0,
                            wide_field_share=0.5, context_swap=0.5, narrow_field_share=0.5, limit_per_class=6, model=DSCNetConfig.tiny()))
    recorded = json.loads((run / "training.json").read_text())["manifest_sha256"]
    assert recorded == manifest_sha256(load_dataset(data, block_size=3, seed=0).samples)
    assert recorded != manifest_sha256(load_dataset(data, block_size=3, seed=1).samples)
    assert load_run(run, data).summary["config"]["split_seed"] == 0  # evaluate rebuilds the same split
